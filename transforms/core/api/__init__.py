"""The vision API client and its flow control: how one request is sent, retried and paced.

Other rooms use:
- ``client``: ``VisionClient`` (sends one chat request on a ``requests.Session``, retries it).
- ``session``: ``new_session`` (the pool, proxies, CA bundle and headers of an API session).
- ``responses``: what came back (``Completion``, ``ResponseError``, ``parse_completion``,
  ``RETRYABLE_STATUSES``: where a 429 or a 5xx is decided to be retried).
- ``retry``: ``RetryPolicy``, the one back-off / Retry-After / cap policy, shared with ``batch``.
- ``backpressure``: ``Controller`` (an account's limit told from a provider's noise).
- ``ratelimit``: ``RateLimiter`` and the per-process concurrency gates.
- ``shared_limit``: ``EnvoyLimit``, a job-wide request budget.
"""

__all__ = ["backpressure", "client", "ratelimit", "responses", "retry", "session", "shared_limit"]
