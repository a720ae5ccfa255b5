"""Migrate an output root written by an older schema version to the current one, in place.

    python -m flows.migrate --output output --dry-run     # list the runs and files it would rewrite
    python -m flows.migrate --output output

A run into a root that holds runs of an older version stops with exit code 2 and names this command.
It rewrites only what changed (each old run's metrics file, then its runs entry), each file replaced whole,
and is safe to rerun after an interruption (see linreg/outputs/migrate.py). Run it while no run writes to the root.
Exit codes: 0 success, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from flows import cli
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE
from linreg.outputs import migrate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.migrate", description=__doc__.split("\n\n")[0],
                                     epilog=f"Exit codes: 0 success; {EXIT_BAD_INPUT} bad input; {EXIT_FAILURE} "
                                            "any other failure.")
    parser.add_argument("--output", default="output", help="Output root to migrate (default: output).")
    parser.add_argument("--dry-run", action="store_true", help="List what would be rewritten; rewrite nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: migrate.migrate(args.output, dry_run=args.dry_run).text(dry_run=args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
