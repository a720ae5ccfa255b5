"""Every file a run writes and a later command reads back, left empty, cut short or as random bytes.

The files: a staging area's journal (`_COMMIT`) and its temporary name, its lease, the commit lock file and
its owner record (local and S3), a runs-index entry, a gradient trainer's snapshot and the snapshots' lease.
For each damage the next command (a commit through `tests/reliability_committer.py`'s `main`, in process,
which recovers first as a training run does; a real training run; or the reader concerned) succeeds, the
damaged thing is repaired or swept by the rules of docs/commit-protocol.md, and every other run's files stay
byte-identical. One test runs the issue's reproduction through `python -m flows.train`.

Fuzzing: journals and runs-index entries cut at every length and mutated at random (bit flips, byte runs
overwritten, inserted, deleted) are read without raising: a journal is whole or torn, an entry is a row or
skipped. LINREG_FUZZ_SEED picks another sequence.

LINREG_LONG_TESTS=1 stops the torn-journal commit before every file operation from its first move on
(8 points, not 3), and fuzzes 5000 journals (not 300) and 1666 runs entries (not 100).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from linreg.config import TrainConfig
from linreg.outputs import commit, locks, runindex
from tests.conftest import REPO, SAMPLE
from tests.reliability_committer import main as committer_main
from tests.reliability_committer import tables
from tests.outputs.test_commit import check_recovered, runs_writer, snapshot as published, untouched

LONG = os.environ.get("LINREG_LONG_TESTS") == "1"
DAMAGES = ("empty", "truncated", "random")
FUZZ_CASES = 5000 if LONG else 300


def tear(path: str | Path, damage: str, whole: bytes | None = None, seed: int = 0) -> None:
    """Overwrite `path` as a crash or a power loss can leave it: empty, its first half, or random bytes."""
    whole = Path(path).read_bytes() if whole is None else whole
    data = {"empty": b"", "truncated": whole[:len(whole) // 2],
            "random": random.Random(seed).randbytes(max(len(whole), 64))}[damage]
    Path(path).write_bytes(data)


@pytest.fixture
def linreg_log():
    """The linreg loggers' records (a handler of its own: Prefect's logging setup may stop propagation)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("linreg")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def messages(records, level=logging.WARNING) -> str:
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


def stage(output: str, run_id: str, writer: str, rows: int = 10) -> commit.Staging:
    """A staging area holding the committer's four small datasets for `run_id`, not committed."""
    staging = commit.Staging.create(output, run_id)
    for dataset, table in tables(run_id, writer, rows).items():
        metadata = {b"linreg.writer": writer.encode(), b"linreg.rows": str(table.num_rows).encode()}
        commit.write_table(staging.file(dataset), table, metadata)
    return staging


def next_run(output: str, run_id: str = "next") -> None:
    """What the next run does: recover, stage, commit (the committer's main, in this process)."""
    assert committer_main(["--output", output, "--run-id", run_id, "--writer", run_id]) == 0


def interrupted_commit(output: str, run_id: str, writer: str, stop_before: int) -> commit.Staging:
    """A commit of `run_id` that stopped before its `stop_before`-th file operation, its area left as is."""
    staging = stage(output, run_id, writer)
    count = {"n": 0}

    def stop():
        count["n"] += 1
        if count["n"] == stop_before:
            raise KeyboardInterrupt  # the process dies here: nothing after it runs

    saved, commit.before_file_operation = commit.before_file_operation, stop
    try:
        with pytest.raises(KeyboardInterrupt):
            staging.commit()
    finally:
        commit.before_file_operation = saved
    return staging


def journal_bytes(run_id: str) -> bytes:
    return json.dumps({"run_id": run_id, "datasets": list(commit.DATASETS), "key": "run_id"}).encode()


@pytest.fixture
def output(tmp_path):
    """An output root with two committed runs: `earlier` and `x` (writer `old`)."""
    out = str(tmp_path / "out")
    next_run(out, "earlier")
    assert committer_main(["--output", out, "--run-id", "x", "--writer", "old"]) == 0
    return out


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_torn_journal_whose_moves_had_not_begun_is_not_committed(output, damage, linreg_log):
    before = published(output)
    staging = stage(output, "x", "new")  # a replacing commit of x, its journal torn before any move
    tear(f"{staging.area}/{commit.JOURNAL}", damage, journal_bytes("x"))
    next_run(output)
    assert not os.path.exists(staging.area)
    assert check_recovered(output)["runs"]["x"][2] == {"old"}  # the earlier x, whole
    untouched(before, published(output), "next")  # every other file byte-identical, x's too
    assert f"removed the staging area {staging.name}: its journal was unreadable" in messages(linreg_log)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("stop_before", range(3, 11) if LONG else (3, 5, 10))
