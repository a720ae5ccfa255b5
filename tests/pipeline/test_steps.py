"""linreg.pipeline.steps.run: the flow's steps in the flow's order, the storage steps through `attempt` (where
a run without Prefect retries them), `then` after the commit, and nothing left behind by a failed run."""

import pytest

from linreg.config import make_config
from linreg.errors import InputError
from linreg.pipeline import steps
from tests.helpers import linear_tables, write


def test_storage_steps_go_through_attempt_and_then_runs_after_the_commit(tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    names, after = [], []

    def attempt(step, name):
        names.append(name)
        return step()

    summary = steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="r"),
                        attempt=attempt, then=lambda plan, fit, evaluation: after.append((plan.run_id, fit.train_rows)))
    assert names == ["plan", "validate-and-join", "evaluate"]
    assert after == [("r", summary.rows["train"])]
    assert (tmp_path / "out" / "runs" / "run_id=r").is_dir()


def test_a_failed_run_calls_no_then_and_leaves_no_staging(tmp_path):
    w = write(tmp_path / "w.parquet", region=["a", "b"], year=[1, 1], temp=[1.0, float("nan")],
              rainfall=[1.0, 2.0], humidity=[1.0, 2.0])
    y = write(tmp_path / "y.parquet", region=["a", "b"], year=[1, 1], apples=[1.0, 2.0], oranges=[1.0, 2.0])
    after = []
    with pytest.raises(InputError):
        steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="bad"),
                  then=lambda plan, fit, evaluation: after.append(plan))
    assert after == [] and not list((tmp_path / "out").rglob("*.parquet"))
    assert not list((tmp_path / "out" / "_staging").glob("bad*"))


def test_the_memory_budget_is_the_machines_shared_by_its_local_ranks(monkeypatch):
    from linreg.parallel.dist import Cluster

    config = make_config(memory_budget="4GB")
    four = Cluster(rank=5, world_size=8, local_rank=1, device="cpu")  # 2 machines x 4 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert steps.rank_budget(config, four) == 2**30
    assert steps.rank_budget(config) == 4 * 2**30  # one process: the whole budget, whatever the environment
