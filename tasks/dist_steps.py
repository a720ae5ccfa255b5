"""The distributed job as one Prefect task: it launches the ranks with torchrun and streams their lines.

The flow's plan task runs in the flow's process (schemas, keys, staging area); this task launches every
rank of the job (`linreg.launch.torchrun.run_planned`: each rank validates, joins, trains on and evaluates its
shard, and stages its share of the predictions); the flow's commit task then commits rank 0's results.
Every line a rank prints ('[rank 1] INFO ...') goes into this task run's log; a failed rank fails the
task with that rank's own error. No retries: torchrun's --max-restarts restarts ranks from snapshots.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from linreg.launch import torchrun
from linreg.pipeline import steps
from tasks.retry import log_step


@task(name="train-job", task_run_name="train-job-{plan.run_id}", cache_policy=NO_CACHE)
def run_job(plan: steps.RunPlan):
    """Launch the ranks; return (joined totals, fit, evaluation) of rank 0 for the commit task."""
    started = time.perf_counter()
    logger = get_run_logger()
    result = torchrun.run_planned(plan, on_line=logger.info)
    log_step(plan.run_id, "train-job", started, f"{plan.config.nproc_per_node or 1} rank(s) x "
             f"{plan.config.nnodes} machine(s): {result.joined.joined_rows} joined rows, "
             f"{result.fit.epochs} epoch(s)")
    return result.joined, result.fit, result.evaluation
