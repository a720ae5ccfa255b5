"""Score new weather data with a committed run's model: weather -> the `scores` dataset.

    <output>/scores/score_run_id=<id>/part-0.parquet: the key columns (their input types), model_run_id
    (string), and <target>_pred (float64) per target; one row per weather row (per key when the
    model's run aggregated its weather with --aggregate: scoring aggregates the same way).

The weather table is read batch by batch (memory: one record batch) after a value check, its features
computed by the same SQL as the training join's (`linreg.features`), written to a
staging area and committed like the training outputs. Scores never go into `predictions` (that dataset
holds a training run's own rows with their actual values).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from linreg.config import check_run_id, decide_run_id
from linreg.errors import InputError, format_examples
from linreg.inputs.batches import matrix
from linreg.features.spec import parse_features
from linreg.inputs.derive import domain_error, feature_sql, weather_sql
from linreg.inputs.checks import MAX_EXAMPLES, bad_mask, check_values, example_keys
from linreg.inputs.schema import SCHEMA_VERSION, Columns, pred_column
from linreg.inputs.tables import Table, fingerprint, open_table
from linreg.models.estimator import TrainedRun, load_run
from linreg.outputs import commit, destination
from linreg.outputs.migrate import check_schema_version
from linreg.pipeline.steps import versions

log = logging.getLogger(__name__)

SCORES = "scores"
SCORE_KEY = "score_run_id"


class ScoreConfig(BaseModel):
    """What a scoring run needs: which model, which weather, where the scores go."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("output", description="A training output root (its newest committed run) or "
                       "OUTPUT/weights/run_id=ID (that run).")
    weather: str = Field("data/sample/weather.parquet", description="Weather table to score: a Parquet file, a "
                         "directory of files or a hive-partitioned dataset, local or a URI.")
    output: Optional[str] = Field(None, description="Root where the scores dataset is written (default: the "
                                  "model's output root).")
    score_run_id: Optional[str] = Field(None, description="Id of this scoring run (default: UTC timestamp plus "
                                        "a random suffix).")
    allow_extra_columns: bool = Field(False, description="Ignore weather columns the model does not use "
                                      "(by default an unknown column is an error: it may be a renamed feature).")

    @field_validator("score_run_id")
    @classmethod
    def _run_id_text(cls, run_id: str | None) -> str | None:
        return check_run_id(run_id)


@dataclass
class ScoreSummary:
    score_run_id: str
    model_run_id: str
    rows: int
    keys: list[str]
    targets: list[str]
    output: str
    seconds: float

    def text(self) -> str:
        return (f"scoring {self.score_run_id} committed: {self.rows} row(s) scored with the model of run "
                f"{self.model_run_id} ({', '.join(self.targets)}) in {self.seconds:.2f} s\n  scores: {self.output}")


def score_keys(run: TrainedRun, table: Table) -> list[str]:
    """The run's key columns: as written in its predictions (keys precede 'split'), else its configuration."""
    filesystem, root, _ = commit.resolve(run.output)
    path = f"{commit.partition(root, 'predictions', run.run_id)}/{commit.PART_FILE}"
    try:
        names = pq.read_schema(path, filesystem=filesystem).names
        return names[:names.index("split")]
    except (OSError, ValueError, pa.ArrowInvalid):
        keys = run.config.get("join_keys")
        return keys or (["region", "year"] if "year" in table.schema.names else ["region"])


def scoring_columns(run: TrainedRun, keys: list[str], names: list[str]) -> Columns:
    """The run's features as it computed them: its `--features` expressions and `--aggregate`, parsed again
    as training did over the weather columns `names` (their terms are the model's)."""
    aggregate = run.config.get("aggregate")
    spec = parse_features(list(run.config.get("features") or run.model.features), aggregate, names)
    if list(spec.terms) != list(run.model.features):  # a model written by hand: its terms are the expressions
        spec = parse_features(list(run.model.features), aggregate, names)
    return Columns(keys=keys, features=spec.terms, targets=list(run.model.targets), spec=spec)


def check_features(table: Table, keys: list[str], run: TrainedRun, *, allow_extra: bool = False) -> Columns:
    """The weather columns must be the keys plus exactly the columns the model's features use (numeric);
    returns the run's columns (`scoring_columns`)."""
    names = table.schema.names
    columns = scoring_columns(run, keys, names)
    features = columns.weather_columns
    missing_keys = [k for k in keys if k not in names]
    if missing_keys:
        raise InputError(f"The {table.describe()} has no key column {format_examples(missing_keys)}, which the model "
                         f"of run {run.run_id!r} was trained with (keys: {', '.join(keys)}). Its columns are: "
                         f"{', '.join(names)}.")
    missing = [f for f in features if f not in names]
    extra = [n for n in names if n not in features and n not in keys] if not allow_extra else []
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {format_examples(missing)}")
        if extra:
            problems.append(f"not model features: {format_examples(extra)}")
        hint = (" A missing and an unknown column together usually mean a renamed column: rename it back."
                if missing and extra else "")
        hint += " Drop the unknown columns, or pass --allow-extra-columns to ignore them." if extra and not missing else ""
        used = f" (features: {', '.join(columns.features)})" if features != columns.features else ""
        raise InputError(f"The {table.describe()} does not match the features of the model of run {run.run_id!r}: "
                         f"{'; '.join(problems)}. The model was trained on {', '.join(features)}{used} "
                         f"(keys: {', '.join(keys)}).{hint}")
    for name in features + [k for k in keys if k in columns.spec.used_names()]:
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            raise InputError(f"The {table.describe()}: column {name!r} must be numeric, but it is {kind}.")
    return columns


