"""Score new weather data with a trained model: weather (Parquet) -> the `scores` dataset (Parquet).

    python -m flows.score --weather new/weather.parquet                      # newest run in ./output
    python -m flows.score --model output/weights/run_id=nightly-1 --weather new/ --output scored

The flow `score` takes one parameter, `config` (a `linreg.pipeline.scoring.ScoreConfig`), as the `score`
deployment does. Exit codes as for training: 0 success, 2 bad input, 1 anything else. Credentials in a URI
are handled as by `flows.train`: the flow sees only redacted URIs (`linreg.redact`).
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import cli
from linreg import redact
from linreg.config import build_parser, config_from_args, decide_run_id
from linreg.pipeline import scoring
from linreg.pipeline.scoring import ScoreConfig, ScoreSummary
from linreg.retry import with_retries
from tasks.run_ids import flow_run_id
from tasks.score_steps import score_weather


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    config = ScoreConfig.model_validate(config) if isinstance(config, dict) else (config or ScoreConfig())
    return "score-" + flow_run_id(config.score_run_id)


@flow(name="score", flow_run_name=_run_name, validate_parameters=True)
def score(config: ScoreConfig = ScoreConfig()) -> ScoreSummary:
    """Apply a committed run's model to a weather table and commit the scores."""
    config = redact.protect_parameters(config, get_run_logger())
    return score_weather(config.model_copy(update={"score_run_id": flow_run_id(config.score_run_id)}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser("python -m flows.score", __doc__.split("\n\n")[0], ScoreConfig).parse_args(argv)

    def action() -> str:
        config = config_from_args(args, ScoreConfig)
        config = redact.protect_config(config.model_copy(update={"score_run_id": decide_run_id(config.score_run_id)}))
        if cli.prefect_server() is None:  # ad hoc, no server: score in process, not under a temporary server
            print(cli.NOT_RECORDED, file=sys.stderr)
            return with_retries(lambda: scoring.score(config), "score").text()
        return score(config).text()  # the flow and Prefect see only redacted URIs

    return cli.run(action)


if __name__ == "__main__":
    sys.exit(main())
