"""Kills and races against the commit protocol, on local disk and on a local S3-compatible server (moto).

A small committer subprocess (tests/reliability_committer.py, no torch) stages four tiny datasets and commits
them; the kill tests SIGKILL it before the k-th file operation of its commit (and, for double faults, kill
the recovery too). After each kill: every earlier run is byte-identical; every run partition that pyarrow,
DuckDB or pandas can see is whole and from one writer; the runs index lists a run only if every dataset
holds it whole, from the same writer; after recover() (what the next run does first) the datasets agree.
The race tests start several committers at once: with one run id exactly one commits and the others exit
with RunConflictError (exit code 3); with different ids all commit, each partition holding only its rows.

On local disk each kill is also checked with the journal it left cut in half (`torn_journal_recovers`, on a
copy): recovery completes the commit if its moves had begun, else drops it, and the invariants hold.
Power losses (unsynced data lost, not only a killed process) are modelled in tests/outputs/test_commit_power_loss.py.

LINREG_LONG_TESTS=1 runs the long version: more part counts and a double fault at every kill point.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from linreg.errors import EXIT_CONFLICT
from linreg.outputs import commit, locks
from tests.conftest import REPO
from tests.reliability_committer import declared

LONG = os.environ.get("LINREG_LONG_TESTS") == "1"
KILLED = -9  # subprocess return code of a SIGKILLed process


def committer(output, run_id, writer, *, rows=10, parts=1, kill_at=0, ready_dir=None, wait_for=0,
              recover_only=False, count_ops=False, popen=False, cv=None):
    """Run tests/reliability_committer.py; with cv True a cross-validated run (a cv partition too)."""
    args = [sys.executable, "-m", "tests.reliability_committer", "--output", output, "--run-id", run_id,
            "--writer", writer, "--rows", str(rows), "--parts", str(parts), "--kill-at", str(kill_at)]
    args += ["--cv"] * bool(cv)
    if ready_dir:
        args += ["--ready-dir", ready_dir, "--wait-for", str(wait_for)]
    args += ["--recover-only"] * recover_only + ["--count-ops"] * count_ops
    if popen:
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def snapshot(output: str) -> dict:
    """Every published file (staging and locks excluded): path -> sha256."""
    fs, root, _ = commit.resolve(output)
    result = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        rel = info.path[len(root):]
        if info.type == pafs.FileType.File and not rel.startswith((f"/{commit.STAGING}/", f"/{locks.LOCKS}/")):
            with fs.open_input_stream(info.path) as f:
                result[rel] = hashlib.sha256(f.read()).hexdigest()
    return result


def visible(output: str, *, all_readers: bool = True) -> dict:
    """dataset -> {run_id: (rows seen, expected rows, writers)} as pyarrow sees it; DuckDB and pandas must
    see the same row counts (all_readers). Expected rows and writers come from the files' metadata."""
    fs, root, is_local = commit.resolve(output)
    state = {}
    con = duckdb.connect()
    for dataset in commit.DATASETS_WITH_CV:
        base = f"{root}/{dataset}"
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            state[dataset] = {}
            continue
        parts = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type == pafs.FileType.File:
                meta = pq.read_schema(info.path, filesystem=fs).metadata
                run_id = info.path[len(base) + 1:].split("/")[0].split("=", 1)[1]
                parts.setdefault(run_id, []).append((int(meta[b"linreg.rows"]), meta[b"linreg.writer"].decode()))
        table = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive").to_table()
        counts = table.group_by("run_id").aggregate([("i", "count")]).to_pylist() if table.num_rows else []
        by_arrow = {r["run_id"]: r["i_count"] for r in counts}
        if all_readers and parts:
            if is_local:
                con.execute(f"CREATE OR REPLACE VIEW t AS SELECT * FROM read_parquet('{base}/*/*.parquet', "
                            "hive_partitioning = true)")
            else:
                con.register("t", ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive"))
            by_duckdb = dict(con.sql("SELECT run_id, count(*) FROM t GROUP BY run_id").fetchall())
            frame = pd.read_parquet(base, filesystem=fs, columns=["run_id"])
            by_pandas = {str(k): int(v) for k, v in frame.groupby("run_id", observed=True).size().items()}
            assert by_arrow == by_duckdb == by_pandas, (dataset, by_arrow, by_duckdb, by_pandas)
        state[dataset] = {run_id: (by_arrow.get(run_id, 0), files[0][0], {w for _, w in files})
                          for run_id, files in parts.items()}
    return state


def check_whole(output: str, *, all_readers: bool = True) -> dict:
    """Every visible partition is whole and from one writer; every listed run is whole in every dataset of its
    kind (`tests.reliability_committer.declared`: cv only for a cross-validated run), one writer, and absent from the others."""
    state = visible(output, all_readers=all_readers)
    for dataset, runs in state.items():
        for run_id, (rows, expected, writers) in runs.items():
            assert rows == expected and len(writers) == 1, (dataset, run_id, rows, expected, writers)
    for run_id, (_, _, writers) in state["runs"].items():
        datasets = run_datasets(output, run_id)
        for dataset in commit.DATASETS_WITH_CV:
            if dataset in datasets:
                assert run_id in state[dataset] and state[dataset][run_id][2] == writers, (run_id, dataset, state)
            else:
                assert run_id not in state[dataset], (run_id, dataset, state)
    return state


def run_datasets(output: str, run_id: str) -> tuple[str, ...]:
    """The datasets listed run `run_id` wrote, as its runs entry's metadata says."""
    fs, root, _ = commit.resolve(output)
    return declared(pq.read_schema(commit.part_path(root, "runs", run_id), filesystem=fs).metadata)


def check_recovered(output: str) -> dict:
    """After recover(): whole, and every dataset holds exactly the runs of the runs index that write it (cv:
    the cross-validated ones); no journal left."""
    state = check_whole(output, all_readers=False)
    for dataset in commit.DATASETS_WITH_CV:
        assert set(state[dataset]) == {r for r in state["runs"] if dataset in run_datasets(output, r)}, (dataset, state)
    fs, root, _ = commit.resolve(output)
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/{commit.STAGING}", allow_not_found=True)):
        assert fs.get_file_info(f"{info.path}/{commit.JOURNAL}").type == pafs.FileType.NotFound
    return state


def runs_writer(output: str, run_id: str) -> str | None:
    """The writer of run_id's runs-index entry, None when it is not listed."""
    fs, root, _ = commit.resolve(output)
    path = f"{commit.partition(root, 'runs', run_id)}/{commit.PART_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_schema(path, filesystem=fs).metadata[b"linreg.writer"].decode()


def forget(output: str, run_id: str) -> None:
    """Remove a run (index entry first), as prune does."""
    fs, root, _ = commit.resolve(output)
    for dataset in ("runs",) + tuple(d for d in commit.DATASETS_WITH_CV if d != "runs"):
        if fs.get_file_info(commit.partition(root, dataset, run_id)).type == pafs.FileType.Directory:
            fs.delete_dir(commit.partition(root, dataset, run_id))


def untouched(before: dict, after: dict, run_id: str) -> None:
    """Files of runs other than `run_id` are byte-identical."""
    others = {p: h for p, h in before.items() if f"run_id={run_id}/" not in p}
    assert {p: h for p, h in after.items() if p in others} == others


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/out"
    return str(tmp_path / "out")


def kill_and_check(output, run_id, writer, k, *, parts, double_fault=0, cv=None):
    """Kill a commit of `run_id` at operation k (and, with double_fault=j, its recovery at operation j); check
    the state after the kill(s) and after recovery; return the number of processes killed (1 or 2). cv: the
    committer commits a run with (True) or without (False/None) cv."""
    before = snapshot(output)
    listed = runs_writer(output, run_id)
    result = committer(output, run_id, writer, kill_at=k, parts=parts, cv=cv)
    assert result.returncode == KILLED, (k, result.stderr)
    # DuckDB and pandas read object storage through the same pyarrow filesystem here (no httpfs): on S3
    # they are compared with pyarrow at the end (and at every kill in the long version), locally every time.
    state = check_whole(output, all_readers=LONG or "://" not in output)
    untouched(before, snapshot(output), run_id)
    if run_id in state["runs"]:  # listed: whole everywhere (checked), from the old or the new writer
        assert state["runs"][run_id][2] <= {writer, listed}
    if "://" not in output:
        torn_journal_recovers(output, before, run_id, listed)
    kills = 1
    if double_fault:
        result = committer(output, run_id, "recoverer", kill_at=double_fault, recover_only=True)
        assert result.returncode in (0, KILLED), result.stderr  # 0: the recovery had fewer operations
        kills += result.returncode == KILLED
        check_whole(output, all_readers=False)
        untouched(before, snapshot(output), run_id)
    commit.recover(output)
    state = check_recovered(output)
    untouched(before, snapshot(output), run_id)
    if listed:  # a replaced run is never lost: the old version, or the new one rolled forward
        assert run_id in state["runs"]
    return kills


def torn_journal_recovers(output: str, before: dict, run_id: str, listed: str | None) -> None:
    """On a copy of the output after a kill: the staging area's journal, if any, cut in half (as an older
    version's in-place write, or damage, leaves it). recover() completes the commit if its moves had begun,
    else drops it; either way every run is whole, the others byte-identical, a replaced run never lost."""
    fs, root, _ = commit.resolve(output)
    area = next((i.path for i in fs.get_file_info(pafs.FileSelector(f"{root}/{commit.STAGING}", allow_not_found=True))
                 if i.base_name.startswith(f"{run_id}.")), None)
    if area is None or fs.get_file_info(f"{area}/{commit.JOURNAL}").type != pafs.FileType.File:
        return
    copy = tempfile.mkdtemp(prefix="linreg-torn-") + "/out"
    try:
        shutil.copytree(root, copy)
        journal = f"{copy}{area[len(root):]}/{commit.JOURNAL}"
        with open(journal, "rb") as f:
            whole = f.read()
        with open(journal, "wb") as f:
            f.write(whole[:len(whole) // 2])
        commit.recover(copy)
        state = check_recovered(copy)
        untouched(before, snapshot(copy), run_id)
        if listed:
            assert run_id in state["runs"]
    finally:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)


def test_sigkill_at_every_file_operation_of_a_commit(output):
    """A kill before each file operation of a new commit and of a replacing one (predictions in 2 parts, as
    a distributed run writes them), and double faults: the recovery of a decided commit killed too."""
    local = "://" not in output
    parts_options = (1, 2, 3) if LONG else (2,)
    # CI: every operation locally; on S3 (a few seconds per kill) every new-commit operation and every other
    # replacing one. LINREG_LONG_TESTS=1: all of them, for 1, 2 and 3 parts, and 11 double faults.
    double = range(1, 12) if LONG else (range(1, 9) if local else (1,))
    assert committer(output, "earlier", "e0").returncode == 0
    earlier = {p: h for p, h in snapshot(output).items() if "run_id=earlier/" in p}
    kills = 0
    for parts in parts_options:
        probe = committer(output, f"probe-{parts}", "p", parts=parts, count_ops=True)
        new_ops = int(probe.stdout.split()[-1])
        replace = committer(output, f"probe-{parts}", "p2", parts=parts, count_ops=True)
        replace_ops = int(replace.stdout.split()[-1])
        assert 5 <= new_ops < replace_ops
        for k in range(1, new_ops + 1):  # a new run id
            kills += kill_and_check(output, f"new-{parts}-{k}", f"n{k}", k, parts=parts)
            forget(output, f"new-{parts}-{k}")  # keeps the output (and the checks) small
        for k in range(1, replace_ops + 1):  # replacing a committed run
            if not (local or LONG or k % 2 or k == replace_ops):
                continue
            kills += kill_and_check(output, f"probe-{parts}", f"r{k}", k, parts=parts)
    for j in double:  # a commit killed after its journal, then its recovery killed too
        kills += kill_and_check(output, f"probe-{parts}", f"d{j}", 2, parts=parts, double_fault=j)
    print(f"{kills} kill points on {'local disk' if local else 'S3'}")
    assert kills >= (30 if local else 18)  # at least 50 on local disk and S3 together
    check_whole(output, all_readers=True)
    assert {p: h for p, h in snapshot(output).items() if "run_id=earlier/" in p} == earlier


def test_stale_lock_file_of_a_killed_commit_does_not_block(tmp_path):
    """Locally the lock is an flock: a killed holder's lock file is left behind but locks nothing."""
    output = str(tmp_path / "out")
    assert committer(output, "x", "a", kill_at=3).returncode == KILLED  # killed while holding the lock
    assert (tmp_path / "out" / locks.LOCKS / "run_id=x.lock").exists()
    assert committer(output, "x", "b").returncode == 0  # recovers, then replaces
    assert check_recovered(output)["runs"]["x"][2] == {"b"}
    assert not (tmp_path / "out" / locks.LOCKS).exists()


def race(output, run_ids, rows=None):
    """Start one committer per entry of run_ids at once (all staged before any commits); return results."""
    ready = tempfile.mkdtemp(prefix="linreg-race-")
    procs = [committer(output, run_id, f"w{i}", rows=(rows or [10] * len(run_ids))[i], ready_dir=ready,
                       wait_for=len(run_ids), popen=True) for i, run_id in enumerate(run_ids)]
    with ThreadPoolExecutor(len(procs)) as pool:
        results = list(pool.map(lambda p: (p.communicate(timeout=120), p.returncode), procs))
    return [(code, err) for (_, err), code in results]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_same_run_id_at_the_same_time_exactly_one_commits(output, existing):
    if "://" in output and not existing and not LONG:
        pytest.skip("on S3 the replacing race covers the lock; LINREG_LONG_TESTS=1 runs this one too")
    assert committer(output, "other", "o").returncode == 0
    if existing:
        assert committer(output, "same", "old").returncode == 0
    before = snapshot(output)
    results = race(output, ["same"] * 4)
    codes = [code for code, _ in results]
    assert all(code in (0, EXIT_CONFLICT) for code in codes), "\n".join(err for _, err in results)
    assert sorted(codes) == [0, EXIT_CONFLICT, EXIT_CONFLICT, EXIT_CONFLICT], results
    for code, err in results:
        if code == EXIT_CONFLICT:
            assert "Run 'same' was not committed" in err and "another run with the same id" in err, err
    winner = f"w{codes.index(0)}"
    state = check_recovered(output)
    for dataset in commit.DATASETS:  # the committed bytes are exactly the winner's
        assert state[dataset]["same"][2] == {winner}
    untouched(before, snapshot(output), "same")
    fs, root, _ = commit.resolve(output)
    assert fs.get_file_info(f"{root}/{commit.STAGING}").type == pafs.FileType.NotFound  # losers cleaned up


def test_different_run_ids_commit_in_parallel_without_mixing(output):
    ids, rows = [f"par-{i}" for i in range(4)], [5, 17, 40, 3]
    results = race(output, ids, rows)
    assert [code for code, _ in results] == [0] * 4, results
    state = check_recovered(output)
    fs, root, _ = commit.resolve(output)
    for run_id, n, writer in zip(ids, rows, [f"w{i}" for i in range(4)]):
        assert state["predictions"][run_id][:2] == (n, n)
        table = pq.read_table(f"{root}/predictions/run_id={run_id}", filesystem=fs)
        assert set(table.column("run").to_pylist()) == {run_id}  # rows of no other run
        assert set(table.column("writer").to_pylist()) == {writer}


def test_a_live_commit_lock_makes_a_conflict_and_recover_leaves_it_alone(tmp_path):
    """A lock held by a live process: a commit of that run id fails at once with the conflict error, and
    recover() does not roll forward that run id's journal (its owner is moving it)."""
    output = str(tmp_path / "out")
    staging = commit.Staging.create(output, "held")
    for dataset, table in __import__("tests.reliability_committer", fromlist=["tables"]).tables("held", "me", 4).items():
        commit.write_table(staging.file(dataset), table, {b"linreg.writer": b"me", b"linreg.rows": str(table.num_rows).encode()})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pyarrow.fs as f; from linreg.outputs import locks\n"
        f"with locks.commit_lock({output!r}, f.LocalFileSystem(), {output!r}, 'held', owner='holder'):\n"
        "    print('locked', flush=True); time.sleep(60)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from linreg.errors import RunConflictError
        with pytest.raises(RunConflictError, match="is committing it right now.*holder"):
            staging.commit()
        commit._write_text(staging.filesystem, f"{staging.area}/{commit.JOURNAL}",
                            '{"run_id": "held", "datasets": ["weights", "metrics", "predictions", "runs"]}')
        assert commit.recover(output) == []  # left alone while the lock is held
        assert (tmp_path / "out" / "_staging" / staging.name / commit.JOURNAL).exists()
    finally:
        holder.kill()
        holder.wait()
    assert commit.recover(output) == [f"rolled forward the interrupted commit of {staging.name}"]
    assert check_recovered(output)["runs"]["held"][2] == {"me"}


def test_stale_s3_lock_of_a_dead_process_is_broken_and_a_live_one_is_not(s3_bucket):
    import json
    import socket

    output = f"s3://{s3_bucket}/out"
    client = locks.s3_client(output)
    key = f"out/{locks.LOCKS}/run_id=z.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    body = {"owner": "dead", "host": socket.gethostname(), "pid": int(dead.stdout), "pid_start": 1,
            "time": "2999-01-01T00:00:00+00:00"}
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(body).encode())
    assert committer(output, "z", "a").returncode == 0  # broke the dead process's lock
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps({**body, "pid": os.getpid(),
                                                                  "pid_start": locks.process_start(os.getpid())}).encode())
    result = committer(output, "z", "b")
    assert result.returncode == EXIT_CONFLICT and "is committing it right now" in result.stderr
    assert check_recovered(output)["runs"]["z"][2] == {"a"}


