"""The output datasets and their commit: weights, metrics, predictions and the runs index, hive-partitioned
by run_id under the output root.

A run writes everything into a staging directory beside the dataset roots (`<output>/_staging/<run>/`,
never inside a dataset root, where DuckDB or Polars would read it), then commits: each dataset's
partition directory is renamed into place (`<output>/<dataset>/run_id=<id>/`), replacing the same run id
if it exists, and the runs index entry is written last. A failure before the commit leaves no trace in the
datasets; the staging directory is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from linreg.errors import InputError

DATASETS = ("weights", "metrics", "predictions", "runs")
PART_FILE = "part-0.parquet"
PREDICTION_ROW_GROUP = 256 * 1024  # rows per row group of the predictions: bounded writer memory


def local_root(output: str) -> str:
    """The output root as a local path (object storage comes with the streaming work)."""
    if output.startswith("file://"):
        return output[len("file://"):]
    if "://" in output:
        raise InputError(f"--output {output!r}: only local directories are supported as output for now.")
    return output


@dataclass(frozen=True)
class Staging:
    """Where a run's files wait for the commit: <root>/_staging/<run_id>.<token>/<dataset>/run_id=<id>/."""

    root: str
    run_id: str
    path: str

    @classmethod
    def create(cls, root: str, run_id: str) -> "Staging":
        path = os.path.join(root, "_staging", f"{run_id}.{secrets.token_hex(4)}")
        for dataset in DATASETS:
            os.makedirs(os.path.join(path, dataset, f"run_id={run_id}"))
        return cls(root=root, run_id=run_id, path=path)

    def file(self, dataset: str) -> str:
        return os.path.join(self.path, dataset, f"run_id={self.run_id}", PART_FILE)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        _remove_if_empty(os.path.join(self.root, "_staging"))

    def commit(self) -> dict[str, str]:
        """Move each staged partition into its dataset, the runs index last; return dataset -> final path."""
        final = {}
        for dataset in DATASETS:
            staged = os.path.dirname(self.file(dataset))
            target = os.path.join(self.root, dataset, f"run_id={self.run_id}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                os.rename(target, os.path.join(self.path, f"replaced-{dataset}"))
            os.rename(staged, target)
            final[dataset] = target
        self.discard()
        return final


def file_metadata(*, run_id: str, trainer: str, config: dict, fingerprint: dict, versions: dict,
                  schema_version: str) -> dict[bytes, bytes]:
    """Key-value metadata recorded in every output file."""
    items = {"schema_version": schema_version, "run_id": run_id, "trainer": trainer,
             "config": json.dumps(config, sort_keys=True), "input_fingerprint": json.dumps(fingerprint, sort_keys=True),
             "versions": json.dumps(versions, sort_keys=True)}
    return {f"linreg.{k}".encode(): v.encode() for k, v in items.items()}


def write_table(path: str, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
    """Write one small output table with the run's metadata."""
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="snappy")


def open_writer(path: str, schema: pa.Schema, metadata: dict[bytes, bytes]) -> pq.ParquetWriter:
    """A writer for a large output (predictions); float columns skip dictionary encoding."""
    schema = schema.with_metadata(metadata)
    dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
    return pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=dictionary)


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
