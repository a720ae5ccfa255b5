"""The steps of a training run, each a plain function that `tasks/` wraps for Prefect and `run()` chains.

plan_run -> join_inputs -> split_rows -> fit_model -> evaluate_model -> commit_run
(`discard` on failure). Steps pass small values (paths, counts, a few weights), never tables or tensors.
Passes over the data: the join (DuckDB, checked batch by batch into a local Arrow IPC file of joined
rows), then scans of the joined file: one to fit (a second only when the exact solver needs its QR
pass), one to predict and evaluate.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import linreg
from linreg.pipeline import blas
from linreg.outputs import destination
from linreg.pipeline import metrics
from linreg.outputs import commit
from linreg.parallel import merge
from linreg import redact
from linreg.inputs import shard
from linreg.pipeline.background import BackgroundWriter, read_ahead
from linreg.config import TrainConfig
from linreg.errors import InputError
from linreg.models.fit import FitResult, TrainOptions, fit
from linreg.inputs.tables import BATCH_ROWS, fingerprint, open_table
from linreg.parallel.dist import Cluster
from linreg.inputs.join import REGION_INDEX, JoinResult, check_drops, connect, join_tables, parse_aggregate
from linreg.outputs.migrate import check_schema_version
from linreg.pipeline.progress import Progress
from linreg.inputs.schema import SCHEMA_VERSION, Columns, metrics_schema, predictions_schema, resolve_columns, runs_schema
from linreg.inputs.holdout import Split, choose_split
from linreg.inputs.stream import StreamedRows
from linreg.inputs.batches import matrix, read_batches
from linreg.inputs.weights import check_weights
from linreg.inputs.schema import check_weight_column

log = logging.getLogger(__name__)
SPLIT_NAMES = pa.array(["train", "holdout"])  # the predictions' split column: dictionary indices 0, 1


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
    staging: commit.Staging
    started_at: dt.datetime
    timings: dict = field(default_factory=dict)

    def metadata(self) -> dict[bytes, bytes]:
        return commit.file_metadata(run_id=self.run_id, trainer=self.config.trainer,
                                     config=redact.redact_config(self.config.model_dump(mode="json")),
                                     fingerprint=self.fingerprint,
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
    destination.check_writable(config.output)
    commit.recover(config.output)
    check_schema_version(config.output)  # a root with runs of an older layout: migrate it first
    weather = open_table(config.weather, "weather")
    yields = open_table(config.yields, "yields")
    columns = resolve_columns(weather, yields, features=config.features, targets=config.targets, keys=config.join_keys)
    if config.weight_column:
        check_weight_column(yields, config.weight_column, columns)
    if config.holdout_from_year is not None and config.time_column not in columns.keys:
        raise InputError(f"--holdout-from-year needs the time column {config.time_column!r} among the keys "
                         f"({', '.join(columns.keys)}).")
    run_id = config.run_id or new_run_id()
    staging = commit.Staging.create(config.output, run_id)
    plan = RunPlan(config=config, run_id=run_id, columns=columns,
                   key_fields=[weather.schema.field(k) for k in columns.keys],
                   fingerprint=fingerprint([weather, yields]), work_dir=tempfile.mkdtemp(prefix=f"linreg-{run_id}-"),
                   staging=staging, started_at=dt.datetime.now(dt.timezone.utc))
    log.info("run %s: %s trainer, %d feature(s) %s -> %d target(s) %s, keys %s; weather %d file(s), yields %d file(s)",
             run_id, config.trainer, len(columns.features), columns.features, len(columns.targets), columns.targets,
             columns.keys, len(weather.files), len(yields.files))
    return plan


def join_inputs(plan: RunPlan, cluster: Cluster | None = None) -> JoinResult:
    """Validate values (file by file), check keys are unique, and join the tables into the work directory.

    With several ranks (cluster), each validates its share of the files and joins its shard of regions
    (`linreg.inputs.shard`); the counts returned are the rank's, the drop checks are on all ranks' totals."""
    start = time.perf_counter()
    config, columns = plan.config, plan.columns
    weather = open_table(config.weather, "weather")
    yields = open_table(config.yields, "yields")
    world, rank = (cluster.world_size, cluster.rank) if cluster else (1, 0)
    checked = weather, yields
    if world > 1:  # this rank's shard: only its files when partitioned by region, else filtered in the join
        all_files = len(weather.files), len(yields.files)
        weather, w_partitioned = shard.restrict(weather, columns.region, rank, world)
        yields, y_partitioned = shard.restrict(yields, columns.region, rank, world)
        log.info("shard %d of %d: reads weather %d of %d file(s)%s, yields %d of %d file(s)%s", rank, world,
                 len(weather.files), all_files[0], " (partitioned by region)" if w_partitioned else ", filtered by region",
                 len(yields.files), all_files[1], " (partitioned by region)" if y_partitioned else ", filtered by region")
        checked = (weather if w_partitioned else shard.files_to_validate(weather, rank, world),
                   yields if y_partitioned else shard.files_to_validate(yields, rank, world))
    problem, joined = None, None
    try:  # values are checked on the joined rows, and their files named, by join_tables
        if config.weight_column:
            check_weights(checked[1], columns.keys, config.weight_column)
        con = connect(plan.work_dir, plan.config.memory_budget_bytes() // 2)
        try:
            joined = join_tables(con, weather, yields, columns, os.path.join(plan.work_dir, "joined.arrow"),
                                 max_drop_fraction=config.max_drop_fraction,
                                 aggregate=parse_aggregate(config.aggregate, columns.features),
                                 weight_column=config.weight_column,
                                 row_filter=shard.sql_predicate(columns.region, rank, world), check=world == 1,
                                 ordered=config.trainer != "exact", memory_limit=config.memory_budget_bytes() // 2)
        finally:
            con.close()
    except InputError as exc:
        if world == 1:
            raise
        problem = str(exc)
    if world > 1:  # every rank fails with the first rank's input error, instead of waiting for it
        problems = [p for p in cluster.all_gather_object(problem) if p]
        if problems:
            raise InputError(problems[0])
    if world > 1:
        total = global_join(cluster, joined)
        if total.joined_rows == 0:
            raise InputError(f"No rows are left after joining the {weather.describe()} with the {yields.describe()} "
                             f"on ({', '.join(columns.keys)}): no key appears in both.")
        check_drops(total, weather, yields, columns.keys, config.max_drop_fraction)
    plan.timings["join"] = time.perf_counter() - start
    log.info("joined %d rows (weather %d rows, %d dropped; yields %d rows, %d dropped) in %.2f s",
             joined.joined_rows, joined.weather_rows, joined.weather_dropped, joined.yields_rows,
             joined.yields_dropped, plan.timings["join"])
    return joined


def global_join(cluster: Cluster | None, joined: JoinResult) -> JoinResult:
    """The join's counts summed over ranks (regions are disjoint across ranks); the path stays this rank's."""
    if cluster is None or not cluster.distributed:
        return joined
    counts = cluster.all_gather_object((joined.weather_rows, joined.yields_rows, joined.joined_rows,
                                        joined.weather_keys))
    keys = None if counts[0][3] is None else sum(c[3] for c in counts)
    return JoinResult(path=joined.path, weather_rows=sum(c[0] for c in counts), yields_rows=sum(c[1] for c in counts),
                      joined_rows=sum(c[2] for c in counts), weather_keys=keys)


def split_rows(plan: RunPlan, joined: JoinResult, cluster: Cluster | None = None) -> Split:
    """Choose the holdout (whole regions, or later years) among the regions present in both tables (of
    every rank: the union of the ranks' regions is the single-process set, so the holdout is the same)."""
    config, region = plan.config, plan.columns.region
    regions = read_regions(joined).to_pylist()
    if cluster is not None and cluster.distributed:
        regions = sorted(set().union(*cluster.all_gather_object(regions)))
    split = choose_split(regions, region_column=region, holdout_regions=config.holdout_regions,
                         holdout_fraction=config.holdout_fraction, seed=config.seed,
                         time_column=config.time_column, from_year=config.holdout_from_year)
    log.info("%d region(s); %s", len(regions), split.describe())
    return split


def fit_model(plan: RunPlan, joined: JoinResult, split: Split, cluster: Cluster | None = None,
              checkpoint=None) -> FitResult:
    """Fit on the training rows of the joined file (one scan), with the configured trainer (data-parallel
    over the ranks of `cluster`; `checkpoint`: `linreg.outputs.snapshot.Snapshots` for the gradient trainers)."""
    config, columns = plan.config, plan.columns
    lookup = split.lookup(read_regions(joined))

    def train_batches():
        progress = Progress("fit pass", joined.joined_rows, log)
        weight = [config.weight_column] if config.weight_column else []
        for batch in read_batches(joined.path, split.columns(REGION_INDEX) + columns.features + columns.targets
                                  + weight):
            progress.advance(batch.num_rows)
            if progress.done % (64 * BATCH_ROWS) < batch.num_rows:  # about every 16M rows: still alive
                plan.staging.renew_lease()
            train = ~split.holdout_mask(batch, lookup, REGION_INDEX)
            if not train.all():  # one Arrow filter of the batch (no copy when no row of it is held out)
                batch = batch.filter(pa.array(train, type=pa.bool_()))
            yield (matrix(batch, columns.features), matrix(batch, columns.targets),
                   *([matrix(batch, weight, np.float64)[:, 0]] if weight else []))

    def stream(shift, scale, n_rows, mean_weight) -> StreamedRows:
        log.info("the %d training rows exceed half the memory budget (%s): streaming them from %s every epoch",
                 n_rows, config.memory_budget, joined.path)
        return StreamedRows(path=joined.path, features=columns.features, targets=columns.targets,
                            weight=config.weight_column, keep=lambda b: ~split.holdout_mask(b, lookup, REGION_INDEX),
                            keep_columns=split.columns(REGION_INDEX), shift=shift, scale=scale, n_rows=n_rows,
                            mean_weight=mean_weight, buffer_rows=stream_buffer_rows(config.memory_budget_bytes(),
                                                                                    len(columns.features + columns.targets) + 1))

    with blas.one_thread():
        result = fit(lambda: read_ahead(train_batches()), trainer=config.trainer, features=columns.features,
                     targets=columns.targets, options=TrainOptions.from_config(config), cluster=cluster,
                     checkpoint=checkpoint, stream=stream, memory_limit=config.memory_budget_bytes() // 2)
    if result.epochs:
        log.info("%s trainer: %d epoch(s), lr %.3g, %s; %.2f s", config.trainer, result.epochs, result.lr,
                 result.stop_reason, result.seconds)
    aliased = result.exact.factor.aliased
    if aliased.any():
        log.warning("singular design (rank %d): minimum-norm solution; aliased terms without statistics: %s",
                    result.exact.rank, ", ".join((columns.features + ["intercept"])[j] for j in np.flatnonzero(aliased)))
    return result


def stream_buffer_rows(budget_bytes: int, width: int) -> int:
    """Rows of the shuffle buffer of streamed epochs: an eighth of the budget, counting the three copies the
    buffer is in at its peak (the blocks, their concatenation, the shuffled rows), float32 x `width`."""
    return max(budget_bytes // 8 // (3 * 4 * width), 4096)


@dataclass
class Evaluation:
    """Small results of the evaluation pass: the metric rows over all regions (the per-region rows are
    only in the metrics file: there may be millions), and row/region counts per split."""

    metrics: list[dict]
    rows: dict[str, int]
    regions: dict[str, int]
    region_rows: int = 0


def evaluate_model(plan: RunPlan, joined: JoinResult, split: Split, fit: FitResult,
                   cluster: Cluster | None = None) -> Evaluation:
    """Predict every joined row, stream the predictions to staging, and compute the metrics.

    With several ranks each writes its rows' predictions as its own part file (part-<rank>.parquet) and
    the sums behind the metrics are reduced over ranks; rank 0 writes the metrics and weights."""
    world, rank = (cluster.world_size, cluster.rank) if cluster else (1, 0)
    columns, model = plan.columns, fit.model
    weight = plan.config.weight_column
    # R^2 on the training split follows the fit's convention: uncentred through the origin (as R's lm).
    errors = {"train": metrics.SplitErrors(len(columns.targets), centred=plan.config.fit_intercept),
              "holdout": metrics.SplitErrors(len(columns.targets))}
    schema = predictions_schema(plan.key_fields, columns.targets, weight_column=weight)
    path = plan.staging.file("predictions", part=rank)
    if world > 1 and not plan.staging.is_local:  # uploaded below: staging's local directory is rank 0's
        path = os.path.join(plan.work_dir, commit.part_file(rank))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    progress = Progress("evaluation pass", joined.joined_rows, log)
    regions = read_regions(joined)
    lookup = split.lookup(regions)
    by_region = metrics.RegionErrors(len(regions), len(columns.targets))
    plain = schema.remove_metadata()
    with commit.open_writer(path, schema, plan.metadata()) as writer, BackgroundWriter(writer) as background, \
            blas.one_thread():
        for batch in read_batches(joined.path, columns.keys + [REGION_INDEX] + columns.features + columns.targets
                                  + ([weight] if weight else []), batch_rows=commit.PREDICTION_ROW_GROUP):
            progress.advance(batch.num_rows)
            holdout = split.holdout_mask(batch, lookup, REGION_INDEX)
            Y = matrix(batch, columns.targets, np.float64)
            pred = model.predict(matrix(batch, columns.features))
            w = matrix(batch, [weight], np.float64)[:, 0] if weight else None
            for name, mask in (("train", ~holdout), ("holdout", holdout)):
                errors[name].update(Y[mask], pred[mask], None if w is None else w[mask])
            residual = Y - pred
            by_region.update(batch.column(REGION_INDEX).to_numpy(), holdout, residual * residual, w)
            out = [batch.column(k).cast(plain.field(k).type) for k in columns.keys]
            out.append(pa.DictionaryArray.from_arrays(pa.array(holdout.view(np.int8)), SPLIT_NAMES).cast(pa.string()))
            for j in range(len(columns.targets)):
                out += [pa.array(Y[:, j]), pa.array(pred[:, j])]
            if weight:
                out.append(pa.array(w))
            background.write(pa.Table.from_arrays(out, schema=plain))
    if world > 1:
        errors = merge.merge_split_errors(cluster, errors)
        if not plan.staging.is_local:
            plan.staging.upload("predictions", path, rank)
    rows = metrics.metric_rows(errors, columns.targets, optimum_rss=fit.exact.rss, stats=fit.stats)
    k = len(columns.targets)
    if world > 1:  # a region's rows are all on one rank: its metrics are complete there
        region_table = pa.concat_tables(cluster.all_gather_object(by_region.table(regions, columns.targets)))
        order = pc.sort_indices(region_table, sort_keys=[("split", "ascending"), ("region", "ascending")])
        region_table = region_table.take(order)  # a stable sort: each region's targets keep their order
        per_split = pc.value_counts(region_table.column("split"))  # a row per region and target, and the total
        counts = {c["values"]: c["counts"] // (k + 1) for c in per_split.to_pylist()}
        region_batches = region_table.to_batches()
    else:  # streamed to the file: millions of regions' rows are never one table
        counts = {s: n for s, n in by_region.regions_per_split().items() if n}
        region_batches = by_region.batches(regions, columns.targets)
    evaluation = Evaluation(metrics=rows, rows={s: e.n for s, e in errors.items()}, regions=counts,
                            region_rows=sum(counts.values()) * (k + 1))
    if rank != 0:
        return evaluation
    with commit.open_writer(plan.staging.file("metrics"), metrics_schema(), plan.metadata()) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=metrics_schema()))
        for batch in region_batches:
            writer.write_batch(batch)
    commit.write_table(plan.staging.file("weights"), model.weights_table(fit.stats), plan.metadata())
    return evaluation


def read_regions(joined: JoinResult) -> pa.ChunkedArray:
    """The regions of the joined rows, in the order of their numbers (`REGION_INDEX`)."""
    return pq.read_table(joined.regions_path).column("region")


@dataclass
class RunSummary:
    run_id: str
    trainer: str
    output: dict[str, str]
    joined: JoinResult
    rows: dict[str, int]
    regions: dict[str, int]
    mse: dict[str, dict[str, float]]  # split -> target -> MSE over all regions
    weights: dict[str, dict[str, float]]
    mean_mse: dict[str, float] = field(default_factory=dict)  # split -> the mean of the targets' MSEs

    def text(self) -> str:
        j = self.joined
        lines = [f"run {self.run_id} ({self.trainer}) committed",
                 f"  rows: weather {j.weather_rows} read, yields {j.yields_rows} read, {j.joined_rows} joined; "
                 f"dropped {j.weather_dropped} weather and {j.yields_dropped} yields rows without a match",
                 f"  train: {self.rows.get('train', 0)} rows in {self.regions.get('train', 0)} region(s); "
                 f"holdout: {self.rows.get('holdout', 0)} rows in {self.regions.get('holdout', 0)} region(s)"]
        for split, per_target in self.mse.items():
            mean = f"; mean over targets {self.mean_mse[split]:.6g}" if split in self.mean_mse else ""
            lines.append(f"  {split} MSE: " + ", ".join(f"{t} {v:.6g}" for t, v in per_target.items()) + mean)
        lines.append("  outputs: " + ", ".join(f"{d} {p}" for d, p in self.output.items()))
        return "\n".join(lines)


def commit_run(plan: RunPlan, joined: JoinResult, fit: FitResult, evaluation: Evaluation) -> RunSummary:
    """Write the runs index entry and move the run's partitions into the datasets."""
    finished = dt.datetime.now(dt.timezone.utc)
    run = {"trainer": plan.config.trainer,
           "config": plan.metadata()[b"linreg.config"].decode(), "input_fingerprint": plan.fingerprint["sha256"],
           "weather_rows": joined.weather_rows, "yields_rows": joined.yields_rows, "joined_rows": joined.joined_rows,
           "train_rows": evaluation.rows.get("train", 0), "holdout_rows": evaluation.rows.get("holdout", 0),
           "started_at": plan.started_at, "finished_at": finished}
    # no run_id column: the folder run_id=<id> names the run, one column for every reader (schema version 2)
    commit.write_table(plan.staging.file("runs"), pa.Table.from_pylist([run], schema=runs_schema()), plan.metadata())
    final = plan.staging.commit()
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    mse, mean_mse = total_mse(evaluation.metrics)
    weights = {t: dict(zip(list(fit.model.features) + ["intercept"],
                            [float(v) for v in (*fit.model.coef_[j], fit.model.intercept_[j])]))
               for j, t in enumerate(fit.model.targets)}
    return RunSummary(run_id=plan.run_id, trainer=plan.config.trainer, output=final, joined=joined,
                      rows=evaluation.rows, regions=evaluation.regions, mse=mse, weights=weights, mean_mse=mean_mse)


def total_mse(metric_rows: list[dict]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """From `metrics` rows: the MSE over all regions per split and target, and per split over all targets
    (the totals: region null; target null for the mean over targets)."""
    mse, mean_mse = {}, {}
    for row in metric_rows:
        if row["metric"] == "mse" and row["region"] is None:
            if row["target"] is None:
                mean_mse[row["split"]] = row["value"]
            else:
                mse.setdefault(row["split"], {})[row["target"]] = row["value"]
    return mse, mean_mse


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
