"""Train the yield model: weather + yields (Parquet) -> weights, metrics, predictions (Parquet).

Run it on the shipped sample data:

    python -m flows.train
    python -m flows.train --trainer nn --holdout-regions Ashford,Brookvale
    python -m flows.train --weather data/big/weather --yields data/big/yields --output out --run-id nightly-1

Every option: `python -m flows.train --help`. The flow `train` takes one parameter, `config`
(a `linreg.config.TrainConfig`), the same keys a Prefect deployment passes.

Credentials in a URI (`s3://KEY:SECRET@bucket/path`) never reach Prefect from this command line: the flow is
given the redacted URIs and the run reveals the real ones where it opens files (`linreg.redact`). A
deployment's parameters are stored by Prefect before the flow starts: the flow warns once, naming the
parameter, when one carries a credential (docs/credentials.md says where deployments take them from).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "RANK" in os.environ and "LOCAL_RANK" in os.environ:
    # A rank of `torchrun -m flows.train`: run this rank's share of the job, without Prefect (not imported).
    from linreg.launch.ending import exit_now
    from linreg.launch.job import rank_main

    exit_now(rank_main(sys.argv[1:]))
if __name__ == "__main__":
    from linreg.config import argv_launches_ranks

    if argv_launches_ranks(sys.argv[1:]):  # TrainConfig.launches_ranks, from the flags alone
        from linreg.launch.torchrun import cli_main  # launch torchrun; Prefect is not needed (nor imported) for that

        sys.exit(cli_main(sys.argv[1:]))
    if {"-h", "--help"} & set(sys.argv[1:]):  # answered from the configuration alone: no torch, Prefect or DuckDB
        from linreg.config import build_parser

        build_parser(description=__doc__.split("\n\n")[0]).parse_args(sys.argv[1:])
    from flows import cli

    if cli.no_server_configured():  # ad hoc, no server: the steps in process; Prefect is not imported
        from linreg.launch.ending import exit_now

        exit_now(cli.train_command(sys.argv[1:], __doc__.split("\n\n")[0], record=None))
    cli.begin_head_start(sys.argv[1:], __doc__.split("\n\n")[0])  # plan and join begin while Prefect imports
    from linreg.launch.ending import exit_now

    try:  # Prefect and the flow: this file again, as the module flows.train (seconds of imports)
        from flows.train import main
    except KeyboardInterrupt:  # Ctrl-C while they import: the run's one line and exit code
        exit_now(cli.interrupted())
    exit_now(main())  # Prefect's queues of logs and events drained first

import asyncio

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import opaque

from flows import cli
from linreg import redact
from linreg.config import TrainConfig
from linreg.pipeline import steps
from tasks.dist_steps import run_job
from tasks.run_ids import flow_run_id
from tasks.train_steps import (commit_run, discard_run, evaluate_model, find_unchanged_run, fit_model, join_inputs,
                               plan_run, publish_artifacts, publish_reuse, split_rows, write_report)


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    config = TrainConfig.model_validate(config) if isinstance(config, dict) else (config or TrainConfig())
    return f"train-{config.trainer}-{flow_run_id(config.run_id)}"


@flow(name="train", flow_run_name=_run_name, validate_parameters=True)
async def train(config: TrainConfig = TrainConfig()) -> steps.RunSummary:
    """One training run: plan, validate and join, split, train, evaluate, commit; then its report and artifacts.

    The tasks are sync and run in turn. The flow is async for one reason: Prefect's engine then leaves the flow
    run's heartbeat thread (a daemon, sleeping in 1-second steps) to end with the process, where the sync
    engine joins it, which held every run's end for 0 to 1 s (docs/benchmarks.md). Heartbeats are sent the
    same way while the run lasts. Call it as `asyncio.run(train(config))`, or as `main` does (`record`)."""
    config = redact.protect_parameters(config, get_run_logger())
    config = config.model_copy(update={"run_id": flow_run_id(config.run_id)})  # the id in the flow run's name
    if config.skip_if_unchanged:
        previous = find_unchanged_run(config)
        if previous is not None:
            return publish_reuse(config, previous)
    plan = plan_run(config)
    # opaque(x): Prefect tracks x as the task's input but does not walk into it (a split's holdout regions, a
    # fit's losses: walking 200k regions took seconds a task)
    try:
        if config.launches_ranks:  # ranks launched by torchrun (tasks/dist_steps.py)
            joined, fit, evaluation = run_job(plan)
        else:
            joined = join_inputs(plan)
            split = split_rows(plan, joined)
            fit = fit_model(plan, joined, opaque(split))
            evaluation = evaluate_model(plan, joined, opaque(split), opaque(fit))
        summary = commit_run(plan, joined, opaque(fit), opaque(evaluation))
    except BaseException:
        discard_run(plan)
        raise
    paths = write_report(plan, opaque(fit), opaque(evaluation))
    publish_artifacts(plan, summary, opaque(evaluation), paths)
    return summary


def record(config: TrainConfig) -> steps.RunSummary:
    """Run the flow `train` in a new event loop, recorded in the configured server. Not asyncio.run: its
    SIGINT handler only asks the flow's task to cancel, which a flow whose steps never await would see only at
    its end; here Ctrl-C raises KeyboardInterrupt in the running step, as in a sync flow."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(train(config))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """The command line: the flow `train` when a Prefect server is configured, else the same steps in process."""
    return cli.train_command(argv, __doc__.split("\n\n")[0], record=record)

