"""The Prefect flow end to end, and the command line as a user runs it."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows import cli
from flows.train import train
from linreg.config import make_config
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError
from tests.conftest import REPO, SAMPLE
from tests.helpers import linear_tables, write


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_runs_every_step_under_prefect(prefect_server, tmp_path):
    w, y, _, _ = linear_tables(tmp_path)
    config = make_config(weather=w, yields=y, output=str(tmp_path / "out"), trainer="nn", run_id="flow-1")
    state = asyncio.run(train(config, return_state=True))
    assert state.is_completed()
    summary = state.result()
    assert summary.run_id == "flow-1" and summary.rows["train"] + summary.rows["holdout"] == 200
    for dataset in ("weights", "metrics", "predictions", "runs"):
        assert pq.read_table(tmp_path / "out" / dataset / "run_id=flow-1").num_rows > 0

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.name == "train-nn-flow-1"
    assert {t.name for t in tasks} == {f"{step}-flow-1" for step in ("plan", "validate-and-join", "split", "train",
                                                                     "evaluate", "commit", "report", "artifacts")}
    assert all(t.state.is_completed() for t in tasks)
    # the inputs Prefect is told not to walk into (opaque) still link each task to the task that made them
    by_id = {t.id: t.name.rsplit("-flow-1", 1)[0] for t in tasks}
    inputs = {by_id[t.id]: {k: {by_id.get(getattr(i, "id", None)) for i in v} for k, v in t.task_inputs.items()}
              for t in tasks}
    assert inputs["train"]["split"] == {"split"} and inputs["evaluate"]["fit"] == {"train"}
    assert inputs["commit"]["evaluation"] == {"evaluate"} and inputs["report"]["evaluation"] == {"evaluate"}


def test_a_run_without_a_run_id_carries_the_same_new_id_in_its_name_its_tasks_and_its_outputs(prefect_server, tmp_path):
    """As a deployment's run does: the id is decided from the flow run itself (`tasks.run_ids`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from linreg.config import RUN_ID_PATTERN

    w, y, _, _ = linear_tables(tmp_path)
    state = asyncio.run(train(make_config(weather=w, yields=y, output=str(tmp_path / "out")), return_state=True))
    run_id = state.result().run_id
    assert RUN_ID_PATTERN.match(run_id) and run_id[0].isdigit()
    assert os.listdir(tmp_path / "out" / "runs") == [f"run_id={run_id}"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.name == f"train-exact-{run_id}"
    assert tasks and all(t.name.endswith(f"-{run_id}") for t in tasks)


def test_flow_fails_with_the_input_error_and_writes_nothing(prefect_server, tmp_path):
    w = write(tmp_path / "w.parquet", region=["a", "b"], year=[1, 1], temp=[1.0, float("nan")],
              rainfall=[1.0, 2.0], humidity=[1.0, 2.0])
    y = write(tmp_path / "y.parquet", region=["a", "b"], year=[1, 1], apples=[1.0, 2.0], oranges=[1.0, 2.0])
    config = make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="bad")
    with pytest.raises(InputError, match="column 'temp' has 1 null, NaN or infinite"):
        asyncio.run(train(config))
    assert not any((tmp_path / "out").rglob("*.parquet"))
    assert not (tmp_path / "out" / "_staging").exists()


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flows.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_help_documents_every_option_and_exit_codes(tmp_path):
    from linreg.config import TrainConfig

    result = _cli(["--help"], tmp_path)
    assert result.returncode == 0
    text, packed = " ".join(result.stdout.split()), "".join(result.stdout.split())  # argparse wraps at hyphens too
    for name, field in TrainConfig.model_fields.items():  # every field of the one configuration, by its flag
        extra = field.json_schema_extra.get("cli", {}) if isinstance(field.json_schema_extra, dict) else {}
        flag = extra.get("negate") or extra.get("flag") or "--" + name.replace("_", "-")
        assert flag in result.stdout, f"--help does not offer {name} ({flag})"
        assert "".join(field.description.split()[:6]) in packed, f"--help does not explain {flag}"
    assert "Exit codes: 0 success; 2 bad input" in text