def test_a_torn_journal_whose_moves_had_begun_is_completed(output, damage, stop_before, linreg_log):
    """A replacing commit (10 file operations: journal, runs entry withdrawn, then per dataset the old partition
    out and the new one in, the runs index last, the area removed) stopped before operation `stop_before`,
    its journal then torn: the next run completes it from what the area holds."""
    before = published(output)
    staging = interrupted_commit(output, "x", "new", stop_before)
    assert os.path.isdir(f"{staging.area}/replaced-runs")  # the moves had begun
    tear(f"{staging.area}/{commit.JOURNAL}", damage)
    next_run(output)
    state = check_recovered(output)
    assert all(state[d]["x"][2] == {"new"} for d in commit.DATASETS)  # completed: x is the new one, whole
    untouched(before, published(output), "x")
    assert not os.path.exists(staging.area)
    assert f"completed the interrupted commit of {staging.name}" in messages(linreg_log)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_torn_journal_of_a_new_run_id_after_its_first_move_is_completed(output, damage):
    before = published(output)
    staging = interrupted_commit(output, "fresh", "f", 3)  # journal written, weights moved
    tear(f"{staging.area}/{commit.JOURNAL}", damage)
    next_run(output)
    assert {d: check_recovered(output)[d]["fresh"][2] for d in commit.DATASETS} == {d: {"f"} for d in commit.DATASETS}
    untouched(before, published(output), "fresh")


def test_the_issue_reproduction_an_empty_journal_in_an_empty_area(output, linreg_log):
    """`mkdir -p output/_staging/x.deadbeef && : > output/_staging/x.deadbeef/_COMMIT`, then a run."""
    before = published(output)
    area = Path(output) / "_staging" / "x.deadbeef"
    area.mkdir(parents=True)
    (area / commit.JOURNAL).write_bytes(b"")
    next_run(output)
    assert not area.exists()
    check_recovered(output)
    untouched(before, published(output), "next")
    assert "x.deadbeef: its journal was unreadable (empty)" in messages(linreg_log)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_leftover_temporary_journal_is_not_a_commit(output, damage, linreg_log):
    """A commit that stopped while writing its journal under a temporary name decided nothing."""
    before = published(output)
    staging = stage(output, "x", "new")
    temporary = f"{staging.area}/.{commit.JOURNAL}.0badf00d.tmp"
    tear(temporary, damage, journal_bytes("x"))
    assert commit.read_journal(staging.filesystem, staging.area) == ("pending", None)
    next_run(output)
    assert not os.path.exists(staging.area)
    assert check_recovered(output)["runs"]["x"][2] == {"old"}
    untouched(before, published(output), "next")
    assert "stopped while its journal was being written" in messages(linreg_log)


def test_the_journal_is_written_whole_under_a_temporary_name_and_fsynced(tmp_path, monkeypatch):
    """The commit's own journal: written by write_atomic (temporary name, fsync, rename, fsync of the area)."""
    out = str(tmp_path / "out")
    staging = stage(out, "y", "w")
    calls = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (calls.append(("rename", a, b)), real_rename(a, b))[1])
    staging.commit()
    journal = f"{staging.area}/{commit.JOURNAL}"
    at = next(i for i, c in enumerate(calls) if c[0] == "rename" and c[2] == journal)
    temporary = calls[at][1]
    assert os.path.basename(temporary).startswith(f".{commit.JOURNAL}.")
    assert ("fsync", temporary) in calls[:at] and calls[at + 1] == ("fsync", staging.area)
    synced = {c[1] for c in calls[:at] if c[0] == "fsync"}
    for dataset in commit.DATASETS:  # every staged file and its folders fsynced before the journal
        assert staging.file(dataset) in synced and os.path.dirname(staging.file(dataset)) in synced
    last = max(i for i, c in enumerate(calls) if c[0] == "rename")
    assert calls[last][2] == f"{out}/runs/run_id=y"  # the runs entry moved last, then its folder fsynced
    assert calls[last + 1] == ("fsync", f"{out}/runs")
    for i, call in enumerate(calls):  # every rename into a dataset is followed by an fsync of that dataset
        if call[0] == "rename" and i > at:
            assert calls[i + 1] == ("fsync", os.path.dirname(call[2])), calls[i:i + 2]


