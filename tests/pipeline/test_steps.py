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


def _rewrite(path: str, rows: int) -> None:
    """Write the Parquet file at `path` again with its first `rows` rows (another size and modification time)."""
    import os

    import pyarrow.parquet as pq

    table = pq.read_table(path).slice(0, rows)
    stat = os.stat(path)
    pq.write_table(table, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock's resolution


def test_an_input_file_rewritten_after_the_plan_fails_the_join_naming_it(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, files=2)
    config = make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="changed")
    plan = steps.plan_run(config)
    victim = sorted((tmp_path / "yields").glob("*.parquet"))[1]
    _rewrite(str(victim), 10)
    with pytest.raises(InputError, match="changed while the run read them") as info:
        steps.join_inputs(plan)
    assert str(victim) in str(info.value) and "rewritten" in str(info.value)
    steps.discard(plan)


def test_a_file_added_after_the_plan_fails_the_join_naming_it(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, files=2)
    plan = steps.plan_run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="added"))
    extra = write(tmp_path / "weather" / "zz-late.parquet", region=["R999"], year=[2000], temp=[1.0],
                  rainfall=[1.0], humidity=[1.0])
    with pytest.raises(InputError, match="is new") as info:
        steps.join_inputs(plan)
    assert extra in str(info.value)
    steps.discard(plan)


def test_a_file_rewritten_while_the_join_reads_fails_the_run_and_commits_nothing(tmp_path, monkeypatch):
    """The file changes after DuckDB read it and before the run ends its join: the check after the join sees it."""
    w, y, _, _ = linear_tables(tmp_path, files=2)
    victim = str(sorted((tmp_path / "weather").glob("*.parquet"))[0])
    real = steps.join_tables

    def join_then_rewrite(*args, **kwargs):
        joined = real(*args, **kwargs)
        _rewrite(victim, 5)
        return joined

    monkeypatch.setattr(steps, "join_tables", join_then_rewrite)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="changed while the run read them"):
        steps.run(make_config(weather=w, yields=y, output=str(out), run_id="during"))
    assert not list(out.rglob("*.parquet"))
    assert not (out / "_staging").exists() or not list((out / "_staging").iterdir())


def test_unchanged_inputs_pass_the_check_and_the_run_commits(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, files=3)
    summary = steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="same"))
    assert summary.joined.joined_rows == 200


def test_a_file_removed_while_the_join_reads_is_named_as_gone(tmp_path, monkeypatch):
    w, y, _, _ = linear_tables(tmp_path, files=2)
    victim = sorted((tmp_path / "yields").glob("*.parquet"))[0]
    real = steps.join_tables

    def join_then_remove(*args, **kwargs):
        joined = real(*args, **kwargs)
        victim.unlink()
        return joined

    monkeypatch.setattr(steps, "join_tables", join_then_remove)
    plan = steps.plan_run(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="gone"))
    with pytest.raises(InputError, match="is gone") as info:
        steps.join_inputs(plan)
    assert str(victim) in str(info.value)
    steps.discard(plan)
