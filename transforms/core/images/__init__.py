"""Images: from a reference to bytes a vision API accepts, within a decode budget.

Other rooms use:
- ``loader``: ``ImageLoader``, ``ImageOptions`` (fetch, check the format allowlist, decode,
  scale, encode).
- ``sources``: reading the bytes a reference names (a local path or file://, gs://,
  http(s), data:); ``ImageError``.
- ``sizes``: the size each provider looks at an image, and its cost in tokens.
- ``decode_budget``: the per-process budget of decoded megapixels in flight.
"""

__all__ = ["decode_budget", "loader", "sizes", "sources"]
