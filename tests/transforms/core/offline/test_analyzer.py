"""offline.analyzer: the facts it measures and the JSON it fills for a schema (test_endpoint.py
checks it behind the endpoint: determinism, orientation, EXIF make/model/DateTime).

Images whose facts are known by construction: one colour fills the frame (that colour, 100 %;
no edges), a black-and-white checkerboard (half each, sharp), a large image (its own size
reported, though measured on a thumbnail), and EXIF with both capture times (the original one
wins). ``fill_schema`` maps facts onto property names and types, falls back to an enum's first
value, and gives a type's zero where null is not allowed.
"""

import pytest
from PIL import Image

from tests.support import images as timg
from transforms.core.offline import analyzer
from transforms.core.question import output_schema


def solid(rgb, size=(40, 40), fmt="PNG"):
    return timg.encode(Image.new("RGB", size, rgb), fmt)


def checkerboard(side=64, square=8):
    img = Image.new("L", (side, side))
    img.putdata([255 * ((x // square + y // square) % 2) for y in range(side) for x in range(side)])
    return timg.encode(img, "PNG")


def test_colours_brightness_and_edges_of_known_images():
    words = {rgb: analyzer.describe(solid(rgb)) for rgb in ((0, 0, 0), (128, 128, 128))}
    assert "very dark" in words[(0, 0, 0)] and "soft or smooth" in words[(0, 0, 0)]
    assert "evenly lit" in words[(128, 128, 128)]
    assert analyzer.analyse(solid((200, 30, 30)))["colours"] == [("red", 1.0)]
    assert "bright (" in analyzer.describe(solid((255, 255, 255)))
    board = analyzer.analyse(checkerboard())
    assert board["colours"] == [("black", 0.5), ("white", 0.5)]
    assert board["brightness"] == pytest.approx(0.5, abs=0.01)
    assert "sharp and detailed" in analyzer.describe_facts(board)


@pytest.mark.parametrize("rgb", [(255, 255, 255), (128, 128, 128)])
def test_a_flat_image_has_no_edges_whatever_its_colour(rgb):
    assert analyzer.analyse(solid(rgb))["sharpness"] < 5


def test_a_large_image_reports_its_own_size():
    facts = analyzer.analyse(solid((128, 128, 128), (2000, 1000), "JPEG"))
    assert (facts["width"], facts["height"], facts["format"]) == (2000, 1000, "JPEG")
    text = analyzer.describe_facts(facts)
    assert text.startswith("A landscape JPEG image, 2000x1000 pixels (2.00 MP).")


def test_the_original_capture_time_wins_over_the_files_date():
    exif = Image.Exif()
    exif[0x0132] = "2020:01:01 00:00:00"  # DateTime: when the file was last changed
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:20:30"  # DateTimeOriginal
    facts = analyzer.analyse(timg.encode(timg.gradient((50, 50)), "JPEG", exif=exif.tobytes()))
    assert facts["taken"] == "2024:05:01 10:20:30" and facts["camera"] is None


def test_fill_schema_maps_facts_onto_names_and_types():
    facts = analyzer.analyse(checkerboard())
    schema = {
        "properties": {
            "image_width": {"type": "number"},
            "sharpness": {"type": "integer"},
            "main_colour": {"type": "string"},
            "colors": {"type": "array"},
            "orientation": {"type": "string", "enum": ["portrait", "square"]},
            "format": {"type": "string", "enum": ["jpeg", "webp"]},
            "count": {"type": "integer"},
            "outdoor": {"type": ["boolean", "null"]},
            "caption": {"type": "string"},
        }
    }
    out = analyzer.fill_schema(facts, schema)
    assert out["image_width"] == 64.0 and isinstance(out["image_width"], float)
    assert out["sharpness"] == round(facts["sharpness"]) and isinstance(out["sharpness"], int)
    assert out["main_colour"] == "black" and out["colors"] == ["black", "white"]
    assert out["orientation"] == "square" and out["format"] == "jpeg"  # not in the enum: first
    assert out["count"] == 0 and out["outdoor"] is None
    assert out["caption"] == analyzer.describe_facts(facts)


def test_a_named_fact_the_image_lacks_is_null():
    schema = output_schema.parse_output_schema("camera STRING, taken STRING").json_schema
    out = analyzer.fill_schema(analyzer.analyse(timg.png()), schema)
    assert out == {"camera": None, "taken": None}
