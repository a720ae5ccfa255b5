"""Retries for the tasks that touch storage: transient I/O errors only, with exponential backoff.

A validation error (InputError) or a permanent OS error (missing file, no permission, disk full) fails at
once, so its message is the run's failure message; a dropped connection or a flaky read is retried after
2, 4 and 8 seconds (with jitter, so that runs failing together do not retry together).
"""

from __future__ import annotations

import logging
import time

from prefect import get_run_logger
from prefect.tasks import exponential_backoff

from linreg.errors import is_transient


def retry_transient_io(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only when the task failed with a transient I/O error."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                   "retry_jitter_factor": 0.2, "retry_condition_fn": retry_transient_io}


def log_step(run_id: str, step: str, started: float, what: str) -> None:
    """One progress line per step, in the run's Prefect log: 'run <id>: <step>: <what> in <s> s'."""
    logger: logging.Logger = get_run_logger()  # type: ignore[assignment]
    logger.info("run %s: %s: %s in %.2f s", run_id, step, what, time.perf_counter() - started)
