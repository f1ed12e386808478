"""The plain-Python core of the job (no Beam import), grouped into wings by concern.

The root holds the job-level bridge the drivers share: ``describe_config`` (``DescribeConfig``,
``ChatConfig``, planning a reference), ``request_builder`` (``RequestBuilder``, ``build_request``),
``row_builders`` (every output row is made there), ``ledger`` (paying once per content and
question) and ``worker_parts`` (the per-worker parts both drivers compose). The wings: ``guards``,
``images``, ``question``, ``api``, ``online``, ``batch``, ``offline``, ``review``.
"""

__all__ = [
    "describe_config",
    "ledger",
    "request_builder",
    "row_builders",
    "worker_parts",
]
