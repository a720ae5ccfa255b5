"""The scoring run as a Prefect task: validate the weather against the model, predict, commit the scores."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from linreg.pipeline import scoring
from tasks.retry import STORAGE_RETRIES, log_step


@task(name="score", task_run_name="score-{config.score_run_id}", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def score_weather(config: scoring.ScoreConfig) -> scoring.ScoreSummary:
    """Apply the model to every weather row; a failed attempt leaves nothing behind, so a retry is safe."""
    started = time.perf_counter()
    summary = scoring.score(config)
    log_step(summary.score_run_id, "score", started, f"{summary.rows} rows x {len(summary.keys)} key(s) scored "
             f"with run {summary.model_run_id} -> {summary.output}")
    return summary
