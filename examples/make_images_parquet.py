"""Regenerate examples/images.parquet: the bundled photographs plus two deliberately bad rows.

    python examples/make_images_parquet.py

Paths are relative to the repository root, where the README's commands run.
"""

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    ("astronaut", "examples/astronaut.png", "NASA portrait of astronaut Eileen Collins"),
    ("coffee", "examples/coffee.png", "A cup of coffee on a wooden table"),
    ("chelsea", "examples/chelsea.png", "Chelsea the cat"),
    ("rocket", "examples/rocket.jpg", "Falcon 9 launch with DSCOVR"),
    # deliberately bad, so that the failures output shows something:
    ("missing-file", "examples/no-such-photo.jpg", "A reference to a file that does not exist"),
    ("not-an-image", "examples/LICENSES.md", "A text file where an image should be"),
]

table = pa.table(
    {
        "image_id": [r[0] for r in ROWS],
        "image_uri": [r[1] for r in ROWS],
        "caption": [r[2] for r in ROWS],
    }
)
pq.write_table(table, "examples/images.parquet")
print(f"wrote examples/images.parquet ({table.num_rows} rows)")
