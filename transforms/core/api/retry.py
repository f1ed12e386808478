"""The one retry policy of every call this job makes to an API: the online client's
``VisionClient.complete`` and the batch transport's ``BatchHttp.call``. No Beam import.

Which outcomes are worth another attempt is decided by the caller from the answer
(``responses.is_retryable_status``, ``responses.http_error``); this module says how many attempts
there are and how long to wait before each: exponential back-off with jitter, capped at
``backoff_max``, and never sooner than the server asked for (``Retry-After`` and its kin, honoured
up to ``max_retry_after``).
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base: float = 1.0  # seconds; the n-th retry waits up to base * 2**n
    backoff_max: float = 60.0
    max_retry_after: float = 600.0  # longest server-requested wait we honour

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
        """Wait before retry ``retry_number`` (1-based): jittered between half and all of the
        exponential cap, or, when the server named a wait, that wait (capped at
        ``max_retry_after``) plus a little spread."""
        cap = min(self.backoff_max, self.backoff_base * 2 ** (retry_number - 1))
        delay = rng.uniform(0.5 * cap, cap)
        if retry_after is not None:
            honoured = min(retry_after, self.max_retry_after)
            # a little spread after the requested instant so that the threads told the same
            # Retry-After do not all come back in the same millisecond
            delay = honoured + rng.uniform(0.0, min(1.0, 0.1 * honoured + 0.05))
        return delay