def test_a_large_staged_file_is_pushed_to_disk_as_it_grows(tmp_path, monkeypatch):
    """The predictions' writer starts the write-back of each new stretch of its file (so the commit's fsync
    has little left); the file is unchanged by it. Outside a staging area (a remote run's work directory)
    it is a plain writer."""
    import pyarrow as pa

    calls = []
    monkeypatch.setattr(commit.FlushingWriter, "FLUSH_BYTES", 4096)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: calls.append((offset, length)))
    table = pa.table({"x": [float(i) for i in range(5000)], "k": [f"k{i}" for i in range(5000)]})
    path = tmp_path / "out" / commit.STAGING / "r.0" / "predictions" / "run_id=r" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    with commit.open_writer(str(path), table.schema, {}, write_back=True) as writer:  # a staged file
        assert isinstance(writer, commit.FlushingWriter)
        for _ in range(6):
            writer.write_table(table, row_group_size=5000)
    assert len(calls) >= 5 and calls[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(calls, calls[1:]))  # contiguous stretches, none twice
    assert pq.read_table(path).equals(pa.concat_tables([table] * 6))
    with commit.open_writer(str(tmp_path / "plain.parquet"), table.schema, {}) as plain:
        assert type(plain) is pq.ParquetWriter
    # The caller says which it wants, wherever the file is.
    with commit.open_writer(str(tmp_path / "pushed.parquet"), table.schema, {}, write_back=True) as pushed:
        assert isinstance(pushed, commit.FlushingWriter)
    with commit.open_writer(str(path), table.schema, {}, write_back=False) as plain:
        assert type(plain) is pq.ParquetWriter


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", ["staging", "snapshots"])
def test_a_torn_lease_counts_as_none(output, damage, kind, linreg_log):
    """A torn lease (of a staging area or of a run's snapshots) falls back to the area's newest file time:
    a fresh area is kept, one untouched for days is swept, and nothing raises."""
    before = published(output)
    areas = {}
    for age in ("fresh", "old"):
        if kind == "staging":
            area = stage(output, f"{age}-run", "w").area
        else:
            area = f"{output}/{commit.STAGING}/{age}-run.snapshots"
            os.makedirs(area)
            Path(area, "snapshot.pt").write_bytes(b"state")
            Path(area, commit.LEASE).write_text("2026-12-04T19:16:50.123456+00:00")
        tear(f"{area}/{commit.LEASE}", damage)
        areas[age] = area
    long_ago = time.time() - 3 * 24 * 3600
    for folder, dirs, files in os.walk(areas["old"]):
        for name in dirs + files + [""]:
            os.utime(os.path.join(folder, name), (long_ago, long_ago))
    next_run(output)
    assert os.path.isdir(areas["fresh"]) and not os.path.exists(areas["old"])
    untouched(before, published(output), "next")
    assert f"swept the stale staging area {os.path.basename(areas['old'])}" in messages(linreg_log)


def test_a_lease_cut_to_a_date_is_not_read_as_an_earlier_time():
    """`2026-12-04T19:16:50+00:00` cut short parses as a naive, earlier time: it counts as no lease."""
    assert commit._lease_time("2026-12-04T19:16:50.123456+00:00") is not None
    for torn in ("2026-12-04", "2026-12-04T19", "2026-12-04T19:16:50.12", "", "\ufffd\x00", None):
        assert commit._lease_time(torn) is None


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_torn_lock_file_does_not_block(output, damage):
    """Locally the lock is an flock; its file (the owner record) left torn by a killed holder locks nothing."""
    before = published(output)
    lock = Path(output) / locks.LOCKS / "run_id=x.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    tear(lock, damage, json.dumps({"owner": "dead", "pid": 1, "host": "h", "time": "t"}).encode())
    assert committer_main(["--output", output, "--run-id", "x", "--writer", "again"]) == 0
    assert check_recovered(output)["runs"]["x"][2] == {"again"}
    untouched(before, published(output), "x")
    assert not lock.exists()


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_held_lock_with_a_torn_owner_record_is_a_clear_conflict(output, damage):
    """A live holder whose owner record is torn: the commit fails with the conflict error (exit code 3),
    naming an unknown owner, never a decoding traceback; nothing is published."""
    import fcntl

    from linreg.errors import RunConflictError

    before = published(output)
    lock = Path(output) / locks.LOCKS / "run_id=x.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    tear(lock, damage, json.dumps({"owner": "someone", "pid": 1}).encode())
    staging = stage(output, "x", "loser")
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: conflicts like another process
        with pytest.raises(RunConflictError, match="is committing it right now"):
            staging.commit()
    staging.discard()
    assert published(output) == before


