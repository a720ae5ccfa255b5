"""Skip retraining when nothing changed (TrainConfig.skip_if_unchanged).

A committed run is reused when its input fingerprint (every input file's path, size and modification
time, and each table's schema: `linreg.inputs.tables.fingerprint`, from listings and Parquet footers, no data read)
and its configuration (the fields that can change the result: `linreg.config.result_fields`) equal this run's, and all
its partitions are present. Tensors and tables are never hashed: equal fingerprints mean equal bytes as
far as the filesystem tells, which is what makes the reuse trustworthy and cheap.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from linreg import redact
from linreg.config import NON_RESULT_FIELDS, TrainConfig, result_fields
from linreg.inputs.join import JoinResult
from linreg.inputs.tables import fingerprint, open_table
from linreg.outputs import commit, runindex
from linreg.outputs.migrate import check_schema_version
from linreg.pipeline.metrics import region_mse, total_mse
from linreg.pipeline.steps import RunSummary


def comparable(config: dict) -> dict | None:
    """The configuration as it affects the results (defaults filled in); None if it no longer parses."""
    try:
        # redacted: a URI's credentials do not change what a run computes (linreg/redact.py)
        full = TrainConfig.model_validate({k: redact.redact_config(v) for k, v in config.items()
                                           if k not in NON_RESULT_FIELDS})
    except ValidationError:
        return None  # written by an older version with fields that no longer exist: never equal
    return result_fields(full.model_dump(mode="json"))


def find_unchanged_run(config: TrainConfig) -> dict | None:
    """The newest complete committed run of config.output with the same inputs and configuration, or None."""
    check_schema_version(config.output)  # runs of an older layout are migrated first, never reused as they are
    weather, yields = open_table(config.weather, "weather"), open_table(config.yields, "yields")
    digest = fingerprint([weather, yields])["sha256"]
    wanted = comparable(config.model_dump(mode="json"))
    for row in reversed(runindex.read_runs(config.output)):
        if row["input_fingerprint"] == digest and comparable(json.loads(row["config"])) == wanted \
                and _complete(config.output, row["run_id"], _datasets(json.loads(row["config"]))):
            return row
    return None


def _datasets(config: dict) -> tuple:
    """The datasets a committed run with configuration `config` wrote: `cv` too when it cross-validated."""
    return commit.DATASETS_WITH_CV if config.get("cv_folds") else commit.DATASETS


def _complete(output: str, run_id: str, datasets: tuple = commit.DATASETS) -> bool:
    filesystem, root, _ = commit.resolve(output)
    return all(filesystem.get_file_info(f"{commit.partition(root, d, run_id)}/{commit.PART_FILE}").type
               == pafs.FileType.File for d in datasets)


def committed_summary(output: str, row: dict) -> RunSummary:
    """The RunSummary of a committed run, rebuilt from its runs-index row, metrics and weights."""
    filesystem, root, is_local = commit.resolve(output)
    run_id = row["run_id"]

    def read(dataset):
        return pq.read_table(f"{commit.partition(root, dataset, run_id)}/{commit.PART_FILE}",
                             filesystem=filesystem).to_pylist()

    metric_rows, weight_rows = read("metrics"), read("weights")
    mse, mean_mse = total_mse(metric_rows)
    regions = {split: len(found) for split, found in region_mse(metric_rows).items()}
    weights: dict[str, dict[str, float]] = {}
    for w in weight_rows:
        weights.setdefault(w["target"], {})[w["term"]] = w["weight"]
    return RunSummary(run_id=run_id, trainer=row["trainer"],
                      output={d: commit.location(output, commit.partition(root, d, run_id), is_local)
                              for d in _datasets(json.loads(row["config"]))},
                      joined=JoinResult(path="", weather_rows=row["weather_rows"], yields_rows=row["yields_rows"],
                                        joined_rows=row["joined_rows"]),
                      rows={"train": row["train_rows"], "holdout": row["holdout_rows"]}, regions=regions, mse=mse,
                      weights=weights, mean_mse=mean_mse)
