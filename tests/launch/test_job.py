"""The run id of a torchrun job (`linreg.launch.job.job_run_id`): one contract for the launcher and the ranks."""

import pytest

from linreg.config import RUN_ID_PATTERN, make_config
from linreg.errors import InputError
from linreg.launch.job import job_run_id


@pytest.fixture(autouse=True)
def launcher(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)  # not a rank unless a test says so


def test_a_given_run_id_wins():
    assert job_run_id(make_config(run_id="nightly-1", rdzv_id="job7", nnodes=2)) == "nightly-1"


def test_without_run_id_the_rendezvous_id_names_the_run_so_restarts_resume(monkeypatch):
    assert job_run_id(make_config(rdzv_id="nightly 7/a", nnodes=2)) == "job-nightly-7-a"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "c0ffee")  # a rank of `torchrun --rdzv-id c0ffee`
    assert job_run_id(make_config()) == "job-c0ffee"


def test_one_machine_draws_a_new_id_and_several_machines_must_share_one(monkeypatch):
    assert RUN_ID_PATTERN.match(job_run_id(make_config(nproc_per_node=2)))
    with pytest.raises(InputError, match="same --run-id or --rdzv-id on every machine"):
        job_run_id(make_config(nnodes=2))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # in a rank, rank 0 draws it and broadcasts its plan
    assert RUN_ID_PATTERN.match(job_run_id(make_config(nnodes=2)))