def test_cli_with_no_arguments_trains_on_the_sample(tmp_path):
    """No Prefect server configured: the run happens in this process (no temporary server, nothing recorded
    in Prefect, one line saying so), with the same outputs and report."""
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-m", "flows.train"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**env, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "15 joined" in result.stdout and "holdout MSE" in result.stdout
    (run,) = (tmp_path / "output" / "weights").glob("run_id=*")
    assert (tmp_path / "output" / "reports" / run.name / "report.png").stat().st_size > 0
    assert [line for line in result.stderr.splitlines() if "not recorded in Prefect" in line] == [cli.NOT_RECORDED]
    assert "temporary server" not in result.stderr + result.stdout
    assert not list(home.rglob("*.db"))  # no server was started, so no database holds a flow run


def test_cli_with_an_unreachable_server_fails_naming_it_and_writes_nothing(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    result = subprocess.run([sys.executable, "-m", "flows.train"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": url})
    assert result.returncode == EXIT_FAILURE
    assert "Traceback" not in result.stderr + result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert url in error and "does not answer" in error
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").rglob("*.parquet"))


def test_a_run_without_prefect_writes_what_the_flow_writes(prefect_server, tmp_path):
    """The in-process run and the Prefect flow: the same weights, metrics and predictions, value for value."""
    from linreg.pipeline import inprocess

    w, y, _, _ = linear_tables(tmp_path)
    outputs = {}
    for name, runner in (("flow", lambda config: asyncio.run(train(config))), ("inprocess", inprocess.run)):
        runner(make_config(weather=w, yields=y, output=str(tmp_path / name), trainer="nn", epochs=20, run_id="same"))
        outputs[name] = {d: pq.read_table(tmp_path / name / d / "run_id=same").sort_by(
            [(c, "ascending") for c in ("split", "target", "term", "metric", "region") if c in
             pq.read_schema(next((tmp_path / name / d / "run_id=same").glob("*.parquet"))).names])
            for d in ("weights", "metrics", "predictions")}
        assert (tmp_path / name / "reports" / "run_id=same" / "report.html").exists()
    for dataset in ("weights", "metrics", "predictions"):
        assert outputs["flow"][dataset].equals(outputs["inprocess"][dataset]), dataset


def test_cli_bad_input_exits_2_with_one_paragraph_and_no_traceback(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    result = _cli(["--features", "temp,sunshine"], tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr + result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "has no column 'sunshine'" in error[0]
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").rglob("*.parquet"))


def test_cli_usage_error_exits_2(tmp_path):
    result = _cli(["--trainer", "sgd"], tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_help_is_answered_without_torch_prefect_or_duckdb(tmp_path):
    """--help comes from the configuration alone, so it answers at once; the text is the full parser's."""
    probe = ("import runpy, sys\nsys.argv = ['flows.train', '--help']\n"
             "try:\n    runpy.run_module('flows.train', run_name='__main__')\nexcept SystemExit as exc:\n"
             "    assert exc.code == 0, exc.code\n"
             "heavy = sorted(m for m in ('torch', 'prefect', 'duckdb', 'matplotlib') if m in sys.modules)\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr
    full = subprocess.run([sys.executable, "-c", "import flows.train as t; from linreg.config import build_parser; print(build_parser(description="
                           "t.__doc__.split(chr(10) * 2)[0]).format_help(), end='')"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "100"})
    assert result.stdout == full.stdout and "--memory-budget" in result.stdout


def _modules_after_a_run(tmp_path, argv: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `python -m flows.train argv` (no server configured) in a fresh interpreter; the heavy modules it loaded."""
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample", dirs_exist_ok=True)
    probe = (f"import runpy, sys\nsys.argv = ['flows.train'] + {argv!r}\n"
             "import linreg.launch.ending as ending\n"  # end with SystemExit, so that this probe can look after the run
             "ending.exit_now = sys.exit\n"
             "try:\n    runpy.run_module('flows.train', run_name='__main__')\nexcept SystemExit as exc:\n"
             "    assert exc.code == 0, exc.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'prefect', 'matplotlib') if m in sys.modules), file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**env, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("HEAVY ")]
    return result, eval(line[len("HEAVY "):])


def test_an_exact_run_without_a_server_loads_neither_torch_nor_prefect(tmp_path):
    """The exact trainer needs no torch, and a run that Prefect does not record needs no Prefect: the sample
    run starts in a fraction of the time (bench/command_bench.py measures it). The nn trainer does load torch."""
    result, heavy = _modules_after_a_run(tmp_path, ["--output", str(tmp_path / "exact")])
    assert heavy == ["matplotlib"] and "15 joined" in result.stdout  # matplotlib: the report was drawn
    assert list((tmp_path / "exact" / "reports").glob("run_id=*/report.png"))
    _, heavy = _modules_after_a_run(tmp_path, ["--output", str(tmp_path / "nn"), "--trainer", "nn", "--epochs", "2"])
    assert heavy == ["matplotlib", "torch"]


def test_whether_a_server_is_configured_is_read_from_the_environment_and_the_active_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    assert cli.no_server_configured()  # no profiles file: Prefect's built-in profile sets no server
    (tmp_path / "home").mkdir()
    profiles = tmp_path / "home" / "profiles.toml"
    profiles.write_text('active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
                        '[profiles.bare]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n')
    assert not cli.no_server_configured()
    monkeypatch.setenv("PREFECT_PROFILE", "bare")
    assert cli.no_server_configured()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not cli.no_server_configured()
    monkeypatch.delenv("PREFECT_API_URL")
    (tmp_path / ".env").write_text("PREFECT_API_URL=http://127.0.0.1:4200/api\n")
    assert not cli.no_server_configured()  # a source only Prefect reads: Prefect decides


def _cli_with_server(args, cwd):
    """`python -m flows.train args` in `cwd`, with the test server configured in its environment."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_API_URL=PREFECT_API_URL.value())
    return subprocess.run([sys.executable, "-m", "flows.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _task_logs(run_id: str) -> dict[str, list[str]]:
    """The log messages of the flow run named train-exact-<run_id>, by task run name (None: the flow's own)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"train-exact-{run_id}"])))
        deadline = time.monotonic() + 30
        while True:  # the server records task runs' states from their events, after the command may have ended
            tasks = {t.id: t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))}
            if all(t.state is not None for t in tasks.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert flow_run.state.is_failed() or all(t.state.is_completed() for t in tasks.values())
        logs = {}
        for entry in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])), limit=200):
            logs.setdefault(tasks[entry.task_run_id].name if entry.task_run_id else None, []).append(entry.message)
    return {"state": flow_run.state.type.value, **logs}


def _heartbeat_events(flow_run_name: str, timeout: float = 30.0) -> int:
    """How many prefect.flow-run.heartbeat events the server holds for the named flow run (waiting for the
    server to store the events it received, up to `timeout` seconds)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    deadline = time.monotonic() + timeout
    while True:
        found = httpx.post(PREFECT_API_URL.value() + "/events/filter", json={
            "filter": {"event": {"prefix": ["prefect.flow-run.heartbeat"]}}, "limit": 50}).json()["events"]
        count = sum(e["resource"].get("prefect.resource.name") == flow_run_name for e in found)
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def test_a_command_with_a_server_begins_plan_and_join_ahead_and_records_them_as_tasks(prefect_server, tmp_path):
    """`python -m flows.train` with a server: the plan and the join begin while Prefect starts
    (linreg.pipeline.headstart); the flow run still records every task, the join's task says it took the
    head start, and the outputs equal those of the same command without a server."""
    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    recorded = _cli_with_server(["--run-id", "ahead", "--output", "recorded"], tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    plain = _cli(["--run-id", "ahead", "--output", "plain"], tmp_path)  # the test's environment has no server
    assert plain.returncode == 0 and cli.NOT_RECORDED in plain.stderr
    logs = _task_logs("ahead")
    assert logs["state"] == "COMPLETED"
    assert {name for name in logs if name not in ("state", None)} >= {"plan-ahead", "validate-and-join-ahead",
                                                                      "evaluate-ahead", "commit-ahead"}
    assert any("begun while the flow run started" in m for m in logs["plan-ahead"])
    assert any("begun while the flow run started" in m for m in logs["validate-and-join-ahead"])
    # the command ends without the interpreter's finalization (linreg.launch.ending), after Prefect's queues
    # are drained: the flow run's last line is on the server when the command has exited
    assert any("Finished in state Completed" in m for m in logs[None])
    # the flow is async so that the engine leaves its heartbeat thread to end with the process instead of
    # joining it (up to 1 s at each run's end): the flow run still sends its heartbeats
    assert train.isasync and _heartbeat_events("train-exact-ahead") >= 1
    for dataset in ("weights", "metrics", "predictions"):
        tables = [pq.read_table(tmp_path / out / dataset / "run_id=ahead") for out in ("recorded", "plain")]
        columns = [c for c in ("split", "target", "term", "metric", "region", "year") if c in tables[0].column_names]
        a, b = (t.sort_by([(c, "ascending") for c in columns]) for t in tables)
        assert a.equals(b), dataset
    assert not (tmp_path / "recorded" / "_staging").exists() or not os.listdir(tmp_path / "recorded" / "_staging")


@pytest.mark.parametrize("fault, message", [
    (["--features", "temp,sunshine"], "has no column 'sunshine'"),  # the plan begun ahead fails
    ("nan", "column 'temp' has 1 null, NaN or infinite"),  # the join begun ahead fails
])
def test_an_input_error_begun_ahead_fails_its_task_with_one_paragraph_and_writes_nothing(prefect_server, tmp_path,
                                                                                        fault, message):
    if fault == "nan":
        w = write(tmp_path / "w.parquet", region=["a", "b"], year=[1, 1], temp=[1.0, float("nan")],
                  rainfall=[1.0, 2.0], humidity=[1.0, 2.0])
        y = write(tmp_path / "y.parquet", region=["a", "b"], year=[1, 1], apples=[1.0, 2.0], oranges=[1.0, 2.0])
        args = ["--weather", w, "--yields", y]
    else:
        shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
        args = fault
    run_id = f"bad-{len(args)}"
    result = _cli_with_server([*args, "--run-id", run_id, "--output", "out"], tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert message in error
    assert not any((tmp_path / "out").rglob("*.parquet"))
    assert not (tmp_path / "out" / "_staging").exists() or not os.listdir(tmp_path / "out" / "_staging")
    assert _task_logs(run_id)["state"] == "FAILED"


@pytest.mark.parametrize("when", ["no server, training", "server, importing Prefect", "server, training"])
def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing_staged(tmp_path, request, when):
    """Ctrl-C in the middle of a run: without a server (the steps in process) while training; with one while
    Prefect imports (the plan begun ahead), and while the flow trains (its steps never await, so Ctrl-C must
    raise in the step, not merely ask asyncio to cancel the flow's task). Exit 130, one line saying what
    became of the run, no traceback, nothing committed, and without a server the staging area removed."""
    import signal
    import threading

    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    if when.startswith("server"):
        request.getfixturevalue("prefect_server")
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    proc = subprocess.Popen([sys.executable, "-m", "flows.train", "--trainer", "nn", "--epochs", "1000000", "--tol",
                             "0", "--output", "out"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, split_done = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if "Task run 'split-" in line and "Finished" in line:
                split_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    staging = tmp_path / "out" / "_staging"
    deadline = time.monotonic() + 120
    try:
        while not (staging.exists() and any(staging.iterdir())):  # planned: the run is under way
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        if when == "server, training":
            assert split_done.wait(120), "".join(lines)
            assert proc.poll() is None
        # planned ahead at once, while Prefect imports for about 1.5 s more; or 1 s into training
        time.sleep(0.2 if when == "server, importing Prefect" else 1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # stderr is the reader's; stdout holds at most the summary
    finally:
        if proc.poll() is None:  # a run that ignored the signal would train for ever
            proc.kill()
    stdout = proc.stdout.read()
    reader.join(10)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert [line for line in stderr.splitlines() if line.startswith("interrupted: ")] == [cli.INTERRUPTED]
    if when == "no server, training":  # with a server, a plan begun ahead is left to be swept as stale later
        assert not any(staging.iterdir()) if staging.exists() else True
    assert not (tmp_path / "out" / "weights").exists()
