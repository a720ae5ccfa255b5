"""Score new weather data with a trained model: weather (Parquet) -> the `scores` dataset (Parquet).

    python -m flows.score --weather new/weather.parquet                      # newest run in ./output
    python -m flows.score --model output/weights/run_id=nightly-1 --weather new/ --output scored

The flow `score` takes one parameter, `config` (a `linreg.pipeline.scoring.ScoreConfig`), as the `score`
deployment does. Exit codes as for training: 0 success, 2 bad input, 1 anything else. Credentials in a URI
are handled as by `flows.train`: the flow sees only redacted URIs (`linreg.redact`).
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows import cli
from linreg.pipeline import steps
from linreg import redact
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError
from linreg.pipeline.scoring import ScoreConfig, ScoreSummary
from tasks.score_steps import score_weather

_NEW_RUN_IDS: dict[str, str] = {}


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    config = ScoreConfig.model_validate(config) if isinstance(config, dict) else (config or ScoreConfig())
    return "score-" + (config.score_run_id or _NEW_RUN_IDS.setdefault(str(flow_run.id), steps.new_run_id()))


@flow(name="score", flow_run_name=_run_name, validate_parameters=True)
def score(config: ScoreConfig = ScoreConfig()) -> ScoreSummary:
    """Apply a committed run's model to a weather table and commit the scores."""
    config = redact.protect_parameters(config, get_run_logger())
    score_run_id = config.score_run_id or _NEW_RUN_IDS.pop(str(flow_run.id), None) or steps.new_run_id()
    return score_weather(config.model_copy(update={"score_run_id": score_run_id}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.score", description=__doc__.split("\n\n")[0],
                                     epilog=f"Exit codes: 0 success; {EXIT_BAD_INPUT} bad input; {EXIT_FAILURE} "
                                            "any other failure.")
    for name, field in ScoreConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=field.description)
        else:
            shown = f" (default: {field.default})" if field.default is not None else ""
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=field.description + shown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def action() -> str:
        try:
            config = ScoreConfig(**vars(args))
        except ValidationError as exc:
            raise InputError("Invalid configuration: " + "; ".join(
                f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()) + ".") from None
        if config.score_run_id is None:
            config = config.model_copy(update={"score_run_id": steps.new_run_id()})
        return score(redact.protect_config(config)).text()  # the flow and Prefect see only redacted URIs

    return cli.run(action)


if __name__ == "__main__":
    sys.exit(main())
