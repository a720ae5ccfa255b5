"""The kill tests' committer (tests/reliability_committer.py) for runs with and without cross-validation:
the same four small datasets, plus a `cv` partition with --cv, every file recording the datasets of its run
(`linreg.datasets`), so that a check knows what a listed run must hold and what it must not.

    python -m tests.outputs.cv_committer --output OUT --run-id ID --writer W [--cv] [--kill-at K] [--count-ops]

--kill-at K: SIGKILL before the K-th file operation of the commit; --count-ops: print their number.
Exit codes: 0 committed, 3 RunConflictError, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from tests import reliability_committer as base

if __name__ == "__main__":  # only in the subprocess: pyarrow need not import pandas here
    sys.meta_path.insert(0, base._NoPandas)

import pyarrow as pa  # noqa: E402

from linreg.errors import RunConflictError  # noqa: E402
from linreg.outputs import commit  # noqa: E402

DATASETS_KEY = b"linreg.datasets"


def declared(metadata: dict | None) -> tuple[str, ...]:
    """The datasets a run's file says its run wrote (files of tests/reliability_committer.py: the four)."""
    value = (metadata or {}).get(DATASETS_KEY)
    return tuple(value.decode().split(",")) if value else commit.DATASETS


def tables(run_id: str, writer: str, rows: int, cv: bool) -> dict[str, pa.Table]:
    """reliability_committer's tables, and with cv a `cv` table of the same kind (5 rows)."""
    found = base.tables(run_id, writer, rows)
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
    parser.add_argument("--cv", action="store_true", help="a cross-validated run: a cv partition too")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--count-ops", action="store_true", help="print the number of file operations")
    args = parser.parse_args(argv)

    counter = base.kill_at(args.kill_at) if args.kill_at or args.count_ops else None
    saved = commit.before_file_operation
    commit.before_file_operation = lambda: None  # kill points count the commit's operations only
    commit.recover(args.output)
    datasets = commit.DATASETS_WITH_CV if args.cv else commit.DATASETS
    staging = commit.Staging.create(args.output, args.run_id, datasets=datasets)
    try:
        for dataset, table in tables(args.run_id, args.writer, args.rows, args.cv).items():
            metadata = {b"linreg.writer": args.writer.encode(), b"linreg.rows": str(table.num_rows).encode(),
                        DATASETS_KEY: ",".join(datasets).encode()}
            commit.write_table(staging.file(dataset), table, metadata)
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