def test_a_staging_area_without_a_lease_is_swept_only_when_old(tmp_path):
    """A run creating its staging area has no lease for a moment: recover() of another run must not sweep it
    (found by the same-id race); one left without a lease by a run killed long ago is swept."""
    output = str(tmp_path / "out")
    fresh, old = commit.Staging.create(output, "fresh"), commit.Staging.create(output, "old")
    for staging in (fresh, old):
        os.remove(f"{staging.area}/{commit.LEASE}")
    long_ago = time.time() - 3 * 24 * 3600
    for path in [old.area] + [os.path.join(d, n) for d, dirs, files in os.walk(old.area) for n in dirs + files]:
        os.utime(path, (long_ago, long_ago))
    assert commit.recover(output) == [f"swept the stale staging area {old.name}"]
    assert os.path.isdir(fresh.area) and not os.path.exists(old.area)


def test_locations_and_part_paths():
    """Where a path in the output's filesystem is, as a user writes it; and the one name of a part file."""
    assert commit.location("out", "/abs/out/runs/run_id=a", True) == "/abs/out/runs/run_id=a"
    assert commit.location("file:///abs/out", "/abs/out/runs", True) == "/abs/out/runs"
    assert commit.location("s3://bucket/out?region=x", "bucket/out/runs", False) == "s3://bucket/out/runs"
    assert commit.part_path("root", "runs", "a") == "root/runs/run_id=a/part-0.parquet"
    assert commit.part_path("root", "scores", "a", "score_run_id", 2) == "root/scores/score_run_id=a/part-2.parquet"
