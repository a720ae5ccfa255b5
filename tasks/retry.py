"""Prefect task options for the steps that touch storage: the retry policy of `linreg.retry` (transient
I/O errors only, after 2, 4 and 8 seconds with jitter), as Prefect retries it."""

from __future__ import annotations

import logging
import time

from prefect import get_run_logger

from linreg.errors import is_transient
from linreg.retry import DELAYS_SECONDS, JITTER


def retry_transient_io(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only when the task failed with a transient I/O error."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


STORAGE_RETRIES = {"retries": len(DELAYS_SECONDS), "retry_delay_seconds": list(DELAYS_SECONDS),
                   "retry_jitter_factor": JITTER, "retry_condition_fn": retry_transient_io}


def log_step(run_id: str, step: str, started: float, what: str) -> None:
    """One progress line per step, in the run's Prefect log: 'run <id>: <step>: <what> in <s> s'."""
    logger: logging.Logger = get_run_logger()  # type: ignore[assignment]
    logger.info("run %s: %s: %s in %.2f s", run_id, step, what, time.perf_counter() - started)
