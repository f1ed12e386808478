"""The embedded offline endpoint (``--api_base local``) and the test API built on it.

Other rooms use:
- ``endpoint``: ``ChatEndpoint`` (an OpenAI-compatible server on loopback), ``Fault``, and the
  request readers ``image_parts``, ``prompt_text``, ``wanted_schema``, ``image_bytes``.
- ``batches``: ``LocalBatches``, the Files and Batches endpoints.
- ``analyzer``: the deterministic, non-LLM image analyser that writes the answers.
"""

__all__ = ["analyzer", "batches", "endpoint"]
