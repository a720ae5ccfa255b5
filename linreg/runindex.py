"""What the output root holds: the committed runs (the runs index, `<output>/runs`), each dataset's
partitions, and the runs still in progress (a staging area `<output>/_staging/<run_id>.<token>`).

A run is committed when its runs-index entry exists; the entry is written last by the commit and removed
first by pruning, so a reader that trusts the index never sees half a run.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from linreg import outputs
from linreg.errors import InputError


def read_runs(output: str) -> list[dict]:
    """Every committed run's index row (run_id, trainer, config JSON, input_fingerprint, row counts,
    started_at, finished_at), oldest first by finished_at. One small file per run."""
    filesystem, root, _ = outputs.resolve(output)
    rows = []
    for run_id in partitions(output, "runs"):
        path = f"{outputs.partition(root, 'runs', run_id)}/{outputs.PART_FILE}"
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            rows += pq.read_table(path, filesystem=filesystem).to_pylist()
    return sorted(rows, key=lambda r: (r["finished_at"], r["run_id"]))


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
    filesystem, root, _ = outputs.resolve(output)
    selector = pafs.FileSelector(f"{root}/{dataset}", allow_not_found=True)
    prefix = f"{key}="
    return sorted(info.base_name[len(prefix):] for info in filesystem.get_file_info(selector)
                  if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix))


def in_progress(output: str) -> set[str]:
    """Run ids with a staging area: runs (or scorings) writing right now, or interrupted ones not yet swept."""
    filesystem, root, _ = outputs.resolve(output)
    selector = pafs.FileSelector(f"{root}/{outputs.STAGING}", allow_not_found=True)
    return {info.base_name.rsplit(".", 1)[0] for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory}
