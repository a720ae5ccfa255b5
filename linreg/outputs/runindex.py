"""What the output root holds: the committed runs (the runs index, `<output>/runs`), each dataset's
partitions, and the runs still in progress (a staging area `<output>/_staging/<run_id>.<token>`).

A run is committed when its runs-index entry exists; the entry is written last by the commit and removed
first by pruning, so a reader that trusts the index never sees half a run. An entry that cannot be read
(empty, truncated, garbage, or without the index's columns) is skipped with a warning: that run counts as
not committed (the next training run's `commit.recover` removes a torn entry), and no reader crashes on it.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.fs as pafs

from linreg.errors import InputError
from linreg.outputs import commit

log = logging.getLogger(__name__)

# What every reader of the index uses; run_id comes from the partition folder (files may or may not hold it).
COLUMNS = ("trainer", "config", "input_fingerprint", "weather_rows", "yields_rows", "joined_rows", "train_rows",
           "holdout_rows", "started_at", "finished_at")


def read_runs(output: str) -> list[dict]:
    """Every committed run's index row (run_id, trainer, config JSON, input_fingerprint, row counts,
    started_at, finished_at), oldest first by finished_at. One small file per run; unreadable ones skipped."""
    filesystem, root, _ = commit.resolve(output)
    rows = []
    for run_id in partitions(output, "runs"):
        path = commit.part_path(root, "runs", run_id)
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            row = entry_row(filesystem, path, run_id)
            if row is not None:
                rows.append(row)
    return sorted(rows, key=lambda r: (r["finished_at"], r["run_id"]))


def entry_row(filesystem: pafs.FileSystem, path: str, run_id: str) -> dict | None:
    """The row of one runs-index entry, run_id taken from its folder; None, with a warning naming the file,
    when the entry is not a whole Parquet file with one row and the index's columns."""
    try:
        table = commit.read_entry(filesystem, path)
    except FileNotFoundError:
        return None  # pruned or replaced while listed
    except (OSError, pa.ArrowException) as exc:
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        problem = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("skipped the runs-index entry %s: it is not a readable Parquet file (%s); run %r counts as not "
                    "committed (the next training run removes the entry)", path, problem, run_id)
        return None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing or table.num_rows != 1 or table.column("finished_at")[0].as_py() is None:
        why = (f"no column {', '.join(missing)}" if missing else
               f"{table.num_rows} rows instead of 1" if table.num_rows != 1 else "no finished_at")
        log.warning("skipped the runs-index entry %s: %s; run %r counts as not committed", path, why, run_id)
        return None
    try:
        row = {name: table.column(name)[0].as_py() for name in table.column_names if name != "run_id"}
    except (ValueError, OverflowError, pa.ArrowException) as exc:  # a damaged value (a timestamp out of range)
        log.warning("skipped the runs-index entry %s: a value cannot be read (%s); run %r counts as not committed",
                    path, exc, run_id)
        return None
    return {"run_id": run_id, **row}


def run_row(output: str, run_id: str) -> dict:
    """The runs-index row of one committed run; InputError when the run is not committed."""
    for row in read_runs(output):
        if row["run_id"] == run_id:
            return row
    raise InputError(f"Run {run_id!r} is not a committed run of {output!r} (it has no entry in "
                     f"{output}/runs). Committed runs: {', '.join(r['run_id'] for r in read_runs(output)) or 'none'}.")


def newest_run(output: str) -> dict:
    """The most recently finished committed run; InputError when there is none."""
    rows = read_runs(output)
    if not rows:
        raise InputError(f"The output {output!r} holds no committed run (no entries in {output}/runs): "
                         "train one first (python -m flows.train --output ...).")
    return rows[-1]


def run_config(row: dict) -> dict:
    return json.loads(row["config"])


def partitions(output: str, dataset: str, key: str = "run_id") -> list[str]:
    """The run ids that have a `<key>=<id>` partition in `dataset`, sorted."""
    filesystem, root, _ = commit.resolve(output)
    selector = pafs.FileSelector(f"{root}/{dataset}", allow_not_found=True)
    prefix = f"{key}="
    return sorted(info.base_name[len(prefix):] for info in filesystem.get_file_info(selector)
                  if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix))


def in_progress(output: str) -> set[str]:
    """Run ids with a staging area: runs (or scorings) writing right now, or interrupted ones not yet swept."""
    filesystem, root, _ = commit.resolve(output)
    selector = pafs.FileSelector(f"{root}/{commit.STAGING}", allow_not_found=True)
    return {info.base_name.rsplit(".", 1)[0] for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory}
