"""The steps of a training run, each a plain function that `tasks/` wraps for Prefect and `run()` chains.

plan_run -> join_inputs -> split_rows -> fit_model -> evaluate_model -> commit_run
(`discard` on failure). Steps pass small values (paths, counts, a few weights), never tables or tensors.
Passes over the data: validation (one per table), the join (DuckDB, to a local joined file), then two
scans of the joined file: one to fit, one to predict and evaluate.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

import linreg
from linreg import metrics, outputs
from linreg.config import TrainConfig
from linreg.errors import InputError
from linreg.fit import FitResult, TrainOptions, fit
from linreg.io import BATCH_ROWS, fingerprint, open_table
from linreg.join import JoinResult, connect, join_tables, parse_aggregate, quote
from linreg.model import LinearModel
from linreg.progress import Progress
from linreg.schema import SCHEMA_VERSION, Columns, metrics_schema, predictions_schema, pred_column, resolve_columns
from linreg.split import Split, choose_split
from linreg.tensors import matrix, read_batches
from linreg.validate import check_values

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A UTC timestamp with a short random suffix, e.g. 20261123T021500Z-3f9a."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class RunPlan:
    """What every later step needs: the configuration, column roles, fingerprint and where files go."""

    config: TrainConfig
    run_id: str
    columns: Columns
    key_fields: list[pa.Field]
    fingerprint: dict
    work_dir: str
    staging: outputs.Staging
    started_at: dt.datetime
    timings: dict = field(default_factory=dict)

    def metadata(self) -> dict[bytes, bytes]:
        return outputs.file_metadata(run_id=self.run_id, trainer=self.config.trainer,
                                     config=self.config.model_dump(mode="json"), fingerprint=self.fingerprint,
                                     versions=versions(), schema_version=SCHEMA_VERSION)


def versions() -> dict[str, str]:
    found = {"linreg": linreg.__version__, "torch": torch.__version__, "pyarrow": pa.__version__}
    try:
        found["prefect"] = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        found["prefect"] = "not installed"
    return found


def plan_run(config: TrainConfig) -> RunPlan:
    """Finish or sweep earlier interrupted commits; open both tables, check their schemas (footers only),
    fingerprint them, and make the staging area."""
    outputs.recover(config.output)
    weather = open_table(config.weather, "weather")
    yields = open_table(config.yields, "yields")
    columns = resolve_columns(weather, yields, features=config.features, targets=config.targets, keys=config.join_keys)
    if config.holdout_from_year is not None and config.time_column not in columns.keys:
        raise InputError(f"--holdout-from-year needs the time column {config.time_column!r} among the keys "
                         f"({', '.join(columns.keys)}).")
    run_id = config.run_id or new_run_id()
    staging = outputs.Staging.create(config.output, run_id)
    plan = RunPlan(config=config, run_id=run_id, columns=columns,
                   key_fields=[weather.schema.field(k) for k in columns.keys],
                   fingerprint=fingerprint([weather, yields]), work_dir=tempfile.mkdtemp(prefix=f"linreg-{run_id}-"),
                   staging=staging, started_at=dt.datetime.now(dt.timezone.utc))
    log.info("run %s: %s trainer, %d feature(s) %s -> %d target(s) %s, keys %s; weather %d file(s), yields %d file(s)",
             run_id, config.trainer, len(columns.features), columns.features, len(columns.targets), columns.targets,
             columns.keys, len(weather.files), len(yields.files))
    return plan


def join_inputs(plan: RunPlan) -> JoinResult:
    """Validate values (file by file), check keys are unique, and join the tables into the work directory."""
    start = time.perf_counter()
    config, columns = plan.config, plan.columns
    weather = open_table(config.weather, "weather")
    yields = open_table(config.yields, "yields")
    check_values(weather, columns.keys, columns.features)
    check_values(yields, columns.keys, columns.targets)
    con = connect(plan.work_dir, plan.config.memory_budget_bytes() // 2)
    try:
        joined = join_tables(con, weather, yields, columns, os.path.join(plan.work_dir, "joined.parquet"),
                             max_drop_fraction=config.max_drop_fraction,
                             aggregate=parse_aggregate(config.aggregate, columns.features))
    finally:
        con.close()
    plan.timings["join"] = time.perf_counter() - start
    log.info("joined %d rows (weather %d rows, %d dropped; yields %d rows, %d dropped) in %.2f s",
             joined.joined_rows, joined.weather_rows, joined.weather_dropped, joined.yields_rows,
             joined.yields_dropped, plan.timings["join"])
    return joined


def split_rows(plan: RunPlan, joined: JoinResult) -> Split:
    """Choose the holdout (whole regions, or later years) among the joined rows."""
    config, region = plan.config, plan.columns.region
    con = connect(plan.work_dir, plan.config.memory_budget_bytes() // 2)
    try:
        path = joined.path.replace("'", "''")
        regions = [r[0] for r in con.execute(
            f"SELECT DISTINCT {quote(region)} FROM read_parquet('{path}') ORDER BY 1").fetchall()]
    finally:
        con.close()
    split = choose_split(regions, region_column=region, holdout_regions=config.holdout_regions,
                         holdout_fraction=config.holdout_fraction, seed=config.seed,
                         time_column=config.time_column, from_year=config.holdout_from_year)
    log.info("%d region(s); %s", len(regions), split.describe())
    return split


def fit_model(plan: RunPlan, joined: JoinResult, split: Split) -> FitResult:
    """Fit on the training rows of the joined file (one scan), with the configured trainer."""
    config, columns = plan.config, plan.columns

    def train_batches():
        progress = Progress("fit pass", joined.joined_rows, log)
        for batch in read_batches(joined.path, columns.keys + columns.features + columns.targets):
            progress.advance(batch.num_rows)
            if progress.done % (64 * BATCH_ROWS) < batch.num_rows:  # about every 16M rows: still alive
                plan.staging.renew_lease()
            batch = batch.filter(pa.array(~split.holdout_mask(batch)))
            yield matrix(batch, columns.features), matrix(batch, columns.targets)

    result = fit(train_batches(), trainer=config.trainer, features=columns.features, targets=columns.targets,
                 options=TrainOptions.from_config(config))
    if result.epochs:
        log.info("%s trainer: %d epoch(s), lr %.3g, %s; %.2f s", config.trainer, result.epochs, result.lr,
                 result.stop_reason, result.seconds)
    return result


@dataclass
class Evaluation:
    """Small results of the evaluation pass: metric rows and row/region counts per split."""

    metrics: list[dict]
    rows: dict[str, int]
    regions: dict[str, int]


def evaluate_model(plan: RunPlan, joined: JoinResult, split: Split, fit: FitResult) -> Evaluation:
    """Predict every joined row, stream the predictions to staging, and compute the metrics."""
    columns, model = plan.columns, fit.model
    errors = {"train": metrics.SplitErrors(len(columns.targets)), "holdout": metrics.SplitErrors(len(columns.targets))}
    schema = predictions_schema(plan.key_fields, columns.targets)
    path = plan.staging.file("predictions")
    progress = Progress("evaluation pass", joined.joined_rows, log)
    with outputs.open_writer(path, schema, plan.metadata()) as writer:
        for batch in read_batches(joined.path, columns.keys + columns.features + columns.targets,
                                  batch_rows=outputs.PREDICTION_ROW_GROUP):
            progress.advance(batch.num_rows)
            holdout = split.holdout_mask(batch)
            Y = matrix(batch, columns.targets, np.float64)
            pred = model.predict(matrix(batch, columns.features))
            for name, mask in (("train", ~holdout), ("holdout", holdout)):
                errors[name].update(Y[mask], pred[mask])
            out = {k: batch.column(k) for k in columns.keys}
            out["split"] = pa.array(np.where(holdout, "holdout", "train"))
            for j, target in enumerate(columns.targets):
                out[target] = pa.array(Y[:, j])
                out[pred_column(target)] = pa.array(pred[:, j])
            writer.write_table(pa.table(out, schema=schema.remove_metadata()).cast(schema.remove_metadata()),
                               row_group_size=outputs.PREDICTION_ROW_GROUP)
    rows = metrics.metric_rows(errors, columns.targets, optimum_rss=fit.exact.rss)
    con = connect(plan.work_dir, default_memory_limit())
    try:
        rows += metrics.region_mse_rows(con, path, columns.region, columns.targets)
        regions = dict(con.execute(f"SELECT split, count(DISTINCT {quote(columns.region)}) FROM "
                                   f"read_parquet('{path}') GROUP BY split").fetchall())
    finally:
        con.close()
    outputs.write_table(plan.staging.file("metrics"), pa.Table.from_pylist(rows, schema=metrics_schema()),
                        plan.metadata())
    outputs.write_table(plan.staging.file("weights"), model.weights_table(), plan.metadata())
    return Evaluation(metrics=rows, rows={s: e.n for s, e in errors.items()}, regions=regions)


@dataclass
class RunSummary:
    run_id: str
    trainer: str
    output: dict[str, str]
    joined: JoinResult
    rows: dict[str, int]
    regions: dict[str, int]
    mse: dict[str, dict[str, float]]
    weights: dict[str, dict[str, float]]

    def text(self) -> str:
        j = self.joined
        lines = [f"run {self.run_id} ({self.trainer}) committed",
                 f"  rows: weather {j.weather_rows} read, yields {j.yields_rows} read, {j.joined_rows} joined; "
                 f"dropped {j.weather_dropped} weather and {j.yields_dropped} yields rows without a match",
                 f"  train: {self.rows.get('train', 0)} rows in {self.regions.get('train', 0)} region(s); "
                 f"holdout: {self.rows.get('holdout', 0)} rows in {self.regions.get('holdout', 0)} region(s)"]
        for split, per_target in self.mse.items():
            lines.append(f"  {split} MSE: " + ", ".join(f"{t} {v:.6g}" for t, v in per_target.items()))
        lines.append("  outputs: " + ", ".join(f"{d} {p}" for d, p in self.output.items()))
        return "\n".join(lines)


def commit_run(plan: RunPlan, joined: JoinResult, fit: FitResult, evaluation: Evaluation) -> RunSummary:
    """Write the runs index entry and move the run's partitions into the datasets."""
    finished = dt.datetime.now(dt.timezone.utc)
    run = {"run_id": plan.run_id, "trainer": plan.config.trainer,
           "config": plan.metadata()[b"linreg.config"].decode(), "input_fingerprint": plan.fingerprint["sha256"],
           "weather_rows": joined.weather_rows, "yields_rows": joined.yields_rows, "joined_rows": joined.joined_rows,
           "train_rows": evaluation.rows.get("train", 0), "holdout_rows": evaluation.rows.get("holdout", 0),
           "started_at": plan.started_at, "finished_at": finished}
    runs_schema = pa.schema([("run_id", pa.string()), ("trainer", pa.string()), ("config", pa.string()),
                             ("input_fingerprint", pa.string())]
                            + [(n, pa.int64()) for n in ("weather_rows", "yields_rows", "joined_rows",
                                                          "train_rows", "holdout_rows")]
                            + [("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC"))])
    outputs.write_table(plan.staging.file("runs"), pa.Table.from_pylist([run], schema=runs_schema), plan.metadata())
    final = plan.staging.commit()
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    mse = {}
    for row in evaluation.metrics:
        if row["metric"] == "mse" and row["region"] == "all":
            mse.setdefault(row["split"], {})[row["target"]] = row["value"]
    weights = {t: dict(zip(list(fit.model.features) + ["intercept"],
                            [float(v) for v in (*fit.model.coef_[j], fit.model.intercept_[j])]))
               for j, t in enumerate(fit.model.targets)}
    return RunSummary(run_id=plan.run_id, trainer=plan.config.trainer, output=final, joined=joined,
                      rows=evaluation.rows, regions=evaluation.regions, mse=mse, weights=weights)


def discard(plan: RunPlan) -> None:
    """Remove everything a failed run wrote: staging and work directory. Committed runs are untouched."""
    plan.staging.discard()
    shutil.rmtree(plan.work_dir, ignore_errors=True)


def run(config: TrainConfig) -> RunSummary:
    """A whole training run in this process, without Prefect."""
    plan = plan_run(config)
    try:
        joined = join_inputs(plan)
        split = split_rows(plan, joined)
        fit = fit_model(plan, joined, split)
        evaluation = evaluate_model(plan, joined, split, fit)
        return commit_run(plan, joined, fit, evaluation)
    except BaseException:
        discard(plan)
        raise
