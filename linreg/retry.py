"""Retries of transient storage errors: the one policy of every step that reads or writes storage.

A validation error (InputError) or a permanent OS error (missing file, no permission, disk full) fails at
once, so its message is the run's failure message; a dropped connection or a flaky read (`errors.is_transient`)
is retried after 2, 4 and 8 seconds (with jitter, so that runs failing together do not retry together). The
Prefect tasks get the same policy as task options (tasks/retry.py); a run without Prefect calls `with_retries`.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from linreg.errors import is_transient

T = TypeVar("T")
DELAYS_SECONDS = (2.0, 4.0, 8.0)  # one per retry: three retries after the first attempt
JITTER = 0.2  # each delay is stretched or shrunk by up to this share

log = logging.getLogger(__name__)


def with_retries(step: Callable[[], T], what: str, *, delays: tuple[float, ...] = DELAYS_SECONDS,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """`step()`, retried after each of `delays` (seconds, with jitter) while it fails with a transient error."""
    for attempt in range(len(delays) + 1):
        try:
            return step()
        except Exception as exc:
            if attempt == len(delays) or not is_transient(exc):
                raise
            delay = delays[attempt] * (1 + random.uniform(-JITTER, JITTER))
            log.warning("%s failed with a transient error (%s: %s); retry %d of %d in %.1f s", what,
                        type(exc).__name__, exc, attempt + 1, len(delays), delay)
            sleep(delay)
    raise AssertionError("unreachable")
