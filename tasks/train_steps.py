"""The training run's steps as Prefect tasks. They pass small values (paths, counts, weights), never tables."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from linreg import pipeline
from linreg.config import TrainConfig
from linreg.fit import FitResult
from linreg.join import JoinResult
from linreg.split import Split


@task(name="plan", cache_policy=NO_CACHE)
def plan_run(config: TrainConfig) -> pipeline.RunPlan:
    """Open the inputs, check their schemas, fingerprint them and create the staging area."""
    return pipeline.plan_run(config)


@task(name="validate-and-join", cache_policy=NO_CACHE)
def join_inputs(plan: pipeline.RunPlan) -> JoinResult:
    """Check values and keys of both tables and join them on the keys."""
    return pipeline.join_inputs(plan)


@task(name="split", cache_policy=NO_CACHE)
def split_rows(plan: pipeline.RunPlan, joined: JoinResult) -> Split:
    """Choose the holdout regions (or years)."""
    return pipeline.split_rows(plan, joined)


@task(name="train", cache_policy=NO_CACHE)
def fit_model(plan: pipeline.RunPlan, joined: JoinResult, split: Split) -> FitResult:
    """Fit the model on the training rows with the configured trainer."""
    return pipeline.fit_model(plan, joined, split)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(plan: pipeline.RunPlan, joined: JoinResult, split: Split,
                   fit: FitResult) -> pipeline.Evaluation:
    """Predict every joined row, stage the predictions, metrics and weights."""
    return pipeline.evaluate_model(plan, joined, split, fit)


@task(name="commit", cache_policy=NO_CACHE)
def commit_run(plan: pipeline.RunPlan, joined: JoinResult, fit: FitResult,
               evaluation: pipeline.Evaluation) -> pipeline.RunSummary:
    """Move the staged run into the output datasets, the runs index last."""
    return pipeline.commit_run(plan, joined, fit, evaluation)
