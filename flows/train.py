"""Train the yield model: weather + yields (Parquet) -> weights, metrics, predictions (Parquet).

Run it on the shipped sample data:

    python -m flows.train
    python -m flows.train --trainer nn --holdout-regions Ashford,Brookvale
    python -m flows.train --weather data/big/weather --yields data/big/yields --output out --run-id nightly-1

Every option: `python -m flows.train --help`. The flow `train` takes one parameter, `config`
(a `linreg.config.TrainConfig`), the same keys a Prefect deployment passes.
"""

from __future__ import annotations

import sys
import traceback

from prefect import flow
from prefect.runtime import flow_run

from linreg import pipeline
from linreg.config import TrainConfig, build_parser, config_from_args
from linreg.errors import EXIT_FAILURE, EXIT_OK, InputError
from tasks.train_steps import commit_run, evaluate_model, fit_model, join_inputs, plan_run, split_rows


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    config = TrainConfig.model_validate(config) if isinstance(config, dict) else config
    if config is None:
        return "train"
    return f"train-{config.trainer}-{config.run_id or 'new'}"


@flow(name="train", flow_run_name=_run_name, validate_parameters=True)
def train(config: TrainConfig = TrainConfig()) -> pipeline.RunSummary:
    """One training run: plan, validate and join, split, train, evaluate, commit."""
    plan = plan_run(config)
    try:
        joined = join_inputs(plan)
        split = split_rows(plan, joined)
        fit = fit_model(plan, joined, split)
        evaluation = evaluate_model(plan, joined, split, fit)
        return commit_run(plan, joined, fit, evaluation)
    except BaseException:
        pipeline.discard(plan)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if config.run_id is None:
            config = config.model_copy(update={"run_id": pipeline.new_run_id()})
        summary = train(config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        print("unexpected failure (not an input problem):\n" + traceback.format_exc(), file=sys.stderr)
        return EXIT_FAILURE
    print(summary.text())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
