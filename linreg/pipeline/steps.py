"""The steps of a training run, each a plain function that `tasks/` wraps for Prefect and `run()` chains.

plan_run -> join_inputs -> split_rows -> fit_model -> evaluate_model -> commit_run
(`discard` on failure). Each step runs the same code with one process or several ranks: the run's
`linreg.parallel.dist.Cluster` (one process by default) makes every exchange between ranks an identity. Steps pass small values (paths, counts, a few weights), never tables or tensors.
Passes over the data: the join (DuckDB, checked batch by batch into a local Arrow IPC file of joined
rows), then scans of the joined file: one to fit (a second only when the exact solver needs its QR
pass), one to predict and evaluate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import linreg
from linreg import redact
from linreg.config import TrainConfig, decide_run_id, usable_cpus
from linreg.errors import InputError
from linreg.inputs import exchange, shard
from linreg.inputs.batches import matrix, read_batches
from linreg.inputs.holdout import Split, choose_split
from linreg.inputs.join import JoinResult, REGION_INDEX, check_joined, connect, join_tables, needed_columns
from linreg.inputs.schema import (Columns, SCHEMA_VERSION, check_weight_column, metrics_schema, pred_column,
                                  predictions_schema, resolve_columns, runs_schema)
from linreg.inputs.stream import StreamedRows
from linreg.inputs.tables import BATCH_ROWS, Table, check_unchanged, fingerprint, open_table
from linreg.inputs.weights import check_weights
from linreg.models.fit import FitResult, TrainOptions, fit
from linreg.outputs import commit, destination
from linreg.outputs.migrate import recover_and_check
from linreg.parallel import dist, merge
from linreg.parallel.dist import Cluster
from linreg.pipeline import blas, cv as crossval, metrics
from linreg.pipeline.picture import HoldoutSample, Picture, worst_regions
from linreg.pipeline.background import BackgroundWriter, read_ahead
from linreg.pipeline.progress import Progress

log = logging.getLogger(__name__)
SPLIT_NAMES = pa.array(["train", "holdout"])  # the predictions' split column: dictionary indices 0, 1


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
    """The versions that made a run, from the installed packages' metadata (importing torch or Prefect only to
    ask would cost seconds)."""
    found = {"linreg": linreg.__version__}
    for package in ("torch", "pyarrow", "prefect"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def plan_run(config: TrainConfig) -> RunPlan:
    """Finish or sweep earlier interrupted commits; open both tables, check their schemas (footers only),
    fingerprint them, and make the staging area."""
    destination.check_writable(config.output)
    recover_and_check(config.output)  # finish interrupted commits; a root of an older layout: migrate it first
    weather = open_table(config.weather, "weather")
    yields = open_table(config.yields, "yields")
    columns = resolve_columns(weather, yields, features=config.features, targets=config.targets, keys=config.join_keys,
                              aggregate=config.aggregate)
    if config.weight_column:
        check_weight_column(yields, config.weight_column, columns)
    if config.holdout_from_year is not None and config.time_column not in columns.keys:
        raise InputError(f"--holdout-from-year needs the time column {config.time_column!r} among the keys "
                         f"({', '.join(columns.keys)}).")
    run_id = decide_run_id(config.run_id)
    staging = commit.Staging.create(config.output, run_id,
                                    datasets=commit.DATASETS_WITH_CV if config.cv_folds else commit.DATASETS)
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

    Each rank of `cluster` (default: one process) validates its share of the files and joins its shard of
    regions (`linreg.inputs.shard`: all files and rows with one process); the counts returned are the
    rank's, the no-rows and drop checks are on all ranks' totals, and an input error of any rank is raised
    on every rank. Inputs that no longer match the plan's fingerprint after the join (a file rewritten, added
    or removed since the plan or during the reads) are an input error (`check_unchanged`)."""
    cluster = cluster or dist.single_process()
    start = time.perf_counter()
    config, columns = plan.config, plan.columns
    weather, yields = open_table(config.weather, "weather"), open_table(config.yields, "yields")
    opened = [weather, yields]  # whole, for the check that they did not change since the plan
    # rank 0 decides how ranks split the regions (from the footers just read), and every rank follows it
    sharding = cluster.broadcast_object(shard.plan_sharding(weather, yields, columns.region, cluster.world_size)
                                        if cluster.is_main else None)
    shares = exchange_shares(cluster, sharding, weather, yields, columns.region)
    directory = None
    if shares is not None:  # one shared scan: every rank reads its files once and sends each row to its owner
        directory = cluster.broadcast_object(os.path.join(plan.work_dir, "exchange") if cluster.is_main else None)
        if cluster.is_main:
            log.info("%d ranks split the regions by a hash of the region, each reading %s of the files once "
                     "and sending each row to its region's rank", cluster.world_size,
                     " and ".join(f"{len(s[cluster.rank])} of {len(t.files)} {t.role}"
                                  for s, t in zip(shares, (weather, yields))))
        weather_checked, yields_checked = (shard.files_to_validate(t, cluster.rank, cluster.world_size)
                                           for t in (weather, yields))
    else:
        if cluster.is_main and cluster.distributed:
            log.info("%d ranks split the regions %s", cluster.world_size, sharding.describe())
        weather, weather_checked = shard.rank_share(weather, columns.region, cluster.rank, sharding)
        yields, yields_checked = shard.rank_share(yields, columns.region, cluster.rank, sharding)

    def join(con, exchanged) -> JoinResult:  # values are checked on the joined rows, and files named, by join_tables
        if config.weight_column:
            check_weights(yields_checked, columns.keys, config.weight_column)
        return join_tables(con, weather, yields, columns, os.path.join(plan.work_dir, "joined.arrow"),
                           max_drop_fraction=config.max_drop_fraction,
                           weight_column=config.weight_column,
                           row_filter=None if exchanged else sharding.predicate(columns.region, cluster.rank),
                           filter_rows=sharding.by_range,
                           check=False, ordered=config.trainer != "exact",
                           memory_limit=rank_budget(config, cluster) // 2, threads=rank_cpus(cluster),
                           exchanged=exchanged, hold_bytes=hold_bytes(config, cluster))

    con = connect(plan.work_dir, rank_budget(config, cluster) // 2, threads=rank_cpus(cluster))
    try:
        exchanged = None
        if shares is not None:
            on_every_rank(cluster, lambda: exchange.send_tables(  # returns on every rank once all have sent
                con, (weather, yields), needed_columns(columns, config.weight_column), columns.region, shares,
                directory, cluster.rank, cluster.world_size))
            exchanged = exchange.receive_tables(directory, cluster.rank, cluster.world_size)
        joined = on_every_rank(cluster, lambda: join(con, exchanged))
        total = global_join(cluster, joined)
        on_every_rank(cluster, lambda: check_joined(con, total, weather, yields, columns.keys,
                                                    config.max_drop_fraction))
        # a file rewritten, added or removed since the plan (or during the reads): the rows may mix versions
        on_every_rank(cluster, lambda: check_unchanged(plan.fingerprint, opened))
    finally:
        con.close()
        if directory is not None:
            exchange.discard(directory, cluster.rank)
    plan.timings["join"] = time.perf_counter() - start
    log.info("joined %d rows (weather %d rows, %d dropped; yields %d rows, %d dropped) in %.2f s",
             joined.joined_rows, joined.weather_rows, joined.weather_dropped, joined.yields_rows,
             joined.yields_dropped, plan.timings["join"])
    return joined


def exchange_shares(cluster: Cluster, sharding: shard.Sharding, weather: Table, yields: Table, region: str):
    """Each rank's files of each table for one shared scan (`linreg.inputs.exchange`), or None: with one
    process, ranges of regions, tables partitioned by region (each rank then reads only its own files), ranks
    on several machines (no directory they share), or files that do not split evenly."""
    if (not cluster.distributed or sharding.by_range or dist.local_ranks(cluster) != cluster.world_size
            or any(shard.partition_regions(t, region) is not None for t in (weather, yields))):
        return None
    return exchange.plan_shares(weather, yields, cluster.world_size)


def rank_budget(config: TrainConfig, cluster: Cluster | None = None) -> int:
    """Bytes this rank may use: --memory-budget is what the job may use on a machine, shared by its local
    ranks (four ranks at the default 25% take 25% of RAM together, not all of it)."""
    return config.memory_budget_bytes() // dist.local_ranks(cluster or dist.single_process())


def hold_bytes(config: TrainConfig, cluster: Cluster | None = None) -> int:
    """Bytes of joined rows this rank keeps in memory instead of writing them to its work directory
    (`linreg.inputs.spool`): what the rest of the run leaves of its budget. During the join DuckDB may use
    half; the exact trainer's fit needs O(p^2), so the rows may take the other half; the gradient trainers
    also keep float32 copies of the training rows (up to half the budget), so the rows get a quarter."""
    return rank_budget(config, cluster) // (2 if config.trainer == "exact" else 4)


def rank_cpus(cluster: Cluster | None = None) -> int:
    """Processors this rank may keep busy: those this process may run on, shared by the machine's local ranks
    (two ranks on two cores get one each; a process pinned to one core gets one)."""
    return max(1, usable_cpus() // dist.local_ranks(cluster or dist.single_process()))


def on_every_rank(cluster: Cluster, step):
    """step() on this rank; an InputError of any rank is raised on every rank (the first rank's), so that
    ranks fail together instead of waiting for a failed one. With one process: step()."""
    problem, result = None, None
    try:
        result = step()
    except InputError as exc:
        problem = exc
    cluster.raise_first_error(problem)
    return result


def global_join(cluster: Cluster | None, joined: JoinResult) -> JoinResult:
    """The join's counts summed over ranks (regions are disjoint across ranks); the paths stay this rank's."""
    cluster = cluster or dist.single_process()
    counts = cluster.all_gather_object((joined.weather_rows, joined.yields_rows, joined.joined_rows,
                                        joined.weather_keys))
    keys = None if counts[0][3] is None else sum(c[3] for c in counts)
    return dataclasses.replace(joined, weather_rows=sum(c[0] for c in counts), yields_rows=sum(c[1] for c in counts),
                               joined_rows=sum(c[2] for c in counts), weather_keys=keys)


def split_rows(plan: RunPlan, joined: JoinResult, cluster: Cluster | None = None) -> Split:
    """Choose the holdout (whole regions, or later years) among the regions present in both tables (of
    every rank: the union of the ranks' regions is the single-process set, so the holdout is the same)."""
    config, region = plan.config, plan.columns.region
    cluster = cluster or dist.single_process()
    regions = cluster.union_sorted(read_regions(joined).to_pylist())  # sorted and distinct on each rank
    split = choose_split(regions, region_column=region, holdout_regions=config.holdout_regions,
                         holdout_fraction=config.holdout_fraction, seed=config.seed,
                         time_column=config.time_column, from_year=config.holdout_from_year)
    if config.cv_folds:
        split = crossval.with_folds(split, joined.regions_path, config.cv_folds, config.seed, cluster)
    log.info("%d region(s); %s", len(regions), split.describe())
    return split


def fit_model(plan: RunPlan, joined: JoinResult, split: Split, cluster: Cluster | None = None,
              checkpoint=None) -> FitResult:
    """Fit on the training rows of the joined file (one scan), with the configured trainer (data-parallel
    over the ranks of `cluster`; None: `fit`'s one process, on the configured device; `checkpoint`:
    `linreg.outputs.snapshot.Snapshots` for the gradient trainers)."""
    config, columns = plan.config, plan.columns
    regions = read_regions(joined)
    lookup = split.lookup(regions)
    folds = split.folds.lookup(regions) if split.folds else None

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
            X, Y = matrix(batch, columns.features), matrix(batch, columns.targets)
            w = matrix(batch, weight, np.float64)[:, 0] if weight else None
            if folds is not None:  # cross-validation: (X, Y, w or None, fold)
                yield X, Y, w, split.folds.of_rows(batch, folds, REGION_INDEX)
            else:
                yield (X, Y) if w is None else (X, Y, w)

    def stream(shift, scale, n_rows, mean_weight) -> StreamedRows:
        log.info("the %d training rows exceed half the memory budget (%s): streaming them from %s every epoch",
                 n_rows, config.memory_budget, joined.path)
        return StreamedRows(path=joined.path, features=columns.features, targets=columns.targets,
                            weight=config.weight_column, keep=lambda b: ~split.holdout_mask(b, lookup, REGION_INDEX),
                            keep_columns=split.columns(REGION_INDEX), shift=shift, scale=scale, n_rows=n_rows,
                            mean_weight=mean_weight, buffer_rows=stream_buffer_rows(rank_budget(config, cluster),
                                                                                    len(columns.features + columns.targets) + 1))

    with blas.one_thread():
        result = fit(lambda: read_ahead(train_batches()), trainer=config.trainer, features=columns.features,
                     targets=columns.targets, options=TrainOptions.from_config(config), cluster=cluster,
                     checkpoint=checkpoint, stream=stream, memory_limit=rank_budget(config, cluster) // 2,
                     cv_folds=config.cv_folds, l2s=config.l2_values if config.cv_folds else None)
    if result.cv is not None:
        log.info("cross-validated MSE over %d folds: %s; chosen l2 %g", config.cv_folds,
                 ", ".join(f"l2 {l2:g}: {score:.6g}" for l2, score in zip(result.cv.l2s, result.cv.score())),
                 result.cv.chosen_l2)
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
    only in the metrics file: there may be millions), row/region counts per split, and what the report
    draws (a sample of holdout rows, the worst regions)."""

    metrics: list[dict]
    rows: dict[str, int]
    regions: dict[str, int]
    region_rows: int = 0
    picture: Picture = field(default_factory=Picture)


def evaluate_model(plan: RunPlan, joined: JoinResult, split: Split, fit: FitResult,
                   cluster: Cluster | None = None) -> Evaluation:
    """Predict every joined row and stream the predictions to staging (each rank its rows, as its own part
    file part-<rank>.parquet), compute the metrics from the sums over all ranks, and (rank 0) write the
    metrics and weights."""
    cluster = cluster or dist.single_process()
    targets = plan.columns.targets
    regions = read_regions(joined)
    errors, by_region, sample = write_predictions(plan, joined, split, fit, regions, cluster)
    errors = merge.merge_split_errors(cluster, errors)
    rows = metrics.metric_rows(errors, targets, optimum_rss=fit.exact.rss, stats=fit.stats)
    if fit.cv is not None:  # the l2 cross-validation chose
        rows.append({"split": "train", "region": None, "target": None, "metric": "l2", "value": fit.cv.chosen_l2})
    counts, region_batches = metrics.region_metric_batches(cluster, by_region, regions, targets)
    picture = Picture(worst=worst_regions(cluster, by_region.holdout_mse(), regions),
                      holdout_regions=counts.get("holdout", 0),
                      sample=sample.merged(cluster).columns(targets, pred_column))
    evaluation = Evaluation(metrics=rows, rows={s: e.n for s, e in errors.items()}, regions=counts,
                            region_rows=sum(counts.values()) * (len(targets) + 1), picture=picture)
    if cluster.is_main:
        write_metrics(plan, fit, rows, region_batches)
        if fit.cv is not None:
            crossval.write_cv(plan.staging, fit.cv, targets, plan.metadata())
    return evaluation


def write_predictions(plan: RunPlan, joined: JoinResult, split: Split, fit: FitResult, regions: pa.ChunkedArray,
                      cluster: Cluster) -> tuple[dict[str, metrics.SplitErrors], metrics.RegionErrors, HoldoutSample]:
    """One scan of this rank's joined rows: predict, stream the predictions to the rank's part file, and sum
    the errors; returns this rank's sums per split (`SplitErrors`) and per split and region (`RegionErrors`),
    and its sample of holdout rows for the report. Cross-validated runs also write each row's fold and its
    out-of-fold predictions."""
    columns, weight, model, cv = plan.columns, plan.config.weight_column, fit.model, fit.cv
    # R^2 on the training split follows the fit's convention: uncentred through the origin (as R's lm).
    errors = {"train": metrics.SplitErrors(len(columns.targets), centred=plan.config.fit_intercept),
              "holdout": metrics.SplitErrors(len(columns.targets))}
    by_region = metrics.RegionErrors(len(regions), len(columns.targets))
    sample = HoldoutSample(len(columns.targets), seed=plan.config.seed, rank=cluster.rank)
    schema = predictions_schema(plan.key_fields, columns.targets, weight_column=weight, cv=cv is not None)
    path, upload = prediction_part_file(plan, cluster)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    progress = Progress("evaluation pass", joined.joined_rows, log)
    lookup = split.lookup(regions)
    folds = split.folds.lookup(regions) if cv is not None else None
    plain = schema.remove_metadata()
    # split: two values, written plain (a dictionary's hash of every row cost the writer a quarter of its time)
    with commit.open_writer(path, schema, plan.metadata(), write_back=plan.staging.is_local, plain=["split"]) as writer, \
            BackgroundWriter(writer) as background, blas.one_thread():
        for batch in read_batches(joined.path, columns.keys + [REGION_INDEX] + columns.features + columns.targets
                                  + ([weight] if weight else []), batch_rows=commit.PREDICTION_ROW_GROUP):
            progress.advance(batch.num_rows)
            holdout = split.holdout_mask(batch, lookup, REGION_INDEX)
            Y = matrix(batch, columns.targets, np.float64)
            X = matrix(batch, columns.features)
            pred = model.predict(X)
            w = matrix(batch, [weight], np.float64)[:, 0] if weight else None
            residual = Y - pred
            squared = residual * residual
            metrics.add_splits(errors, Y, squared, holdout, w)
            sample.add(Y, pred, holdout)
            by_region.update(batch.column(REGION_INDEX).to_numpy(), holdout, squared, w)
            out = [batch.column(k).cast(plain.field(k).type) for k in columns.keys]
            out.append(pa.DictionaryArray.from_arrays(pa.array(holdout.view(np.int8)), SPLIT_NAMES).cast(pa.string()))
            if cv is not None:  # holdout rows are in no fold: null fold and out-of-fold predictions
                fold = np.where(holdout, crossval.NO_FOLD, split.folds.of_rows(batch, folds, REGION_INDEX))
                out.append(crossval.fold_column(fold))
                cv_pred = crossval.out_of_fold(cv, X, fold)
            for j in range(len(columns.targets)):
                out += [pa.array(Y[:, j]), pa.array(pred[:, j])]
                if cv is not None:
                    out.append(pa.array(cv_pred[:, j], mask=fold == crossval.NO_FOLD))
            if weight:
                out.append(pa.array(w))
            background.write(pa.Table.from_arrays(out, schema=plain))
    if upload:
        plan.staging.upload("predictions", path, cluster.rank)
    return errors, by_region, sample


def prediction_part_file(plan: RunPlan, cluster: Cluster) -> tuple[str, bool]:
    """Where this rank writes its predictions, and whether it then uploads them itself: into staging's local
    directory, except with several ranks and staging on object storage, where that directory is rank 0's
    (on its machine): then each rank writes in its work directory and uploads its part."""
    if cluster.distributed and not plan.staging.is_local:
        return os.path.join(plan.work_dir, commit.part_file(cluster.rank)), True
    return plan.staging.file("predictions", part=cluster.rank), False


def write_metrics(plan: RunPlan, fit: FitResult, rows: list[dict], region_batches) -> None:
    """The run's metrics file (the totals `rows`, then the per-region record batches) and weights file, in staging."""
    with commit.open_writer(plan.staging.file("metrics"), metrics_schema(), plan.metadata(),
                            write_back=plan.staging.is_local) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=metrics_schema()))
        for batch in region_batches:
            writer.write_batch(batch)
    commit.write_table(plan.staging.file("weights"), fit.model.weights_table(fit.stats), plan.metadata())


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
    mse, mean_mse = metrics.total_mse(evaluation.metrics)
    weights = {t: dict(zip(list(fit.model.features) + ["intercept"],
                            [float(v) for v in (*fit.model.coef_[j], fit.model.intercept_[j])]))
               for j, t in enumerate(fit.model.targets)}
    return RunSummary(run_id=plan.run_id, trainer=plan.config.trainer, output=final, joined=joined,
                      rows=evaluation.rows, regions=evaluation.regions, mse=mse, weights=weights, mean_mse=mean_mse)


