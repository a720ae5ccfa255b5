"""The run id every attempt of a job shares, and which attempt a rank is in (light: the launcher imports it
before it starts any rank)."""

from __future__ import annotations

import os
import re

from linreg.config import TrainConfig, decide_run_id
from linreg.errors import InputError


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def job_run_id(config: TrainConfig) -> str:
    """The run id every attempt of the job shares, decided by the launcher and again by rank 0 of each attempt:
    --run-id; else derived from the rendezvous id (--rdzv-id, or torchrun's TORCHELASTIC_RUN_ID in a rank), so
    that restarts (--max-restarts) resume from its snapshots; else a new one (restarts then start over). A
    launcher of a job on several machines may not draw one: each machine's would differ (InputError)."""
    rdzv = config.rdzv_id or os.environ.get("TORCHELASTIC_RUN_ID", "")
    if not config.run_id and rdzv and rdzv != "none":
        return decide_run_id("job-" + re.sub(r"[^A-Za-z0-9._-]", "-", rdzv))
    if not config.run_id and config.nnodes > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # not in a rank
        raise InputError("A job on several machines needs the same --run-id or --rdzv-id on every machine.")
    return decide_run_id(config.run_id)
