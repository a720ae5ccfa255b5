"""A training run in this process, without Prefect: the flow's steps in the flow's order, the same retries
of transient storage errors (`linreg.retry`), the same outputs and report; nothing is recorded in Prefect
(no flow run, no task runs, no artifacts). `python -m flows.train` runs this when no Prefect server is
configured, instead of starting a temporary one."""

from __future__ import annotations

import logging

from linreg.config import TrainConfig, decide_run_id
from linreg.pipeline import report, reuse, steps
from linreg.retry import with_retries

log = logging.getLogger(__name__)


def run(config: TrainConfig) -> steps.RunSummary:
    """check-unchanged (with --skip-if-unchanged), plan, validate-and-join, split, train, evaluate, commit,
    report: the committed run's summary (or the reused run's)."""
    config = config.model_copy(update={"run_id": decide_run_id(config.run_id)})
    if config.skip_if_unchanged:
        row = with_retries(lambda: reuse.find_unchanged_run(config), "check-unchanged")
        if row is not None:
            log.info("run %s: inputs and configuration unchanged since run %s: not retrained", config.run_id,
                     row["run_id"])
            return reuse.committed_summary(config.output, row)
    def draw(plan: steps.RunPlan, fit, evaluation: steps.Evaluation) -> None:
        with_retries(lambda: report.write_report(config.output, plan.run_id, trainer=config.trainer,
                                                 metrics=evaluation.metrics, picture=evaluation.picture,
                                                 losses=fit.losses, cv=fit.cv), "report")

    return steps.run(config, attempt=with_retries, then=draw)
