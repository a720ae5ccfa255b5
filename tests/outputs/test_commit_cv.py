"""The cv dataset in the commit protocol: a cross-validated run commits five datasets in one atomic commit, cv
before the runs index; a SIGKILL at any file operation of its commit (new, or replacing a run of the same id
with or without cross-validation) is recovered as the other datasets are, locally also with the journal cut
in half; and a run id whose cross-validated run is replaced by one without cross-validation shows no cv
partition, at any instant a reader looks while the new run is listed, nor after recovery.

The committer is tests/reliability_committer.py with --cv (its run, plus a cv partition);
the checks are tests/outputs/test_commit.py's, which know each listed run's datasets from its files' metadata.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from linreg.inputs.schema import cv_schema
from linreg.outputs import commit
from tests import reliability_committer
from tests.outputs.test_commit import KILLED, LONG, check_recovered, committer, forget, kill_and_check, snapshot

# the run id's committed run before the commit (None: a new id; else whether it cross-validated), and whether
# the committing run cross-validates
SCENARIOS = {"new-cv": (None, True), "cv-replacing-plain": (False, True), "plain-replacing-cv": (True, False),
             "cv-replacing-cv": (True, True)}


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/out"
    return str(tmp_path / "out")


def partitions(output: str, run_id: str) -> set[str]:
    """The datasets that hold a partition of `run_id`."""
    fs, root, _ = commit.resolve(output)
    return {d for d in commit.DATASETS_WITH_CV
            if fs.get_file_info(commit.partition(root, d, run_id)).type == pafs.FileType.Directory}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sigkill_at_every_file_operation_of_a_commit_with_cv(output, scenario):
    """Every kill point of each scenario: the checks of test_commit.kill_and_check (earlier runs byte-identical,
    visible partitions whole, a listed run whole in exactly the datasets of its kind, a replaced run never lost,
    recovery leaves every dataset holding exactly the runs of the index that write it)."""
    local = "://" not in output
    if not (local or LONG or scenario == "plain-replacing-cv"):
        pytest.skip("on S3 the withdrawal of a replaced run's cv is the new path; LINREG_LONG_TESTS=1 runs all")
    before, cv = SCENARIOS[scenario]

    def prepare(run_id: str) -> None:
        if before is not None:
            assert committer(output, run_id, "old", cv=before).returncode == 0

    assert committer(output, "earlier", "e0", cv=True).returncode == 0
    earlier = {p: h for p, h in snapshot(output).items() if "run_id=earlier/" in p}
    prepare("probe")
    probe = committer(output, "probe", "p", cv=cv, count_ops=True)
    assert probe.returncode == 0, probe.stderr
    operations = int(probe.stdout.split()[-1])
    assert partitions(output, "probe") == set(commit.DATASETS_WITH_CV if cv else commit.DATASETS)
    kills = 0
    for k in range(1, operations + 1):
        run_id = f"{scenario}-{k}"
        prepare(run_id)
        kills += kill_and_check(output, run_id, f"k{k}", k, parts=1, cv=cv)
        forget(output, run_id)
    assert kills == operations >= (6 if before is None else 10)
    assert {p: h for p, h in snapshot(output).items() if "run_id=earlier/" in p} == earlier


def test_a_cross_validated_run_commits_five_datasets_cv_before_the_runs_index(output, monkeypatch):
    """In process: the journal names all five datasets; at every file operation of the commit the run's
    partitions appear in commit order, cv before the runs entry, which comes last."""
    staging = commit.Staging.create(output, "cv-run", datasets=commit.DATASETS_WITH_CV)
    tables = reliability_committer.tables("cv-run", "w", 7, cv=True)
    tables[commit.CV] = pa.Table.from_pylist([{"l2": 0.0, "fold": f, "target": t, "mse": 1.0 + (f or 0), "rows": 3}
                                              for f in (0, 1, None) for t in ("apples", None)], schema=cv_schema())
    for dataset, table in tables.items():
        commit.write_table(staging.file(dataset), table, {b"linreg.writer": b"w",
                                                           b"linreg.rows": str(table.num_rows).encode()})
    seen, journals = [], []
    fs = staging.filesystem

    def look():
        seen.append(partitions(output, "cv-run"))
        state, journal = commit.read_journal(fs, staging.area)
        journals.append(journal if state == "whole" else None)

    monkeypatch.setattr(commit, "before_file_operation", look)
    final = staging.commit()
    look()
    assert list(final) == list(commit.DATASETS_WITH_CV)
    assert seen[-1] == set(commit.DATASETS_WITH_CV) and seen[0] == set()
    order = [next(iter(b - a)) for a, b in zip(seen, seen[1:]) if b != a]  # each dataset as it appears
    assert order == list(commit.DATASETS_WITH_CV)
    assert all(s <= t for s, t in zip(seen, seen[1:]))  # nothing of the run disappears during its commit
    decided = [j for j in journals if j is not None]
    assert decided and all(j["datasets"] == list(commit.DATASETS_WITH_CV) for j in decided)
    assert fs.get_file_info(staging.area).type == pafs.FileType.NotFound


def test_replacing_a_cross_validated_run_by_one_without_removes_its_cv_partition(output):
    assert committer(output, "x", "a", cv=True).returncode == 0
    assert check_recovered(output)[commit.CV]["x"][2] == {"a"}
    assert committer(output, "x", "b", cv=False).returncode == 0
    state = check_recovered(output)  # every listed run whole in exactly its datasets: x has no cv
    assert partitions(output, "x") == set(commit.DATASETS) and state["runs"]["x"][2] == {"b"}
    assert committer(output, "x", "c", cv=True).returncode == 0  # and back: the cv run's cv is its own
    assert check_recovered(output)[commit.CV]["x"][2] == {"c"}


def test_a_left_over_cv_partition_of_the_run_id_is_withdrawn_by_a_run_without_cv(tmp_path):
    """A cv partition without a runs entry (a prune interrupted after the entry went) under the id a run
    without cross-validation now commits: it must not show beside the new run."""
    output = str(tmp_path / "out")
    assert committer(output, "y", "a", cv=True).returncode == 0
    os.remove(os.path.join(output, "runs", "run_id=y", commit.PART_FILE))
    os.rmdir(os.path.join(output, "runs", "run_id=y"))
    assert committer(output, "y", "b", cv=False).returncode == 0
    assert partitions(output, "y") == set(commit.DATASETS)
    check_recovered(output)


def test_a_torn_journal_of_a_plain_run_replacing_a_cv_run_is_completed_without_the_old_cv(tmp_path):
    """A journal left unreadable after the replaced run's cv was withdrawn: the commit is completed (its
    moves had begun) and the old cv does not come back."""
    output = str(tmp_path / "out")
    assert committer(output, "z", "old", cv=True).returncode == 0
    # the journal (1), the old runs entry out (2), the old cv out (3): killed before the 4th operation
    assert committer(output, "z", "new", cv=False, kill_at=4).returncode == KILLED
    area = next(p for p in (tmp_path / "out" / commit.STAGING).iterdir() if p.name.startswith("z."))
    assert (area / f"replaced-{commit.CV}").is_dir() and not (tmp_path / "out" / commit.CV / "run_id=z").exists()
    journal = area / commit.JOURNAL
    assert json.loads(journal.read_text())["datasets"] == list(commit.DATASETS)
    journal.write_bytes(journal.read_bytes()[:10])
    assert any("completed the interrupted commit" in line for line in commit.recover(output))
    state = check_recovered(output)
    assert state["runs"]["z"][2] == {"new"} and partitions(output, "z") == set(commit.DATASETS)
