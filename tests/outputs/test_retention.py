"""Retention: keep the last N runs or drop runs older than D days; the runs index first, never a run in
progress, a dry run that lists and touches nothing; a cross-validated run's cv goes with it."""

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from flows.prune import main as prune_main
from linreg.config import make_config
from linreg.errors import InputError
from linreg.outputs import commit, retention, runindex
from linreg.pipeline import inprocess
from tests.conftest import SAMPLE
from tests.outputs.cv_run import make_cross_validated

IDS = ("r1", "r2", "r3", "r4")  # committed in this order


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """Four committed exact runs on the sample, each with its report."""
    out = str(tmp_path_factory.mktemp("committed") / "out")
    for run_id in IDS:
        inprocess.run(make_config(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                                  output=out, run_id=run_id))  # with its report
    return out


@pytest.fixture
def out(committed, tmp_path):
    """A fresh copy of the four runs for each test."""
    return shutil.copytree(committed, tmp_path / "out").as_posix()


def _present(out, run_id):
    return {d for d in ("runs",) + retention.DATA if os.path.isdir(f"{out}/{d}/run_id={run_id}")}


def test_keep_last_removes_the_oldest_runs_whole_and_leaves_the_rest_byte_for_byte(out):
    kept_before = {k: v for k, v in _snapshot(Path(out)).items() if "r3" in k or "r4" in k}
    plan = retention.prune(out, keep_last=2)
    assert plan.remove == ["r1", "r2"] and plan.keep == ["r3", "r4"]
    assert [r["run_id"] for r in runindex.read_runs(out)] == ["r3", "r4"]
    assert _present(out, "r1") == _present(out, "r2") == set()
    assert _present(out, "r3") == {"runs", "weights", "metrics", "predictions", "reports"}
    assert {k: v for k, v in _snapshot(Path(out)).items() if "r3" in k or "r4" in k} == kept_before


def test_dry_run_lists_and_removes_nothing(out, capsys):
    before = _snapshot(Path(out))
    assert prune_main(["--output", out, "--keep-last", "1", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would remove 3 run(s), kept 1" in printed
    assert all(f"would remove: {r}" in printed for r in ("r1", "r2", "r3")) and "r4" not in printed
    assert _snapshot(Path(out)) == before


def test_older_than_uses_the_finish_time(out):
    finished = {r["run_id"]: r["finished_at"] for r in runindex.read_runs(out)}
    now = finished["r3"] + dt.timedelta(days=7)  # r1, r2 finished more than 7 days before `now`
    plan = retention.prune(out, older_than_days=7, now=now)
    assert plan.remove == ["r1", "r2"] and [r["run_id"] for r in runindex.read_runs(out)] == ["r3", "r4"]


def test_a_run_in_progress_is_never_removed(out):
    os.makedirs(f"{out}/_staging/r1.abcd1234")  # r1 is being rerun right now
    plan = retention.prune(out, keep_last=0)
    assert plan.in_progress == ["r1"] and plan.remove == ["r2", "r3", "r4"]
    assert _present(out, "r1") == {"runs", "weights", "metrics", "predictions", "reports"}


def test_the_index_entry_goes_first_and_an_interrupted_prune_is_finished_next_time(out, monkeypatch):
    deleted = []

    def crash_after_the_index(filesystem, path):
        if deleted:
            raise OSError("killed mid-prune")
        deleted.append(path)
        filesystem.delete_dir(path)

    monkeypatch.setattr(retention, "_delete", crash_after_the_index)
    with pytest.raises(OSError, match="killed"):
        retention.prune(out, keep_last=3)
    assert deleted[0].endswith("/runs/run_id=r1")
    assert _present(out, "r1") == {"weights", "metrics", "predictions", "reports"}  # not committed any more
    assert [r["run_id"] for r in runindex.read_runs(out)] == ["r2", "r3", "r4"]
    monkeypatch.undo()
    plan = retention.prune(out, keep_last=3)
    assert plan.orphans == ["r1"] and plan.remove == [] and _present(out, "r1") == set()


def test_bad_options_are_input_errors(out, capsys):
    with pytest.raises(InputError, match="exactly one of --keep-last N or --older-than DAYS"):
        retention.plan_prune(out, keep_last=1, older_than_days=3)
    with pytest.raises(InputError, match="must not be negative"):
        retention.plan_prune(out, keep_last=-1)
    with pytest.raises(SystemExit) as exit_:
        prune_main(["--output", out, "--keep-last", "1", "--older-than", "2"])
    assert exit_.value.code == 2
    assert len(runindex.read_runs(out)) == 4


def test_a_cross_validated_run_is_removed_with_its_cv(out):
    cv, _ = make_cross_validated(out, "r2")  # r2 recommitted with cross-validation, in its place
    assert cv.num_rows and [r["run_id"] for r in runindex.read_runs(out)] == list(IDS)
    assert _present(out, "r2") == {"runs", "weights", "metrics", "predictions", commit.CV, "reports"}
    kept_before = {k: v for k, v in _snapshot(Path(out)).items() if "r3" in k or "r4" in k}
    plan = retention.prune(out, keep_last=2)
    assert plan.remove == ["r1", "r2"] and _present(out, "r1") == _present(out, "r2") == set()
    assert {k: v for k, v in _snapshot(Path(out)).items() if "r3" in k or "r4" in k} == kept_before


def test_a_cv_partition_left_by_an_interrupted_prune_is_removed_by_the_next(out, monkeypatch):
    make_cross_validated(out, "r1")
    shutil.rmtree(f"{out}/{commit.REPORTS}/run_id=r1")  # a run whose report was not drawn: cv is its last data

    def crash_at_the_cv(filesystem, path):
        if f"/{commit.CV}/" in path:
            raise OSError("killed mid-prune")
        filesystem.delete_dir(path)

    monkeypatch.setattr(retention, "_delete", crash_at_the_cv)
    with pytest.raises(OSError, match="killed"):
        retention.prune(out, keep_last=3)
    assert _present(out, "r1") == {commit.CV}  # not committed, only its cv left
    monkeypatch.undo()
    assert retention.plan_prune(out, keep_last=3).orphans == ["r1"]
    plan = retention.prune(out, keep_last=3)
    assert plan.orphans == ["r1"] and _present(out, "r1") == set()
