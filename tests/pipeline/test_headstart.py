"""The head start (linreg.pipeline.headstart): plan and join begun on a thread, taken once by the steps that
would run them, its errors raised by them, its log lines held back until then, and discarded when never taken."""

import logging
import os
import threading

import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.pipeline import headstart, steps
from tests.helpers import linear_tables, write


@pytest.fixture(autouse=True)
def no_head_start_left():
    yield
    headstart.abandon()
    assert headstart.current() is None


def _staged(out) -> list[str]:
    """The staging areas left under the output root `out`."""
    return os.listdir(out / "_staging") if (out / "_staging").exists() else []


def _config(tmp_path, **kw):
    w, y, _, _ = linear_tables(tmp_path)
    return make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="ahead", **kw)


def test_the_taken_plan_and_join_are_the_ones_begun_ahead_and_equal_a_plain_join(tmp_path):
    config = _config(tmp_path)
    start = headstart.begin(config)
    plan, ahead = headstart.plan_run(config)
    assert ahead and plan is start.plan
    joined, ahead = headstart.join_inputs(plan)
    assert ahead and joined is start.joined
    plain = steps.join_inputs(steps.plan_run(config.model_copy(update={"run_id": "plain"})))
    assert (joined.weather_rows, joined.yields_rows, joined.joined_rows) == \
        (plain.weather_rows, plain.yields_rows, plain.joined_rows)
    # taken once: asking again plans and joins anew
    again, ahead = headstart.plan_run(config.model_copy(update={"run_id": "again"}))
    assert not ahead and again is not plan
    headstart.abandon()
    assert os.path.isdir(plan.work_dir)  # taken: the run owns it (its flow discards or commits it)
    steps.discard(plan)
    steps.discard(again)


def test_another_configuration_does_not_take_it_and_an_untaken_head_start_is_discarded(tmp_path):
    config = _config(tmp_path)
    start = headstart.begin(config)
    other, ahead = headstart.plan_run(config.model_copy(update={"run_id": "other"}))
    assert not ahead and other.run_id == "other"
    steps.discard(other)
    start.done.wait(120)
    staging = start.plan.staging
    assert os.path.isdir(start.plan.work_dir) and os.path.isdir(staging.local_dir)
    headstart.abandon()  # the flow never took it
    assert not os.path.exists(start.plan.work_dir) and not os.path.exists(staging.local_dir)
    assert not _staged(tmp_path / "out")


def test_an_input_error_begun_ahead_is_raised_by_the_step_that_takes_it(tmp_path):
    w = write(tmp_path / "w.parquet", region=["a", "b"], year=[1, 1], temp=[1.0, float("nan")],
              rainfall=[1.0, 2.0], humidity=[1.0, 2.0])
    y = write(tmp_path / "y.parquet", region=["a", "b"], year=[1, 1], apples=[1.0, 2.0], oranges=[1.0, 2.0])
    config = make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="bad")
    headstart.begin(config)
    plan, ahead = headstart.plan_run(config)  # the plan is fine: the bad value is found by the join
    assert ahead
    with pytest.raises(InputError, match="column 'temp' has 1 null, NaN or infinite"):
        headstart.join_inputs(plan)
    headstart.discard(plan)
    assert not any((tmp_path / "out").rglob("*.parquet"))
    assert not _staged(tmp_path / "out")


def test_a_transient_error_begun_ahead_is_raised_once_then_the_step_runs_again(tmp_path, monkeypatch):
    config = _config(tmp_path)
    real = steps.join_inputs
    calls = []

    def flaky(plan, cluster=None):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset by peer")
        return real(plan, cluster)

    monkeypatch.setattr(steps, "join_inputs", flaky)
    headstart.begin(config)
    plan, _ = headstart.plan_run(config)
    with pytest.raises(ConnectionResetError):
        headstart.join_inputs(plan)
    joined, ahead = headstart.join_inputs(plan)  # the task's retry: joined now, on the caller's thread
    assert not ahead and joined.joined_rows == 200
    assert calls == ["head-start", threading.current_thread().name]
    steps.discard(plan)


def test_log_lines_written_ahead_are_handled_once_by_the_step_that_takes_the_result(tmp_path, monkeypatch):
    """Prefect adds its console and API handlers while it imports: a record made ahead reaches no handler,
    whenever it was added, until the taking step handles it, in that step's thread and context."""
    config = _config(tmp_path)
    real = steps.join_inputs
    added = threading.Event()
    seen = []

    class Capture(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), threading.current_thread().name, record.created))

    handler = Capture()

    def join(plan, cluster=None):
        logging.getLogger("linreg.inputs.join").warning("before the handler is added")
        added.wait(30)
        logging.getLogger("linreg.inputs.join").warning("after the handler is added")
        return real(plan, cluster)

    monkeypatch.setattr(steps, "join_inputs", join)
    start = headstart.begin(config)
    logging.getLogger("linreg").addHandler(handler)  # as Prefect's import does, while the head start runs
    try:
        added.set()
        start.done.wait(120)
        logging.getLogger("linreg.other").warning("from the main thread")
        assert [m for m, _, _ in seen] == ["from the main thread"]  # nothing of the head start's yet
        plan, _ = headstart.plan_run(config)
        headstart.join_inputs(plan)
        main = threading.current_thread().name
        assert [(m, t) for m, t, _ in seen] == [("from the main thread", main), ("before the handler is added", main),
                                               ("after the handler is added", main)]
        assert seen[1][2] < seen[0][2]  # with the time it was written
        logging.getLogger("linreg.inputs.join").warning("later")  # not held back any more
        assert seen[-1][0] == "later"
    finally:
        logging.getLogger("linreg").removeHandler(handler)
    steps.discard(plan)
