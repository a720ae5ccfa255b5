"""Retention: remove old training runs from an output root (runs index entry first, then the data).

    python -m flows.prune --output output --keep-last 30 --dry-run      # list what would go
    python -m flows.prune --output output --older-than 90

Runs in progress (with a staging area) are never touched. The command works on the files directly; the
Prefect flow `prune` (same options) is what the nightly `prune` deployment runs.
Exit codes: 0 success, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import sys
from typing import Optional

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from flows import cli
from linreg import redact
from linreg.config import build_parser, cli_option, config_from_args
from linreg.outputs import retention
from tasks.prune_steps import prune_runs


class PruneConfig(BaseModel):
    """The prune flow's parameters, as its command line takes them: exactly one of keep_last, older_than_days."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field("output", description="Output root holding the runs.")
    keep_last: Optional[int] = Field(None, description="Keep the N most recently finished runs.",
                                     json_schema_extra=cli_option(metavar="N", one_of="which"))
    older_than_days: Optional[float] = Field(None, description="Remove runs that finished more than DAYS days ago.",
                                             json_schema_extra=cli_option("--older-than", metavar="DAYS", one_of="which"))
    dry_run: bool = Field(False, description="List what would be removed; remove nothing.")


def _run_name() -> str:
    return "prune-" + redact.redact(flow_run.parameters.get("output", "output"))  # no credential in the name


@flow(name="prune", flow_run_name=_run_name, validate_parameters=True)
def prune(output: str = "output", keep_last: int | None = None, older_than_days: float | None = None,
          dry_run: bool = False) -> retention.PrunePlan:
    """Remove old runs of `output`: all but the `keep_last` newest, or those older than `older_than_days`."""
    redact.install_log_redaction()
    redact.warn_inline(["output"] if redact.has_credentials(output) else [], get_run_logger())
    return prune_runs(redact.protect(output), keep_last, older_than_days, dry_run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser("python -m flows.prune", __doc__.split("\n\n")[0], PruneConfig).parse_args(argv)

    def action() -> str:
        config = config_from_args(args, PruneConfig)
        return retention.prune(config.output, keep_last=config.keep_last, older_than_days=config.older_than_days,
                               dry_run=config.dry_run).text(dry_run=config.dry_run)

    return cli.run(action)


if __name__ == "__main__":
    sys.exit(main())
