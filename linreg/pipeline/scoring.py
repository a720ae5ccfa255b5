"""Score new weather data with a committed run's model: weather -> the `scores` dataset.

    <output>/scores/score_run_id=<id>/part-0.parquet: the key columns (their input types), model_run_id
    (string), and <target>_pred (float64) per target; one row per weather row.

The weather table is read batch by batch (memory: one record batch) after a value check, written to a
staging area and committed like the training outputs. Scores never go into `predictions` (that dataset
holds a training run's own rows with their actual values).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from linreg.config import check_run_id, decide_run_id
from linreg.errors import InputError, format_examples
from linreg.inputs.batches import matrix
from linreg.inputs.checks import check_values
from linreg.inputs.schema import SCHEMA_VERSION, pred_column
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


def check_features(table: Table, keys: list[str], run: TrainedRun, *, allow_extra: bool = False) -> None:
    """The weather columns must be the keys plus exactly the model's features (numeric)."""
    names = table.schema.names
    features = list(run.model.features)
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
        raise InputError(f"The {table.describe()} does not match the features of the model of run {run.run_id!r}: "
                         f"{'; '.join(problems)}. The model was trained on {', '.join(features)} "
                         f"(keys: {', '.join(keys)}).{hint}")
    for name in features:
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            raise InputError(f"The {table.describe()}: column {name!r} must be numeric, but it is {kind}.")


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
    check_features(table, keys, run, allow_extra=config.allow_extra_columns)
    features, targets = list(run.model.features), list(run.model.targets)
    if run.config.get("aggregate"):  # scoring does not aggregate: finer-grained rows would be scored one by one
        log.warning("the model of run %s was trained on weather aggregated to the keys (--aggregate %s): the weather "
                    "to score must already hold one row per key", run.run_id, run.config["aggregate"])
    check_values(table, keys, features)
    score_run_id = decide_run_id(config.score_run_id)
    schema = scores_schema([table.schema.field(k) for k in keys], targets)
    metadata = commit.file_metadata(run_id=score_run_id, trainer=str(run.config.get("trainer")), config=run.config,
                                     fingerprint=fingerprint([table]), versions=versions(), schema_version=SCHEMA_VERSION)
    metadata[b"linreg.model_run_id"] = run.run_id.encode()
    staging = commit.Staging.create(config.output or run.output, score_run_id, datasets=(SCORES,), key=SCORE_KEY)
    rows = 0
    try:
        with commit.open_writer(staging.file(SCORES), schema, metadata, write_back=staging.is_local) as writer:
            for batch in table.batches(keys + features):
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
    summary = ScoreSummary(score_run_id=score_run_id, model_run_id=run.run_id, rows=rows, keys=keys,
                           targets=targets, output=final, seconds=time.perf_counter() - start)
    log.info("scoring %s: %d row(s), %d feature(s), %d target(s) with the model of run %s in %.2f s -> %s",
             score_run_id, rows, len(features), len(targets), run.run_id, summary.seconds, final)
    return summary