def discard(plan: RunPlan) -> None:
    """Remove everything a failed run wrote: staging and work directory. Committed runs are untouched."""
    plan.staging.discard()
    shutil.rmtree(plan.work_dir, ignore_errors=True)


def run(config: TrainConfig, *, attempt: Callable[[Callable[[], Any], str], Any] | None = None,
        then: Callable[[RunPlan, FitResult, Evaluation], None] | None = None) -> RunSummary:
    """A whole training run in this process, without Prefect, in the flow's order: plan, validate-and-join,
    split, train, evaluate, commit. `attempt(step, name)` runs each step that touches storage (default: once;
    `linreg.pipeline.inprocess` retries its transient errors); `then(plan, fit, evaluation)` runs after the
    commit (the report)."""
    attempt = attempt or (lambda step, name: step())
    plan = attempt(lambda: plan_run(config), "plan")
    try:
        joined = attempt(lambda: join_inputs(plan), "validate-and-join")
        split = split_rows(plan, joined)
        fit = fit_model(plan, joined, split)
        evaluation = attempt(lambda: evaluate_model(plan, joined, split, fit), "evaluate")
        summary = commit_run(plan, joined, fit, evaluation)
    except BaseException:
        discard(plan)
        raise
    if then is not None:
        then(plan, fit, evaluation)
    return summary

