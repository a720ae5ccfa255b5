"""Data-parallel training across ranks (gloo on CPU): the same answers as one process, torchrun launches on
one and two "machines", faults (SIGKILL with and without restarts, a hung rank), the Prefect flow with two
ranks, and the CUDA path with CUDA mocked. Every wait is bounded; no test asserts a speed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as tdist

from linreg.inputs import shard
from linreg.models.fit import TrainOptions, fit
from linreg.parallel import dist
from linreg.parallel.dist import Cluster
from tests.conftest import REPO
from tests.helpers import flow_run_logs, write

FEATURES, TARGETS = ["temp", "rainfall", "humidity"], ["apples", "oranges"]


# ---------------------------------------------------------------------------------------------------------
# Ranks as forked processes of this test (torch is already imported: no 5-10 s start per rank)

def _rank_entry(rank, world, init_file, fn, args, queue, timeout):
    torch.set_num_threads(1)  # OpenMP is not fork-safe with a thread pool; one thread per rank is what torchrun sets
    try:
        tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                 timeout=dt.timedelta(seconds=timeout))
        cluster = Cluster(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        queue.put((rank, "ok", fn(cluster, *args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put((rank, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        queue.close()
        queue.join_thread()  # flush the result before leaving without running the parent's atexit handlers
        os._exit(0)


def run_ranks(tmp_path, world, fn, *args, timeout=120, pg_timeout=60):
    """fn(cluster, *args) on `world` forked ranks; returns [result of rank 0, 1, ...]; fails on error or hang."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    init = tmp_path / f"init-{world}-{time.monotonic_ns()}"
    procs = [ctx.Process(target=_rank_entry, args=(r, world, str(init), fn, args, queue, pg_timeout))
             for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        deadline = time.monotonic() + timeout
        while len(results) < world:
            rank, status, value = queue.get(timeout=max(deadline - time.monotonic(), 0.1))
            results[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


def ok(results):
    errors = [v for s, v in results if s != "ok"]
    assert not errors, errors
    return [v for _, v in results]


# ---------------------------------------------------------------------------------------------------------
# Data whose regions have very different row counts

def skewed_rows(seed=0, regions=24):
    """Rows of `regions` regions with 1 to ~3000 rows each, features far from 0 (conditioning matters)."""
    rng = np.random.default_rng(seed)
    counts = np.unique(np.round(np.geomspace(1, 3000, regions)).astype(int), return_counts=False)
    counts = rng.permutation(np.resize(counts, regions))
    region = np.repeat([f"R{i:03d}" for i in range(regions)], counts)
    X = rng.normal(size=(len(region), 3)) * [10, 40, 5] + [50, 120, 60]
    W = np.array([[0.5, -0.2, 1.5], [-1.0, 0.3, 0.7]])
    Y = X @ W.T + [3.0, -2.0] + rng.normal(size=(len(region), 2))
    return region, X, Y


def batches(X, Y, size=700):
    for i in range(0, len(X), size):
        yield X[i:i + size], Y[i:i + size]


def _fit_shard(cluster, region, X, Y, trainer, options):
    mine = np.array([shard.rank_of(r, cluster.world_size) == cluster.rank for r in region])
    result = fit(batches(X[mine], Y[mine]), trainer=trainer, features=FEATURES, targets=TARGETS, options=options,
                 cluster=cluster)
    return int(mine.sum()), result.model.coef_, result.model.intercept_, result.lr, result.losses


def relative(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b))


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3])
def test_exact_across_ranks_equals_one_process(tmp_path, world):
    region, X, Y = skewed_rows()
    single = fit(batches(X, Y), trainer="exact", features=FEATURES, targets=TARGETS)
    results = ok(run_ranks(tmp_path, world, _fit_shard, region, X, Y, "exact", TrainOptions()))
    rows = [r[0] for r in results]
    assert sum(rows) == len(X) and (world == 1 or max(rows) > 2 * min(rows) or min(rows) >= 0)
    for _, coef, intercept, _, _ in results:  # every rank holds the same, single-process answer
        assert relative(coef, single.model.coef_) <= 1e-10
        assert relative(intercept, single.model.intercept_) <= 1e-10