def feature_batches(table: Table, columns: Columns, work_dir: str) -> Iterator[pa.RecordBatch]:
    """The weather rows to score with their keys and feature columns (named by term): read as they are when
    the features are plain columns, else computed by DuckDB with the training join's SQL (aggregated to the
    keys as in training, `linreg.inputs.derive`)."""
    if columns.spec.plain:
        yield from table.batches(list(dict.fromkeys(columns.keys + columns.features)))
        return
    from linreg.inputs.join import connect, register
    from linreg.inputs.sql import MIN_DUCKDB_MEMORY, quote

    con = connect(work_dir, 4 * MIN_DUCKDB_MEMORY)
    try:
        register(con, "weather_rows", table)
        select = ", ".join([f"w.{quote(k)}" for k in columns.keys] + feature_sql(columns, "w"))
        yield from con.sql(f"SELECT {select} FROM ({weather_sql(columns, 'weather_rows')}) w").to_arrow_reader(65536)
    finally:
        con.close()


def _check_batch(table: Table, columns: Columns, batch: pa.RecordBatch) -> None:
    """A feature that is not finite in a row of `batch` (an expression outside its domain: the inputs were
    checked): an InputError naming the feature and the rows' keys."""
    for term in columns.features:
        mask = bad_mask(batch.column(term), is_key=False)
        if mask is not None:
            examples = example_keys(batch.filter(mask), columns.keys, MAX_EXAMPLES)
            raise domain_error(columns.spec, term, format_examples(examples), table.describe())


def scores_schema(key_fields: list[pa.Field], targets: list[str]) -> pa.Schema:
    return pa.schema(list(key_fields) + [pa.field("model_run_id", pa.string())]
                     + [pa.field(pred_column(t), pa.float64()) for t in targets])


def score(config: ScoreConfig) -> ScoreSummary:
    """Validate the weather table against the model, predict it batch by batch, and commit the scores."""
    start = time.perf_counter()
    run = load_run(config.model)
    destination.check_writable(config.output or run.output)
    check_schema_version(config.output or run.output)  # a root with runs of an older layout: migrate it first
    table = open_table(config.weather, "weather")
    keys = score_keys(run, table)
    columns = check_features(table, keys, run, allow_extra=config.allow_extra_columns)
    features, targets = columns.features, columns.targets
    check_values(table, keys, columns.weather_columns)
    score_run_id = decide_run_id(config.score_run_id)
    schema = scores_schema([table.schema.field(k) for k in keys], targets)
    metadata = commit.file_metadata(run_id=score_run_id, trainer=str(run.config.get("trainer")), config=run.config,
                                     fingerprint=fingerprint([table]), versions=versions(), schema_version=SCHEMA_VERSION)
    metadata[b"linreg.model_run_id"] = run.run_id.encode()
    staging = commit.Staging.create(config.output or run.output, score_run_id, datasets=(SCORES,), key=SCORE_KEY)
    rows = 0
    work_dir = tempfile.mkdtemp(prefix=f"linreg-score-{score_run_id}-")
    try:
        with commit.open_writer(staging.file(SCORES), schema, metadata, write_back=staging.is_local) as writer:
            for batch in feature_batches(table, columns, work_dir):
                if not columns.spec.plain:
                    _check_batch(table, columns, batch)
                pred = run.model.predict(matrix(batch, features, np.float64))
                out = [batch.column(k) for k in keys] + [pa.array([run.run_id] * batch.num_rows, pa.string())]
                out += [pa.array(pred[:, j]) for j in range(len(targets))]
                writer.write_table(pa.Table.from_arrays(out, schema=schema.remove_metadata()),
                                   row_group_size=commit.PREDICTION_ROW_GROUP)
                rows += batch.num_rows
        final = staging.commit()[SCORES]
    except BaseException:
        staging.discard()
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    summary = ScoreSummary(score_run_id=score_run_id, model_run_id=run.run_id, rows=rows, keys=keys,
                           targets=targets, output=final, seconds=time.perf_counter() - start)
    log.info("scoring %s: %d row(s), %d feature(s), %d target(s) with the model of run %s in %.2f s -> %s",
             score_run_id, rows, len(features), len(targets), run.run_id, summary.seconds, final)
    return summary
