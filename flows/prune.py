"""Retention: remove old training runs from an output root (runs index entry first, then the data).

    python -m flows.prune --output output --keep-last 30 --dry-run      # list what would go
    python -m flows.prune --output output --older-than 90

Runs in progress (with a staging area) are never touched. The command works on the files directly; the
Prefect flow `prune` (same options) is what the nightly `prune` deployment runs.
Exit codes: 0 success, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import cli
from linreg.outputs import retention
from linreg import redact
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE
from tasks.prune_steps import prune_runs


def _run_name() -> str:
    return "prune-" + redact.redact(flow_run.parameters.get("output", "output"))  # no credential in the name


@flow(name="prune", flow_run_name=_run_name, validate_parameters=True)
def prune(output: str = "output", keep_last: int | None = None, older_than_days: float | None = None,
          dry_run: bool = False) -> retention.PrunePlan:
    """Remove old runs of `output`: all but the `keep_last` newest, or those older than `older_than_days`."""
    redact.install_log_redaction()
    redact.warn_inline(["output"] if redact.has_credentials(output) else [], get_run_logger())
    return prune_runs(redact.protect(output), keep_last, older_than_days, dry_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.prune", description=__doc__.split("\n\n")[0],
                                     epilog=f"Exit codes: 0 success; {EXIT_BAD_INPUT} bad input; {EXIT_FAILURE} "
                                            "any other failure.")
    parser.add_argument("--output", default="output", help="Output root holding the runs (default: output).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep-last", type=int, metavar="N", help="Keep the N most recently finished runs.")
    which.add_argument("--older-than", type=float, metavar="DAYS", dest="older_than_days",
                       help="Remove runs that finished more than DAYS days ago.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be removed; remove nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: retention.prune(args.output, keep_last=args.keep_last,
                                           older_than_days=args.older_than_days,
                                           dry_run=args.dry_run).text(dry_run=args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
