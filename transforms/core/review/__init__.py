"""The review page of a run.

Other rooms use:
- ``data``: what the page shows, read from a run's output without reading every row.
- ``page``: the self-contained HTML file.
"""

__all__ = ["data", "page"]