def test_a_torn_s3_lock_owner_record_is_broken(s3_bucket):
    """On S3 the lock object is the owner record: unreadable means stale, so it is broken and the commit
    proceeds, for each damage."""
    output = f"s3://{s3_bucket}/out"
    client = locks.s3_client(output)
    next_run(output, "earlier")
    for i, damage in enumerate(DAMAGES):
        before = published(output)
        whole = json.dumps({"owner": "o", "host": "h", "pid": 1, "time": "2999-01-01T00:00:00+00:00"}).encode()
        body = {"empty": b"", "truncated": whole[:len(whole) // 2], "random": random.Random(i).randbytes(64)}[damage]
        client.put_object(Bucket=s3_bucket, Key=f"out/{locks.LOCKS}/run_id=s.lock", Body=body)
        assert committer_main(["--output", output, "--run-id", "s", "--writer", damage]) == 0
        assert runs_writer(output, "s") == damage
        untouched(before, published(output), "s")


# Runs-index entries: real training runs, read by every reader of the index.

def train(output: str, run_id: str, **kwargs):
    from linreg.pipeline import steps

    config = TrainConfig(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                         output=output, run_id=run_id, trainer="exact", **kwargs)
    return steps.run(config), config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """An output root with two committed exact runs of one configuration, r1 then r2 (the newest)."""
    out = str(tmp_path_factory.mktemp("runs") / "out")
    train(out, "r1")
    train(out, "r2")
    return out


@pytest.fixture
def torn_newest(two_runs, tmp_path, request):
    """A copy of `two_runs` whose newest run's (r2) runs-index entry is torn; returns the output root."""
    out = str(tmp_path / "out")
    shutil.copytree(two_runs, out)
    tear(f"{out}/runs/run_id=r2/{commit.PART_FILE}", request.param)
    return out


@pytest.mark.parametrize("torn_newest", DAMAGES, indirect=True)
def test_a_torn_runs_entry_is_skipped_by_every_reader_and_removed_by_the_next_run(torn_newest, tmp_path, linreg_log):
    from linreg.models.estimator import LinearRegression
    from linreg.outputs import retention
    from linreg.pipeline import reuse
    from linreg.pipeline.scoring import ScoreConfig, score

    out = torn_newest
    entry = f"{out}/runs/run_id=r2/{commit.PART_FILE}"
    before = published(out)
    assert [r["run_id"] for r in runindex.read_runs(out)] == ["r1"]
    assert f"skipped the runs-index entry {entry}" in messages(linreg_log)
    weights = pq.read_table(f"{out}/weights/run_id=r1/part-0.parquet").to_pylist()
    model = LinearRegression.from_run(out)  # the newest readable run: r1
    expected = {(w["target"], w["term"]): w["weight"] for w in weights}
    for j, target in enumerate(model.targets_):
        assert model.intercept_[j] == expected[target, "intercept"]
    summary = score(ScoreConfig(model=out, weather=str(SAMPLE / "weather.parquet"), output=str(tmp_path / "scores")))
    assert summary.model_run_id == "r1"
    config = TrainConfig(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"), output=out,
                         trainer="exact", skip_if_unchanged=True)
    assert reuse.find_unchanged_run(config)["run_id"] == "r1"  # --skip-if-unchanged: r1, the same inputs and config
    plan = retention.plan_prune(out, keep_last=5)
    assert plan.keep == ["r1"] and plan.orphans == ["r2"]  # r2 is not committed: its partitions are orphans
    assert published(out) == before  # readers change nothing

    train(out, "r3")  # the next training run removes the torn entry, and touches nothing else
    assert not os.path.exists(f"{out}/runs/run_id=r2")
    assert "removed the unreadable runs-index entry of run 'r2'" in messages(linreg_log)
    assert [r["run_id"] for r in runindex.read_runs(out)] == ["r1", "r3"]
    after = published(out)
    assert {p: h for p, h in after.items() if "run_id=r3/" not in p} == \
        {p: h for p, h in before.items() if not p.startswith("/runs/run_id=r2/")}
    assert retention.prune(out, keep_last=5).orphans == ["r2"]  # retention removes the orphans
    assert not any("run_id=r2" in p for p in published(out))


def test_retention_removes_a_runs_entry_durably_before_its_data(two_runs, tmp_path, monkeypatch):
    """Prune: the runs entry deleted, the runs folder fsynced, only then the run's data (so no power loss
    leaves an entry whose data is gone)."""
    from linreg.outputs import durable, retention

    out = str(tmp_path / "out")
    shutil.copytree(two_runs, out)
    events = []
    real_delete, real_fsync_dir = retention._delete, durable.fsync_dir
    monkeypatch.setattr(retention, "_delete", lambda fs, path: (events.append(("delete", path[len(out):])),
                                                           real_delete(fs, path))[1])
    monkeypatch.setattr(durable, "fsync_dir", lambda path: (events.append(("fsync", path[len(out):])),
                                                           real_fsync_dir(path))[1])
    assert retention.prune(out, keep_last=0).remove == ["r1", "r2"]
    for run_id in ("r1", "r2"):
        mine = [e for e in events if e[1] == "/runs" or f"run_id={run_id}" in e[1]]
        at = mine.index(("delete", f"/runs/run_id={run_id}"))
        assert mine[at + 1] == ("fsync", "/runs")
        assert [e[1].split("/")[1] for e in mine[at + 2:] if e[0] == "delete"] == ["weights", "metrics", "predictions"]
        assert all(e[0] != "delete" or f"run_id={run_id}" not in e[1] for e in mine[:at])
    assert runindex.read_runs(out) == []


def test_a_runs_entry_without_run_id_column_takes_it_from_its_folder(two_runs, tmp_path):
    """The runs files may hold run_id or not (it is the hive folder); every row's run_id is its folder's."""
    out = str(tmp_path / "out")
    shutil.copytree(two_runs, out)
    path = f"{out}/runs/run_id=r1/{commit.PART_FILE}"
    table = pq.read_table(path, partitioning=None)
    if "run_id" in table.column_names:
        pq.write_table(table.drop_columns(["run_id"]), path)
    rows = runindex.read_runs(out)
    assert [r["run_id"] for r in rows] == ["r1", "r2"] and all(len(r) == len(rows[1]) for r in rows)


# Snapshots of the gradient trainers.

@pytest.mark.parametrize("damage", DAMAGES)
def test_a_torn_snapshot_is_ignored_with_a_warning(tmp_path, damage, linreg_log):
    import torch

    from linreg.outputs import snapshot

    snaps = snapshot.Snapshots(str(tmp_path / "out"), "s", every=1, rank=0, identity="id")
    weights, generator = {"w": torch.ones(3)}, torch.Generator().manual_seed(1)

    class Schedule:  # what a snapshot asks of the trainers' schedule
        lr = 0.1

        def state_dict(self):
            return {"lr": self.lr}

        def load_state_dict(self, state):
            self.lr = state["lr"]

    assert snaps.maybe_save(1, tensors=weights, schedule=Schedule(), losses=[1.0], generator=generator)
    assert snaps.load()["epoch"] == 1  # whole
    tear(snaps.path, damage)
    fresh = {"w": torch.zeros(3)}
    assert snaps.restore(tensors=fresh, schedule=Schedule(), losses=[], generator=generator) == 0
    assert torch.equal(fresh["w"], torch.zeros(3))  # nothing loaded
    assert f"ignoring the snapshot at {snaps.path}" in messages(linreg_log)


def test_a_training_job_with_a_torn_snapshot_starts_over_and_equals_a_clean_run(tmp_path, linreg_log):
    from linreg.launch import job

    def run(output, run_id):
        config = TrainConfig(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                             output=output, run_id=run_id, trainer="nn", epochs=4, tol=0, seed=7, snapshot_every=1)
        return job.run_rank(config)

    out = str(tmp_path / "out")
    train(out, "earlier")
    before = published(out)
    snapshots = Path(out) / commit.STAGING / "snap.snapshots"
    snapshots.mkdir(parents=True)
    tear(snapshots / "snapshot.pt", "random", b"x" * 4096)
    torn = run(out, "snap")
    clean = run(str(tmp_path / "clean"), "snap")
    assert torn.weights == clean.weights  # started over: the same fit as without the torn snapshot
    assert "ignoring the snapshot" in messages(linreg_log)
    untouched(before, published(out), "snap")
    assert not snapshots.exists()


def test_the_issue_reproduction_through_the_command_line(tmp_path):
    """Run once; `mkdir -p output/_staging/x.deadbeef && : > output/_staging/x.deadbeef/_COMMIT`; run again
    with `python -m flows.train`: exit 0, the area gone, the earlier run byte-identical."""
    out = str(tmp_path / "out")
    train(out, "first")
    before = published(out)
    area = Path(out) / "_staging" / "x.deadbeef"
    area.mkdir(parents=True)
    (area / commit.JOURNAL).write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "flows.train", "--weather", str(SAMPLE / "weather.parquet"),
                             "--yields", str(SAMPLE / "yields.parquet"), "--output", out, "--run-id", "second",
                             "--trainer", "exact"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not area.exists()
    untouched(before, published(out), "second")
    assert [r["run_id"] for r in runindex.read_runs(out)] == ["first", "second"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage of `data`: a bit flipped, a run of bytes overwritten, inserted or deleted, or a cut."""
    data = bytearray(data)
    at = rng.randrange(len(data) + 1)
    kind = rng.randrange(5)
    if kind == 0 and data:
        data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[at:at + rng.randrange(1, 16)] = rng.randbytes(rng.randrange(1, 16))
    elif kind == 2:
        data[at:at] = rng.randbytes(rng.randrange(1, 16))
    elif kind == 3:
        del data[at:at + rng.randrange(1, 16)]
    else:
        del data[at:]
    return bytes(data)


def test_fuzzed_journals_are_whole_or_torn_never_an_error(tmp_path):
    seed = int(os.environ.get("LINREG_FUZZ_SEED", "0"))
    rng = random.Random(seed)
    whole = journal_bytes("x")
    area = tmp_path / "_staging" / "x.0"
    area.mkdir(parents=True)
    fs = commit.resolve(str(tmp_path))[0]
    cases = [whole[:n] for n in range(len(whole))] + [mutate(whole, rng) for _ in range(FUZZ_CASES)]
    states = {}
    for data in cases:
        (area / commit.JOURNAL).write_bytes(data)
        state, journal = commit.read_journal(fs, str(area))
        assert state in ("whole", "torn"), (seed, data)
        if state == "whole":  # usable as it is: roll_forward reads exactly these
            assert isinstance(journal["run_id"], str) and all(isinstance(d, str) for d in journal["datasets"])
        states[state] = states.get(state, 0) + 1
    assert states["torn"] >= len(whole)  # every cut is torn


def test_fuzzed_runs_entries_are_read_or_skipped_never_an_error(two_runs, tmp_path):
    seed = int(os.environ.get("LINREG_FUZZ_SEED", "0"))
    rng = random.Random(seed)
    out = str(tmp_path / "out")
    shutil.copytree(two_runs, out)
    entry = Path(out) / "runs" / "run_id=r2" / commit.PART_FILE
    whole = entry.read_bytes()
    cuts = sorted(set(rng.randrange(len(whole)) for _ in range(50)) | {0, 4, len(whole) - 1})
    for n in cuts:  # a cut loses the footer: always skipped
        entry.write_bytes(whole[:n])
        assert [r["run_id"] for r in runindex.read_runs(out)] == ["r1"], (seed, n)
    for _ in range(FUZZ_CASES // 3):  # a damaged value may still read (Parquet has no checksum by default)
        entry.write_bytes(mutate(whole, rng))
        assert [r["run_id"] for r in runindex.read_runs(out)] in (["r1"], ["r1", "r2"]), seed