@pytest.mark.parametrize("trainer", ["nn", "manual"])
def test_full_batch_gradient_descent_is_the_same_with_one_and_two_ranks(tmp_path, trainer):
    region, X, Y = skewed_rows(seed=1, regions=12)
    options = TrainOptions(batch_size=len(X), epochs=40, tol=0, device="cpu")
    one = ok(run_ranks(tmp_path, 1, _fit_shard, region, X, Y, trainer, options))[0]
    two = ok(run_ranks(tmp_path, 2, _fit_shard, region, X, Y, trainer, options))
    assert min(r[0] for r in two) > 0
    assert two[0][3] == pytest.approx(one[3], rel=1e-12)  # the same learning rate from merged moments
    for _, coef, intercept, _, losses in two:
        assert relative(coef, one[1]) < 1e-4 and relative(intercept, one[2]) < 1e-4
        np.testing.assert_allclose(losses, one[4], rtol=1e-4)
    assert one[4][-1] < one[4][0]  # it did train


@pytest.mark.parametrize("average_every", [1, 16])  # DDP, local SGD
def test_mini_batches_with_uneven_and_empty_shards_finish_together(tmp_path, average_every):
    region, X, Y = skewed_rows(seed=2, regions=3)  # 3 regions on 4 ranks: at least one rank has no rows
    options = TrainOptions(batch_size=64, epochs=6, tol=0, device="cpu", average_every=average_every)
    results = ok(run_ranks(tmp_path, 4, _fit_shard, region, X, Y, "nn", options))
    assert min(r[0] for r in results) == 0 and sum(r[0] for r in results) == len(X)
    for r in results[1:]:  # the replicas end equal; every rank ran the same number of epochs
        np.testing.assert_array_equal(r[1], results[0][1])
        assert r[4] == results[0][4]


def _hang_on_rank_1(cluster):
    if cluster.rank == 1:  # hung (well past the 3 s timeout), then too late
        time.sleep(15)
    started = time.monotonic()
    try:
        cluster.barrier()
    except Exception as exc:  # noqa: BLE001
        return f"{time.monotonic() - started:.1f}s {type(exc).__name__}: {exc}"
    return "no error"


def test_a_hung_rank_ends_the_others_after_the_timeout(tmp_path):
    results = run_ranks(tmp_path, 2, _hang_on_rank_1, timeout=60, pg_timeout=3)
    status, message = results[0]
    assert status == "ok" and "no error" not in message and float(message.split("s ")[0]) < 12, message


def test_cuda_path_with_cuda_mocked(monkeypatch):
    """Device from LOCAL_RANK, NCCL backend, data and model moved to the rank's GPU."""
    calls = {}
    monkeypatch.setattr(dist, "no_gpu_driver", lambda: False)  # a machine whose GPU driver is loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.setdefault("init", kw))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cluster = dist.setup("auto", timeout_seconds=42)
    assert cluster.device == torch.device("cuda", 1) and calls["set_device"] == torch.device("cuda", 1)
    assert calls["init"]["backend"] == "nccl" and calls["init"]["device_id"] == torch.device("cuda", 1)
    assert calls["init"]["timeout"] == dt.timedelta(seconds=42)
    assert cluster.comm_device == torch.device("cuda", 1) and dist.backend_for(torch.device("cpu")) == "gloo"

    moved = []
    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):  # record moves to CUDA and stay on the CPU (no GPU here)
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, (torch.device, str)) and torch.device(target).type == "cuda":
            moved.append((tuple(self.shape), torch.device(target)))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    one_gpu = Cluster(rank=0, world_size=1, local_rank=1, device=torch.device("cuda", 1))
    region, X, Y = skewed_rows(regions=4)
    result = fit(batches(X, Y), trainer="nn", features=FEATURES, targets=TARGETS,
                 options=TrainOptions(epochs=3, tol=0, device="cuda"), cluster=one_gpu)
    assert result.epochs == 3
    # the packed, standardized training rows go to the rank's GPU (the model and batches follow X.device)
    assert (len(X), 5) in [shape for shape, _ in moved]
    assert {device for _, device in moved} == {torch.device("cuda", 1)}


# ---------------------------------------------------------------------------------------------------------
# Launched jobs (torchrun in subprocesses)

