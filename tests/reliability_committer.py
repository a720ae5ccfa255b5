"""A tiny committer for the kill and concurrency tests (tests/outputs/test_commit.py, test_commit_cv.py): stages
four small datasets for one run id (five with --cv: a `cv` partition too, as a cross-validated run) and commits
them with linreg.outputs.commit.Staging, without importing torch.

    python -m tests.reliability_committer --output OUT --run-id ID --writer W --rows N
        [--parts P] [--cv] [--kill-at K] [--ready-dir DIR --wait-for N] [--recover-only]

Every file records `linreg.writer` (W), `linreg.rows` (the rows of its dataset's partition, all parts
together) and `linreg.datasets` (its run's datasets), so a test can check that a visible partition is whole
and from one writer, and what a listed run must hold and must not (`declared`). --kill-at K: the
process SIGKILLs itself before the K-th file operation of the commit (commit.before_file_operation).
--ready-dir/--wait-for: after staging, touch DIR/W and wait until N writers are ready (a race start line).
Exit codes: 0 committed, 3 RunConflictError (its message on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time



class _NoPandas:
    """pyarrow imports pandas (0.3 s) to check what it is given; this short-lived script needs none."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by the committer")


if __name__ == "__main__":  # only in the subprocess: a test importing this module may still need pandas
    sys.meta_path.insert(0, _NoPandas)

import pyarrow as pa  # noqa: E402

from linreg.outputs import commit  # noqa: E402
from linreg.errors import RunConflictError  # noqa: E402


def kill_at(k: int) -> None:
    """Make the k-th file operation of a commit (counted from 1) a SIGKILL of this process."""
    count = {"n": 0}

    def maybe_kill():
        count["n"] += 1
        if count["n"] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    commit.before_file_operation = maybe_kill
    return count


DATASETS_KEY = b"linreg.datasets"


def declared(metadata: dict | None) -> tuple[str, ...]:
    """The datasets a run's file says its run wrote (the four when a file does not say)."""
    value = (metadata or {}).get(DATASETS_KEY)
    return tuple(value.decode().split(",")) if value else commit.DATASETS


def tables(run_id: str, writer: str, rows: int, cv: bool = False) -> dict[str, pa.Table]:
    """Small stand-ins for weights, metrics, predictions and runs (and with cv a `cv` table of 5 rows); every
    row names its run and writer."""
    n = {"weights": 3, "metrics": 4, "predictions": rows, "runs": 1}
    found = {d: pa.table({"run": [run_id] * k, "writer": [writer] * k, "i": list(range(k)),
                          "value": [float(i) * 0.5 for i in range(k)]}) for d, k in n.items()}
    if cv:
        found[commit.CV] = pa.table({"run": [run_id] * 5, "writer": [writer] * 5, "i": list(range(5)),
                                     "value": [0.25 * i for i in range(5)]})
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--writer", required=True)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--parts", type=int, default=1, help="predictions written as this many part files")
    parser.add_argument("--cv", action="store_true", help="a cross-validated run: a cv partition too")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--ready-dir")
    parser.add_argument("--wait-for", type=int, default=0)
    parser.add_argument("--recover-only", action="store_true")
    parser.add_argument("--count-ops", action="store_true", help="print the number of file operations")
    args = parser.parse_args(argv)

    counter = kill_at(args.kill_at) if args.kill_at or args.count_ops else None
    if args.recover_only:
        commit.recover(args.output)
        return 0
    saved = commit.before_file_operation
    commit.before_file_operation = lambda: None  # kill points count the commit's operations only
    commit.recover(args.output)
    datasets = commit.DATASETS_WITH_CV if args.cv else commit.DATASETS
    staging = commit.Staging.create(args.output, args.run_id, datasets=datasets)
    try:
        for dataset, table in tables(args.run_id, args.writer, args.rows, args.cv).items():
            metadata = {b"linreg.writer": args.writer.encode(), b"linreg.rows": str(table.num_rows).encode(),
                        DATASETS_KEY: ",".join(datasets).encode()}
            parts = args.parts if dataset == "predictions" else 1
            bounds = [table.num_rows * p // parts for p in range(parts + 1)]
            for part in range(parts):
                path = staging.file(dataset, part)
                commit.write_table(path, table.slice(bounds[part], bounds[part + 1] - bounds[part]), metadata)
        if args.ready_dir:
            open(os.path.join(args.ready_dir, args.writer), "w").close()
            deadline = time.monotonic() + 60
            while len(os.listdir(args.ready_dir)) < args.wait_for and time.monotonic() < deadline:
                time.sleep(0.01)
        commit.before_file_operation = saved
        staging.commit()
    except RunConflictError as exc:
        staging.discard()
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except BaseException:
        staging.discard()
        raise
    if args.count_ops:
        print(counter["n"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
