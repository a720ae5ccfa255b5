"""The configuration's decisions made once: the run id, whether a run launches ranks, command lines from any
configuration model, and what a command line prints for a known error."""

import datetime as dt

import pytest

from linreg.config import (RUN_ID_PATTERN, TrainConfig, argv_launches_ranks, build_parser, config_from_args,
                           decide_run_id)
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError, RunConflictError, report_error
from linreg.pipeline.scoring import ScoreConfig


def test_a_given_run_id_is_kept_and_a_new_one_is_a_timestamp_and_a_suffix():
    assert decide_run_id("nightly-1") == "nightly-1"
    at = dt.datetime(2026, 11, 23, 3, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert decide_run_id(None, at=at, token="3f9a") == "20261123T021500Z-3f9a"  # UTC
    drawn = {decide_run_id(None) for _ in range(20)}
    assert all(RUN_ID_PATTERN.match(r) for r in drawn) and len(drawn) > 1
    with pytest.raises(ValueError, match="not a valid run id"):
        decide_run_id("nan")


def test_scoring_and_training_reject_a_bad_run_id_with_the_same_message():
    messages = []
    for make in (lambda: TrainConfig(run_id="true"), lambda: ScoreConfig(score_run_id="true")):
        with pytest.raises(ValueError) as error:
            make()
        messages.append(error.value.errors()[0]["msg"])
    assert messages[0] == messages[1] and "nan, inf, infinity, true, false or epoch" in messages[0]


@pytest.mark.parametrize("argv, launches", [
    ([], False), (["--nnodes", "1"], False), (["--nnodes=1", "--trainer", "nn"], False),
    (["--nproc-per-node", "1"], True), (["--nproc-per-node=2"], True), (["--nnodes", "2"], True),
    (["--nnodes", "2", "--nnodes", "1"], False),  # the last one counts, as in argparse
])
def test_the_command_line_and_the_configuration_decide_launching_ranks_by_one_rule(argv, launches):
    """Until this rule was shared, `--nnodes 1` alone launched torchrun from the command line (one rank),
    while the same configuration given to the flow trained in its process."""
    assert argv_launches_ranks(argv) is launches
    assert config_from_args(build_parser().parse_args(argv)).launches_ranks is launches


def test_flags_that_are_not_numbers_are_left_to_the_full_parser():
    assert argv_launches_ranks(["--nnodes", "two"]) is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--nnodes", "two"])


def test_any_configuration_model_gets_a_command_line():
    parser = build_parser("python -m flows.score", None, ScoreConfig)
    text = " ".join(parser.format_help().split())
    for name, field in ScoreConfig.model_fields.items():
        assert "--" + name.replace("_", "-") in text and field.description.split(".")[0] in text
    config = config_from_args(parser.parse_args(["--weather", "w.parquet", "--allow-extra-columns"]), ScoreConfig)
    assert config == ScoreConfig(weather="w.parquet", allow_extra_columns=True)
    with pytest.raises(InputError, match="--score-run-id: Value error, 'inf' is not a valid run id"):
        config_from_args(parser.parse_args(["--score-run-id", "inf"]), ScoreConfig)


def test_a_known_error_prints_one_redacted_line_and_gives_its_exit_code(capsys):
    assert report_error(InputError("bad s3://AKID:topsecret9@bucket/x")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: bad s3://") and "topsecret9" not in err
    assert report_error(RunConflictError("taken"), prefix="[rank 1] ") == RunConflictError.exit_code
    assert capsys.readouterr().err == "[rank 1] error: taken\n"
    assert report_error(RuntimeError("rank 1 failed")) == EXIT_FAILURE
