"""Retention as a Prefect task (the nightly deployment `prune` runs it)."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from linreg.outputs import retention
from tasks.retry import STORAGE_RETRIES, log_step


@task(name="prune", task_run_name="prune-{output}", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def prune_runs(output: str, keep_last: int | None, older_than_days: float | None, dry_run: bool) -> retention.PrunePlan:
    """Remove old runs (index entry first, then data); never a run in progress. Safe to retry."""
    started = time.perf_counter()
    plan = retention.prune(output, keep_last=keep_last, older_than_days=older_than_days, dry_run=dry_run)
    log_step(output, "prune", started, plan.text(dry_run=dry_run))
    return plan
