"""The review page of a run.

Other rooms use:
- ``data``: what the page shows, read from a run's Parquet output without reading every row;
- ``bigquery_data``: the same, from its BigQuery tables;
- ``costs``: what its answers cost, each at the price it was billed at;
- ``page``: the self-contained HTML file.
"""

__all__ = ["bigquery_data", "costs", "data", "page"]
