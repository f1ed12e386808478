"""Online mode: one worker process's driver, sending each request as its rows come.

Other rooms use:
- ``worker``: ``Worker`` (loads, asks and answers for a group of rows), ``Outcome``,
  ``ACCOUNT_STATUSES``.
- ``prepare_ahead``: ``PrepareAhead``, requests prepared ahead of the request slots.
"""

__all__ = ["prepare_ahead", "worker"]