def env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def tables(tmp_path, partitioned=False):
    region, X, Y = skewed_rows(seed=3, regions=16)
    year = np.arange(len(region)) + 1  # unique keys (region, year)
    weather, yields = tmp_path / "weather", tmp_path / "yields"
    if partitioned:  # hive-partitioned by region: ranks read only their regions' files
        for r in np.unique(region):
            m = region == r
            write(weather / f"region={r}" / "part.parquet", year=year[m], **dict(zip(FEATURES, X[m].T)))
            write(yields / f"region={r}" / "part.parquet", year=year[m], **dict(zip(TARGETS, Y[m].T)))
    else:
        for i, chunk in enumerate(np.array_split(np.random.default_rng(0).permutation(len(region)), 3)):
            write(weather / f"w{i}.parquet", region=region[chunk], year=year[chunk], **dict(zip(FEATURES, X[chunk].T)))
            write(yields / f"y{i}.parquet", region=region[chunk], year=year[chunk], **dict(zip(TARGETS, Y[chunk].T)))
    return str(weather), str(yields)


def read(out, dataset, run_id):
    return pq.read_table(Path(out) / dataset / f"run_id={run_id}")


def test_launch_with_nproc_per_node_equals_one_process(tmp_path):
    from linreg.config import make_config
    from linreg.pipeline import steps

    w, y = tables(tmp_path, partitioned=True)
    out = str(tmp_path / "out")
    single = steps.run(make_config(weather=w, yields=y, output=str(tmp_path / "single"), run_id="one"))
    result = subprocess.run([sys.executable, "-m", "flows.train", "--weather", w, "--yields", y, "--output", out,
                             "--nproc-per-node", "2", "--run-id", "two"], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    files = [int(m.group(1)) for m in re.finditer(r"reads weather (\d+) of 16 file\(s\) \(partitioned", result.stdout)]
    assert len(files) == 2 and sum(files) == 16  # each rank read only its regions' files
    weights = read(out, "weights", "two").to_pandas().set_index(["target", "term"])["weight"]
    expected = read(tmp_path / "single", "weights", "one").to_pandas().set_index(["target", "term"])["weight"]
    assert relative(weights.loc[expected.index], expected) < 1e-10
    parts = sorted(p.name for p in (Path(out) / "predictions" / "run_id=two").iterdir())
    assert parts == ["part-0.parquet", "part-1.parquet"]
    assert read(out, "predictions", "two").num_rows == single.joined.joined_rows
    def by_key(table):  # totals have null region and target: named here so that keys sort
        return {(r["split"], r["region"] or "(total)", r["target"] or "(total)", r["metric"]): r["value"]
                for r in table.to_pylist()}

    metrics, want = by_key(read(out, "metrics", "two")), by_key(read(tmp_path / "single", "metrics", "one"))
    assert sorted(metrics) == sorted(want)
    np.testing.assert_allclose([metrics[k] for k in want], list(want.values()), rtol=1e-9, atol=1e-12)  # atol: zeros
    assert read(out, "runs", "two").num_rows == 1 and not list((Path(out) / "_staging").glob("*"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_with_a_c10d_rendezvous_train_one_job(tmp_path):
    w, y = tables(tmp_path)
    out = str(tmp_path / "out")
    port = free_port()
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                 "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                 "--rdzv-id", "twonode", "-m", "flows.train", "--weather", w, "--yields", y, "--output", out]
                for node in (0, 1)]
    procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # one run, whose id every machine derived from the rendezvous id
    assert [p.name for p in (Path(out) / "runs").iterdir()] == ["run_id=job-twonode"]
    runs = read(out, "runs", "job-twonode").to_pandas()
    assert sorted(p.name for p in (Path(out) / "predictions" / "run_id=job-twonode").iterdir()) == \
        ["part-0.parquet", "part-1.parquet"]
    assert read(out, "predictions", "job-twonode").num_rows == int(runs["joined_rows"][0])
    assert sum("committed" in o for o in outputs) == 1


def _rank_pid(marker: str, rank: int, timeout: float = 120) -> int:
    """The pid of the process of `rank` whose command line mentions `marker` (scan of /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in cmdline and f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process found")


KILLED_JOB = ["--trainer", "nn", "--batch-size", "16", "--tol", "0", "--epochs", "12", "--snapshot-every", "1",
              "--nproc-per-node", "2", "--dist-timeout-seconds", "60"]


def _launch_and_kill(tmp_path, max_restarts):
    w, y = tables(tmp_path)
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "flows.train", "--weather", w, "--yields", y, "--output", out, *KILLED_JOB,
               "--max-restarts", str(max_restarts), "--run-id", "killed"]
    logs = [open(tmp_path / name, "w+") for name in ("stdout", "stderr")]  # files: a full pipe would block ranks
    proc = subprocess.Popen(command, cwd=REPO, env=env(), stdout=logs[0], stderr=logs[1], text=True)
    snapshot = Path(out) / "_staging" / "killed.snapshots" / "snapshot.pt"
    deadline = time.monotonic() + 180
    while not snapshot.exists():  # training is under way: epoch 1 is snapshotted
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
        time.sleep(0.1)
    os.kill(_rank_pid(out, 1), signal.SIGKILL)
    started = time.monotonic()
    proc.wait(timeout=240)
    seconds = time.monotonic() - started
    stdout, stderr = [(tmp_path / name).read_text() for name in ("stdout", "stderr")]
    for f in logs:
        f.close()
    return proc.returncode, stdout, stderr, out, seconds


def test_a_killed_rank_with_restarts_resumes_from_the_snapshot(tmp_path):
    code, stdout, stderr, out, _ = _launch_and_kill(tmp_path, max_restarts=1)
    assert code == 0, stdout + stderr
    resumed = [int(e) for e in re.findall(r"resumed from the snapshot of epoch (\d+)", stdout + stderr)]
    assert resumed and 1 <= min(resumed) < 12
    assert read(out, "runs", "killed").num_rows == 1
    assert not list((Path(out) / "_staging").glob("*"))  # snapshots removed after the commit, no stale staging
    # the resumed job's weights and predictions are the uninterrupted job's, float for float
    w, y = str(tmp_path / "weather"), str(tmp_path / "yields")
    whole = str(tmp_path / "whole")
    result = subprocess.run([sys.executable, "-m", "flows.train", "--weather", w, "--yields", y, "--output", whole,
                             *KILLED_JOB, "--max-restarts", "0", "--run-id", "killed"], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for dataset, keys in (("weights", ["target", "term"]), ("predictions", ["region", "year"])):
        got, want = (read(o, dataset, "killed").to_pandas().sort_values(keys).reset_index(drop=True)
                     for o in (out, whole))
        assert got.equals(want), dataset


def test_a_killed_rank_without_restarts_fails_clearly_and_commits_nothing(tmp_path):
    code, stdout, stderr, out, seconds = _launch_and_kill(tmp_path, max_restarts=0)
    assert code == 1
    assert "rank 1 was killed by signal SIGKILL" in stderr and "nothing was committed" in stderr, stderr
    assert seconds < 120
    for dataset in ("weights", "metrics", "predictions", "runs"):
        assert not (Path(out) / dataset).exists()
    assert [p.name for p in (Path(out) / "_staging").iterdir()] == ["killed.snapshots"]  # kept, to resume


def _job_pids(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions `marker` (the job's unique output path)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("trainer", ["nn", "exact"])
def test_a_stopped_rank_ends_the_launched_job_within_the_timeout(tmp_path, trainer):
    """The command users run, `python -m flows.train --nproc-per-node 2 --dist-timeout-seconds 5`, with rank 1
    stopped (SIGSTOP): rank 0 times out in its collective (gloo for nn, mid-training; the torch-free group of
    linreg.parallel.objects for exact, as soon as rank 1 runs), the launcher kills the stopped rank (torchrun
    alone would wait 30 s more) and names it; nothing is committed, no process and no temporary file is left."""
    from linreg.launch.torchrun import SHUTDOWN_SECONDS

    timeout = 5
    w, y = tables(tmp_path)
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "flows.train", "--weather", w, "--yields", y, "--output", out, "--trainer", trainer,
               "--nproc-per-node", "2", "--run-id", "stopped", "--dist-timeout-seconds", str(timeout)]
    if trainer == "nn":
        command += ["--batch-size", "16", "--tol", "0", "--epochs", "200", "--snapshot-every", "1"]
    logs = [open(tmp_path / name, "w+") for name in ("stdout", "stderr")]  # files: a full pipe would block ranks
    temporary = tmp_path / "tmp"  # the job's temporary files, the killed rank's included, must be removed
    temporary.mkdir()
    proc = subprocess.Popen(command, cwd=REPO, env=dict(env(), TMPDIR=str(temporary)), stdout=logs[0],
                            stderr=logs[1], text=True)
    stopped = None
    try:
        snapshot = Path(out) / "_staging" / "stopped.snapshots" / "snapshot.pt"
        deadline = time.monotonic() + 180
        while trainer == "nn" and not snapshot.exists():  # training is under way: epoch 1 is snapshotted
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
            time.sleep(0.1)
        stopped = _rank_pid(out, 1)
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        proc.wait(timeout=timeout + SHUTDOWN_SECONDS + 120)
        seconds = time.monotonic() - started
        left = _job_pids(out)
    finally:  # never leave a stopped or running rank behind, whatever failed above
        for pid in _job_pids(out) + ([stopped] if stopped else []):
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for f in logs:
            f.close()
    stderr = (tmp_path / "stderr").read_text()
    print(f"the job ended {seconds:.1f} s after the SIGSTOP")
    assert proc.returncode == 1, stderr
    named = f"rank 1 (stopped, as by SIGSTOP) hung: rank 0 gave up waiting for it after --dist-timeout-seconds={timeout}"
    assert named in stderr and "nothing was committed" in stderr, stderr
    assert seconds < timeout + SHUTDOWN_SECONDS + 15, seconds  # torchrun's own 30 s grace would exceed it
    assert left == [] and not Path(f"/proc/{stopped}").exists()
    assert list(temporary.iterdir()) == []
    for dataset in ("weights", "metrics", "predictions", "runs"):
        assert not (Path(out) / dataset).exists()
    staged = [p.name for p in (Path(out) / "_staging").iterdir()] if (Path(out) / "_staging").exists() else []
    assert staged == (["stopped.snapshots"] if trainer == "nn" else [])  # nn's snapshots kept, to resume


def test_the_launcher_names_a_hung_rank_and_not_an_outside_kill(tmp_path):
    """failure() from torchrun's report: a rank the launcher had to kill after SIGTERM is the hung one (the
    timeout of the rank that waited for it is the reason); a rank killed from outside stays the root cause."""
    from linreg.launch import torchrun

    report = ["W1123 ... Sending process 4271 closing signal SIGTERM", "flows.train FAILED", "Failures:", "[1]:",
              "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 4271)", "Root Cause (first observed failure):",
              "[0]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : 1 (pid: 4270)"]
    (tmp_path / "rank-0.json").write_text(json.dumps({
        "rank": 0, "type": "RuntimeError", "input_error": False, "time": 1.0,
        "message": "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 7000ms "
                   "for recv operation to complete"}))
    hung = str(torchrun.failure(1, str(tmp_path), report, timeout=7, killed={4271: "stopped"}))
    assert hung.startswith("rank 1 (stopped, as by SIGSTOP) hung: rank 0 gave up waiting for it after "
                           "--dist-timeout-seconds=7 (RuntimeError: Timed out waiting 7000ms"), hung
    assert "unbound_buffer.cc" not in hung and hung.endswith("nothing was committed")
    # torchrun's own forced kill (after its grace) names the rank the same way, without a state
    torchrun_killed = report + ["W1123 ... Unable to shutdown process 4271 via 15, forcefully exiting via 9"]
    assert str(torchrun.failure(1, str(tmp_path), torchrun_killed, timeout=7)).startswith("rank 1 (not answering) hung")
    # the same report without a forced kill: rank 1 died from outside (OOM killer), that is the root cause
    outside = str(torchrun.failure(1, str(tmp_path), report, timeout=7))
    assert outside.startswith("rank 1 was killed by signal SIGKILL (out of memory"), outside
    # no rank killed at all: the timed-out rank's error, with what the timeout means
    alone = str(torchrun.failure(1, str(tmp_path), report[1:5] + report[6:], timeout=7))
    assert alone.startswith("rank 0 failed: RuntimeError: Timed out") and "did not answer within " \
        "--dist-timeout-seconds=7" in alone, alone


def test_prefect_flow_runs_a_two_rank_job(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train
    from linreg.config import make_config

    w, y = tables(tmp_path)
    out = str(tmp_path / "out")
    with prefect_test_harness(server_startup_timeout=120):
        state = asyncio.run(train(make_config(weather=w, yields=y, output=out, trainer="manual", nproc_per_node=2,
                                              run_id="flow-dist", epochs=30), return_state=True))
        assert state.is_completed()
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[state.state_details.flow_run_id])))
            messages = flow_run_logs(client, state.state_details.flow_run_id, until=lambda m: all(
                any(x.startswith(f"[rank {r}]") for x in m) for r in (0, 1)))
    names = {t.name.rsplit("-flow-dist", 1)[0] for t in tasks}
    assert {"plan", "train-job", "commit"} <= names and "validate-and-join" not in names
    assert read(out, "runs", "flow-dist").num_rows == 1
    assert len(list((Path(out) / "predictions" / "run_id=flow-dist").iterdir())) == 2
    assert any(m.startswith("[rank 0]") for m in messages) and any(m.startswith("[rank 1]") for m in messages)


def test_local_sgd_reaches_the_training_loss_of_one_process_with_fewer_collectives(tmp_path):
    """--average-every H (nn, several ranks): each rank steps on its own rows and the models are averaged, by
    rows, every H steps and at every epoch's end: the same training loss within 1% as one process with the
    same seed and epochs, every rank holding the same model."""
    region, X, Y = skewed_rows(seed=4, regions=30)
    base = dict(batch_size=256, epochs=8, tol=0, device="cpu", seed=1)
    one = ok(run_ranks(tmp_path, 1, _fit_shard, region, X, Y, "nn", TrainOptions(**base)))[0]
    for every in (1, 8, 64):  # 1: DDP's all-reduce of every step's gradients; 8 and 64 (the default): local SGD
        two = ok(run_ranks(tmp_path, 2, _fit_shard, region, X, Y, "nn", TrainOptions(**base, average_every=every)))
        assert min(r[0] for r in two) > 0
        np.testing.assert_array_equal(two[0][1], two[1][1])  # the ranks end with one model
        mse = [float(np.mean((X @ r[1].T + r[2] - Y) ** 2)) for r in (one, two[0])]  # the training MSE
        assert mse[1] == pytest.approx(mse[0], rel=0.01), (every, mse)
        assert relative(two[0][1], one[1]) < 0.05  # mini-batches differ (each rank shuffles its own rows)
    assert one[4][-1] < 0.5 * one[4][0]  # it did train


def _train(tmp_path, w, y, name, *options):
    out = str(tmp_path / name)
    result = subprocess.run([sys.executable, "-m", "flows.train", "--weather", w, "--yields", y, "--output", out,
                             "--run-id", name, *options], cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    weights = read(out, "weights", name).to_pandas().set_index(["target", "term"])["weight"]
    return weights, result.stdout + result.stderr


def test_ranks_stream_their_shards_beyond_their_budget(tmp_path):
    """--memory-budget far below the rows: each of two ranks streams its own shard every epoch. Full-batch
    gradient descent (manual, a fixed lr) takes the same steps as one process streaming all rows (to float32
    summation order); nn with mini-batches (DDP and local SGD) reaches one process's training MSE within 1%."""
    from datagen.synth import generate

    generate(tmp_path / "data", rows=60_000, regions=600, files=8, seed=5)  # 1.4MB of float32 training rows
    w, y = str(tmp_path / "data" / "weather"), str(tmp_path / "data" / "yields")
    full_batch = ["--trainer", "manual", "--lr", "0.02", "--epochs", "40", "--tol", "0", "--memory-budget", "1MB"]
    one, _ = _train(tmp_path, w, y, "one", *full_batch)
    two, logs = _train(tmp_path, w, y, "two", *full_batch, "--nproc-per-node", "2")
    assert {r for r in (0, 1) if re.search(rf"\[rank {r}\] .*streaming them from", logs)} == {0, 1}, logs
    assert relative(two.loc[one.index], one) < 1e-5
    exact_mse = None
    for name, options in (("exact", ["--trainer", "exact"]),
                          ("ddp", ["--trainer", "nn", "--nproc-per-node", "2", "--memory-budget", "1MB",
                                   "--average-every", "1"]),
                          ("local", ["--trainer", "nn", "--nproc-per-node", "2", "--memory-budget", "1MB"])):
        _, logs = _train(tmp_path, w, y, name, *options, "--epochs", "30")
        metrics = read(str(tmp_path / name), "metrics", name).to_pandas()
        mse = metrics.query("split == 'train' and metric == 'mse' and region.isnull() and target.isnull()")["value"]
        if exact_mse is None:
            exact_mse = float(mse.iloc[0])
        else:
            assert "streaming them from" in logs and float(mse.iloc[0]) <= 1.01 * exact_mse, (name, mse, exact_mse)


def _union(cluster, lists):
    return cluster.union_sorted(lists[cluster.rank])


def test_union_sorted_merges_the_ranks_sorted_values_without_repeats(tmp_path):
    rng = np.random.default_rng(7)
    values = [f"R{i:05d}" for i in range(3000)]
    lists = [sorted(set(rng.choice(values, 1200).tolist())) for _ in range(3)]  # overlapping, some empty below
    lists[2] = []
    results = ok(run_ranks(tmp_path, 3, _union, lists))
    assert results[0] == results[1] == results[2] == sorted(set(lists[0]) | set(lists[1]))
