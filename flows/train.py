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
    from linreg.launch.job import rank_main

    sys.exit(rank_main(sys.argv[1:]))
if __name__ == "__main__" and any(a.split("=")[0] in ("--nproc-per-node", "--nnodes") for a in sys.argv[1:]):
    from linreg.launch.torchrun import cli_main  # launch torchrun; Prefect is not needed (nor imported) for that

    sys.exit(cli_main(sys.argv[1:]))

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import cli
from linreg.outputs import destination
from linreg.pipeline import steps
from linreg import redact
from linreg.config import TrainConfig, build_parser, config_from_args
from tasks.dist_steps import run_job
from tasks.train_steps import (commit_run, evaluate_model, find_unchanged_run, fit_model, join_inputs, plan_run,
                               publish_artifacts, split_rows, write_report)

# Run ids chosen when the flow run is named (a deployment run passes no run_id), keyed by flow run id, so
# that the name and the outputs carry the same id.
_NEW_RUN_IDS: dict[str, str] = {}


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    config = TrainConfig.model_validate(config) if isinstance(config, dict) else config
    if config is None:
        config = TrainConfig()
    run_id = config.run_id or _NEW_RUN_IDS.setdefault(str(flow_run.id), steps.new_run_id())
    return f"train-{config.trainer}-{run_id}"


@flow(name="train", flow_run_name=_run_name, validate_parameters=True)
def train(config: TrainConfig = TrainConfig()) -> steps.RunSummary:
    """One training run: plan, validate and join, split, train, evaluate, commit; then its report and artifacts."""
    config = redact.protect_parameters(config, get_run_logger())
    run_id = config.run_id or _NEW_RUN_IDS.pop(str(flow_run.id), None) or steps.new_run_id()
    config = config.model_copy(update={"run_id": run_id})
    if config.skip_if_unchanged:
        previous = find_unchanged_run(config)
        if previous is not None:
            get_run_logger().info("run %s: inputs and configuration unchanged since run %s: not retrained",
                                  run_id, previous.run_id)
            create_markdown_artifact(key="train-summary", description=f"Run {run_id}: reused {previous.run_id}",
                                     markdown=f"# Run {run_id}: not retrained\n\nInputs and configuration equal "
                                              f"those of committed run **{previous.run_id}**; its outputs stand.\n")
            return previous
    plan = plan_run(config)
    try:
        if config.nproc_per_node is not None or config.nnodes > 1:  # ranks launched by torchrun (tasks/dist_steps.py)
            joined, fit, evaluation = run_job(plan)
        else:
            joined = join_inputs(plan)
            split = split_rows(plan, joined)
            fit = fit_model(plan, joined, split)
            evaluation = evaluate_model(plan, joined, split, fit)
        summary = commit_run(plan, joined, fit, evaluation)
    except BaseException:
        steps.discard(plan)
        raise
    paths = write_report(plan, fit)
    publish_artifacts(plan, summary, evaluation, paths)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)

    def action() -> str | int:
        config = redact.protect_config(config_from_args(args))  # the flow and Prefect see only redacted URIs
        destination.check_writable(config.output)  # a wrong --output fails at once, before Prefect or torchrun start
        if config.nproc_per_node is not None or config.nnodes > 1:  # launch the ranks with torchrun
            from linreg.launch import torchrun

            return torchrun.cli(config, sys.argv[1:] if argv is None else list(argv))
        if config.run_id is None:
            config = config.model_copy(update={"run_id": steps.new_run_id()})
        summary = train(config)
        reused = summary.run_id != config.run_id
        return (f"inputs and configuration unchanged since run {summary.run_id}: not retrained "
                "(--skip-if-unchanged)\n" if reused else "") + summary.text()

    return cli.run(action)


if __name__ == "__main__":
    sys.exit(main())
