"""The training run's steps as Prefect tasks. They pass small values (paths, counts, weights), never tables.

Task runs are named `<step>-<run id>`; each logs one progress line (what it did, rows, columns, seconds).
Steps that read or write storage retry transient I/O errors (tasks/retry.py); the commit does not: an
interrupted commit is journalled and rolled forward by the next run (linreg/outputs/commit.py).
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from linreg import redact
from linreg.config import TrainConfig
from linreg.inputs.holdout import Split
from linreg.inputs.join import JoinResult
from linreg.models.fit import FitResult
from linreg.pipeline import headstart, report, reuse, steps
from tasks.retry import STORAGE_RETRIES, log_step


@task(name="plan", task_run_name="plan-{config.run_id}", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def plan_run(config: TrainConfig) -> steps.RunPlan:
    """Open the inputs, check their schemas, fingerprint them and create the staging area."""
    started = time.perf_counter()
    plan, ahead = headstart.plan_run(config)
    c = plan.columns
    log_step(plan.run_id, "plan", started, f"{len(c.keys + c.features + c.targets)} column(s): keys {c.keys}, "
             f"features {c.features}, targets {c.targets}; input fingerprint {plan.fingerprint['sha256']}"
             + _AHEAD * ahead)
    return plan


@task(name="validate-and-join", task_run_name="validate-and-join-{plan.run_id}", cache_policy=NO_CACHE,
      **STORAGE_RETRIES)
def join_inputs(plan: steps.RunPlan) -> JoinResult:
    """Check values and keys of both tables and join them on the keys."""
    started = time.perf_counter()
    joined, ahead = headstart.join_inputs(plan)
    log_step(plan.run_id, "validate-and-join", started, f"weather {joined.weather_rows} rows, yields "
             f"{joined.yields_rows} rows -> {joined.joined_rows} joined rows x {_width(plan)} columns"
             + _AHEAD * ahead)
    return joined


@task(name="split", task_run_name="split-{plan.run_id}", cache_policy=NO_CACHE)
def split_rows(plan: steps.RunPlan, joined: JoinResult) -> Split:
    """Choose the holdout regions (or years)."""
    started = time.perf_counter()
    split = steps.split_rows(plan, joined)
    log_step(plan.run_id, "split", started, f"{joined.joined_rows} rows; {split.describe()}")
    return split


@task(name="train", task_run_name="train-{plan.run_id}", cache_policy=NO_CACHE)
def fit_model(plan: steps.RunPlan, joined: JoinResult, split: Split) -> FitResult:
    """Fit the model on the training rows with the configured trainer."""
    started = time.perf_counter()
    fit = steps.fit_model(plan, joined, split)
    log_step(plan.run_id, "train", started, f"{plan.config.trainer} on {fit.train_rows} rows x "
             f"{len(plan.columns.features)} feature(s), {fit.epochs} epoch(s)")
    return fit


@task(name="evaluate", task_run_name="evaluate-{plan.run_id}", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def evaluate_model(plan: steps.RunPlan, joined: JoinResult, split: Split,
                   fit: FitResult) -> steps.Evaluation:
    """Predict every joined row, stage the predictions, metrics and weights."""
    started = time.perf_counter()
    evaluation = steps.evaluate_model(plan, joined, split, fit)
    log_step(plan.run_id, "evaluate", started, f"{sum(evaluation.rows.values())} rows predicted x "
             f"{len(plan.columns.targets)} target(s), {len(evaluation.metrics) + evaluation.region_rows} metric rows staged")
    return evaluation


@task(name="commit", task_run_name="commit-{plan.run_id}", cache_policy=NO_CACHE)
def commit_run(plan: steps.RunPlan, joined: JoinResult, fit: FitResult,
               evaluation: steps.Evaluation) -> steps.RunSummary:
    """Move the staged run into the output datasets, the runs index last."""
    started = time.perf_counter()
    summary = steps.commit_run(plan, joined, fit, evaluation)
    log_step(plan.run_id, "commit", started, f"{len(summary.output)} datasets committed under {plan.config.output}")
    return summary


@task(name="report", task_run_name="report-{plan.run_id}", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_report(plan: steps.RunPlan, fit: FitResult, evaluation: steps.Evaluation) -> report.ReportPaths:
    """Draw the committed run: loss per epoch, predicted vs actual on the holdout, MSE per region."""
    started = time.perf_counter()
    paths = report.write_report(plan.config.output, plan.run_id, trainer=plan.config.trainer,
                                metrics=evaluation.metrics, picture=evaluation.picture, losses=fit.losses,
                                cv=fit.cv)
    log_step(plan.run_id, "report", started, f"{len(fit.losses)} epoch losses drawn -> {paths.png}")
    return paths


@task(name="artifacts", task_run_name="artifacts-{plan.run_id}", cache_policy=NO_CACHE)
def publish_artifacts(plan: steps.RunPlan, summary: steps.RunSummary, evaluation: steps.Evaluation,
                      paths: report.ReportPaths) -> None:
    """The metrics table and the markdown summary of the run, as Prefect artifacts."""
    table = report.metric_table(evaluation.metrics)
    create_table_artifact(key="train-metrics", table=table, description=f"Metrics of run {plan.run_id}")
    config = redact.redact_config(plan.config.model_dump(mode="json"))  # already redacted by the flow; be sure
    create_markdown_artifact(key="train-summary", description=f"Run {plan.run_id}", markdown=report.summary_markdown(
        run_id=plan.run_id, trainer=plan.config.trainer, config=config, fingerprint=plan.fingerprint,
        rows=_rows(summary), table=table, outputs_at=summary.output, report=paths))


@task(name="check-unchanged", task_run_name="check-unchanged-{config.run_id}", cache_policy=NO_CACHE,
      **STORAGE_RETRIES)
def find_unchanged_run(config: TrainConfig) -> steps.RunSummary | None:
    """A committed run with the same input fingerprint and configuration, to reuse instead of retraining."""
    started = time.perf_counter()
    row = reuse.find_unchanged_run(config)
    log_step(config.run_id, "check-unchanged", started, f"reusing run {row['run_id']}" if row else "no equal run")
    return reuse.committed_summary(config.output, row) if row else None


@task(name="reuse", task_run_name="reuse-{config.run_id}", cache_policy=NO_CACHE)
def publish_reuse(config: TrainConfig, previous: steps.RunSummary) -> steps.RunSummary:
    """Run `config.run_id` reuses the committed run `previous` (--skip-if-unchanged): say so in the log and
    in the run's markdown artifact; return `previous`, whose outputs stand."""
    get_run_logger().info("run %s: inputs and configuration unchanged since run %s: not retrained",
                          config.run_id, previous.run_id)
    create_markdown_artifact(key="train-summary", description=f"Run {config.run_id}: reused {previous.run_id}",
                             markdown=f"# Run {config.run_id}: not retrained\n\nInputs and configuration equal "
                                      f"those of committed run **{previous.run_id}**; its outputs stand.\n")
    return previous


@task(name="discard", task_run_name="discard-{plan.run_id}", cache_policy=NO_CACHE)
def discard_run(plan: steps.RunPlan) -> None:
    """After a failed step: remove the run's staging area and work directory; committed runs are untouched."""
    headstart.discard(plan)


_AHEAD = " (begun while the flow run started: linreg.pipeline.headstart)"


def _width(plan: steps.RunPlan) -> int:
    c = plan.columns
    return len(c.keys) + len(c.features) + len(c.targets)


def _rows(summary: steps.RunSummary) -> dict:
    j = summary.joined
    return {"weather read": j.weather_rows, "yields read": j.yields_rows, "joined": j.joined_rows,
            "train": summary.rows.get("train", 0), "holdout": summary.rows.get("holdout", 0)}
