"""linreg.retry: transient storage errors are retried on the one schedule (2, 4, 8 s with jitter); input
errors and permanent OS errors are not; the last transient error surfaces unchanged."""

import errno

import pytest

from linreg.errors import InputError
from linreg.retry import DELAYS_SECONDS, JITTER, with_retries


def flaky(failures: list[BaseException]):
    calls = []

    def step():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "done"
    return step, calls


def test_transient_errors_are_retried_after_the_policy_delays():
    slept = []
    step, calls = flaky([ConnectionResetError("reset"), TimeoutError("timed out")])
    assert with_retries(step, "read", sleep=slept.append) == "done"
    assert len(calls) == 3 and len(slept) == 2
    for delay, nominal in zip(slept, DELAYS_SECONDS):
        assert nominal * (1 - JITTER) <= delay <= nominal * (1 + JITTER)


@pytest.mark.parametrize("error", [InputError("bad column"), FileNotFoundError(errno.ENOENT, "missing"),
                                   OSError(errno.ENOSPC, "disk full")])
def test_input_and_permanent_errors_fail_at_once(error):
    slept = []
    step, calls = flaky([error])
    with pytest.raises(type(error)):
        with_retries(step, "read", sleep=slept.append)
    assert len(calls) == 1 and slept == []


def test_a_transient_error_that_persists_surfaces_after_the_last_retry():
    slept = []
    step, calls = flaky([ConnectionResetError(f"reset {i}") for i in range(10)])
    with pytest.raises(ConnectionResetError, match="reset 3"):
        with_retries(step, "read", sleep=slept.append)
    assert len(calls) == len(DELAYS_SECONDS) + 1 and len(slept) == len(DELAYS_SECONDS)


def test_the_prefect_tasks_retry_on_the_same_schedule():
    from tasks.retry import STORAGE_RETRIES

    assert STORAGE_RETRIES["retries"] == len(DELAYS_SECONDS)
    assert list(STORAGE_RETRIES["retry_delay_seconds"]) == list(DELAYS_SECONDS)
    assert STORAGE_RETRIES["retry_jitter_factor"] == JITTER
