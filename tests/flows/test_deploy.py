"""The deployments for real: a Prefect server on 127.0.0.1, a process work pool, `prefect deploy` from
deployment.yaml, a worker, and training and scoring runs triggered with parameters.

One server and one worker serve the module (about 15 s to start); every process is stopped at the end,
also when a test fails. Runs are polled with a bounded timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.helpers import flow_run_logs, linear_tables, stop_process_group, write

POOL = "linreg"  # the work pool named in deployment.yaml
RUN_TIMEOUT = 240  # seconds for a flow run to reach a final state (a run takes ~10 s: process start, imports)
STEPS = ("plan", "validate-and-join", "split", "train", "evaluate", "commit", "report")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    env: dict
    logs: Path

    def prefect(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=self.env, text=True,
                                capture_output=True, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        class _Client:
            def __enter__(inner):
                inner.settings = temporary_settings(updates={PREFECT_API_URL: self.url})
                inner.settings.__enter__()
                inner.client = get_client(sync_client=True)
                return inner.client.__enter__()

            def __exit__(inner, *exc):
                inner.client.__exit__(*exc)
                inner.settings.__exit__(*exc)

        return _Client()


def _start(args, env, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _our_processes(url: str) -> list[int]:
    """Pids of processes started for this server: the server, the worker and its flow-run subprocesses
    (each in a session of its own), recognized by PREFECT_API_URL in their environment."""
    marker = f"PREFECT_API_URL={url}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def _stop(processes: list[subprocess.Popen], url: str) -> None:
    for proc in reversed(processes):  # the worker first, then the server
        stop_process_group(proc)
    for pid in _our_processes(url):  # flow runs left behind by a failed test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the Prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Prefect server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PYTHONPATH=str(REPO),
               # a run waiting for the deployment's concurrency slot retries every 2 s (default 30 s)
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_HEARTBEAT_SECONDS="5")
    processes: list[subprocess.Popen] = []
    logs = Path(home)
    try:
        started = time.monotonic()
        server = _start(["server", "start", "--host", "127.0.0.1", "--port", port], env, logs / "server.log")
        processes.append(server)
        _wait_healthy(url, server, logs / "server.log")
        print(f"server healthy after {time.monotonic() - started:.1f} s")
        s = Stack(url=url, env=env, logs=logs)
        s.prefect("work-pool", "create", POOL, "--type", "process")
        deployed = s.prefect("--no-prompt", "deploy", "--prefect-file", "deployment.yaml", "--all")
        for name in ("train/nightly", "score/on-demand", "prune/keep-last-30"):
            assert name in deployed.stdout, deployed.stdout
        processes.append(_start(["worker", "start", "--pool", POOL, "--name", "test-worker"], env,
                                logs / "worker.log"))
        print(f"stack ready after {time.monotonic() - started:.1f} s")
        yield s
    finally:
        _stop(processes, url)


def _wait_final(stack: Stack, flow_run_id, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    worker_log = (stack.logs / "worker.log").read_text()[-4000:]
    raise AssertionError(f"flow run {flow_run_id} not finished within {timeout} s (state {run.state}).\n{worker_log}")


def _trigger(stack: Stack, deployment: str, parameters: dict) -> str:
    """`prefect deployment run` as a user types it; returns the flow run id."""
    result = stack.prefect("deployment", "run", deployment, "--params", json.dumps(parameters))
    return re.search(r"UUID:\s*([0-9a-f-]{36})", result.stdout).group(1)


def test_deployed_training_and_scoring_runs_complete_on_a_worker(stack, tmp_path):
    w, y, W, b = linear_tables(tmp_path / "data")
    out = tmp_path / "out"
    flow_run_id = _trigger(stack, "train/nightly", {"config": {"weather": w, "yields": y, "output": str(out),
                                                               "trainer": "nn", "run_id": "deployed-1"}})
    run = _wait_final(stack, flow_run_id)
    assert run.state.is_completed(), run.state.message
    assert run.name == "train-nn-deployed-1"
    for dataset in ("weights", "metrics", "predictions", "runs"):
        assert pq.read_table(out / dataset / "run_id=deployed-1").num_rows > 0
    assert (out / "reports" / "run_id=deployed-1" / "report.png").stat().st_size > 10_000
    with stack.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert {a.type for a in artifacts} == {"table", "markdown"}

    # Scoring deployment: new regions, the model just trained.
    new_weather = write(tmp_path / "new" / "weather.parquet", region=["N1", "N2"], year=[2030, 2030],
                        temp=[50.0, 60.0], rainfall=[40.0, 45.0], humidity=[55.0, 65.0])
    score_id = _trigger(stack, "score/on-demand", {"config": {"model": str(out), "weather": new_weather,
                                                              "score_run_id": "scored-1"}})
    scored = _wait_final(stack, score_id)
    assert scored.state.is_completed(), scored.state.message
    scores = pq.read_table(out / "scores" / "score_run_id=scored-1").to_pydict()
    assert scores["region"] == ["N1", "N2"] and scores["model_run_id"] == ["deployed-1"] * 2


def _has_step_logs(logs: list[str], run_id: str) -> bool:
    return all(any(m.startswith(f"run {run_id}: {step}: ") for m in logs) for step in STEPS)


def test_two_runs_triggered_together_run_one_after_the_other(stack, tmp_path):
    """The training deployment's concurrency limit is 1 with collision strategy ENQUEUE: the second run
    waits in state AwaitingConcurrencySlot and starts when the first has finished; both commit."""
    w, y, _, _ = linear_tables(tmp_path / "data")
    out = tmp_path / "out"
    with stack.client() as client:
        deployment = client.read_deployment_by_name("train/nightly")
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
        configs = [{"weather": w, "yields": y, "output": str(out), "run_id": "together-1"},
                   {"weather": w, "yields": y, "output": str(out)}]  # no run id: the flow picks one
        ids = [client.create_flow_run_from_deployment(deployment.id, parameters={"config": c}).id for c in configs]
    runs = [_wait_final(stack, i) for i in ids]
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]

    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time  # never both running
    with stack.client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        waited = [s.name for s in client.read_flow_run_states(second.id)]
        assert "AwaitingConcurrencySlot" in waited, waited
        committed = sorted(p.name.split("=", 1)[1] for p in (out / "runs").iterdir())
        assert len(committed) == 2 and "together-1" in committed
        for run in runs:
            run_id = run.name.split("-", 2)[2]  # train-<trainer>-<run id>
            assert run.name.startswith("train-exact-") and run_id in committed
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            assert {t.name for t in tasks} >= {f"{step}-{run_id}" for step in STEPS}
            logs = flow_run_logs(client, run.id, until=lambda m: _has_step_logs(m, run_id))
            for step in STEPS:
                assert any(m.startswith(f"run {run_id}: {step}: ") and " s" in m for m in logs), (step, logs)
