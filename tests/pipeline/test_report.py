"""What a user sees of a training run under Prefect: the report and its pictures, the artifacts, run
names and progress lines, retries of transient I/O errors (and none for bad input), and reuse of an
unchanged run."""

import asyncio
import errno
import json
import os
import subprocess
import sys

import matplotlib.image as mpimg
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.train import main as train_main
from flows.train import train
from linreg.config import make_config
from linreg.errors import InputError, TransientIOError, is_transient
from linreg.outputs import commit
from tests.conftest import REPO
from tests.helpers import flow_run_logs, linear_tables, write


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _task_runs(flow_run_id):
    with get_client(sync_client=True) as client:
        return {t.name: t for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}


def _metrics(out, run_id):
    return pq.read_table(f"{out}/metrics/run_id={run_id}").to_pylist()


@pytest.fixture(scope="module")
def nn_run(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("nn-run")
    w, y, _, _ = linear_tables(root, rows=400, regions=40)
    out = str(root / "out")
    state = asyncio.run(train(make_config(weather=w, yields=y, output=out, trainer="nn", run_id="pictured"),
                              return_state=True))
    assert state.is_completed()
    return out, state


def test_report_pictures_are_drawn_and_show_the_runs_numbers(nn_run):
    out, state = nn_run
    png = os.path.join(out, "reports", "run_id=pictured", "report.png")
    image = mpimg.imread(png)[..., :3]
    h, w = image.shape[:2]
    assert h > 400 and w > 600
    # Not blank: every quadrant (loss curve, region bars, the scatter plots) has varying pixels.
    for quadrant in (image[:h // 2, :w // 2], image[:h // 2, w // 2:], image[h // 2:, :w // 2], image[h // 2:, w // 2:]):
        assert quadrant.std() > 0.05
    page = open(os.path.join(out, "reports", "run_id=pictured", "report.html")).read()
    assert "<img src='report.png'" in page and "Run pictured (nn)" in page
    metrics = _metrics(out, "pictured")
    for r in metrics:
        if r["region"] is None and r["metric"] in ("mse", "r2"):
            assert f"{r['value']:.6g}" in page  # every MSE and R^2 per split and target
    regions = [r for r in metrics if r["split"] == "holdout" and r["region"] is not None and r["target"] is None
               and r["metric"] == "mse"]
    assert len(regions) == 8 and all(f"<td>{r['region']}</td><td>{r['value']:.6g}</td>" in page for r in regions)
    assert not any(f.endswith(".parquet") for f in os.listdir(os.path.dirname(png)))


def test_artifacts_hold_the_metrics_table_and_the_summary(nn_run):
    out, state = nn_run
    with get_client(sync_client=True) as client:
        artifacts = {a.type: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))}
    assert set(artifacts) == {"table", "markdown"}
    table = artifacts["table"].data if isinstance(artifacts["table"].data, list) else json.loads(artifacts["table"].data)
    metrics = {(r["split"], r["target"], r["metric"]): r["value"] for r in _metrics(out, "pictured")
               if r["region"] is None}
    assert {(row["split"], row["target"]) for row in table} == {(s, t) for s in ("train", "holdout")
                                                                  for t in ("apples", "oranges", None)}
    for row in table:
        assert row["mse"] == metrics[row["split"], row["target"], "mse"]
        assert row["rows"] == metrics[row["split"], None, "rows"]
    summary = artifacts["markdown"].data
    runs = pq.read_table(f"{out}/runs/run_id=pictured").to_pylist()[0]
    assert runs["input_fingerprint"] in summary  # the input fingerprint
    assert '"trainer": "nn"' in summary and '"run_id": "pictured"' in summary  # the configuration
    for target in ("apples", "oranges"):
        assert f"| holdout | {target} | {runs['holdout_rows']} | {metrics['holdout', target, 'mse']:.6g} |" in summary
    assert f"- joined: {runs['joined_rows']}" in summary
    assert f"{out}/predictions/run_id=pictured" in summary  # where the outputs are
    assert f"(file://{out}/reports/run_id=pictured/report.png)" in summary  # the link to the report


def _has_step_lines(messages):
    return (any(m.startswith("run pictured: validate-and-join: ") for m in messages)
            and any(m.startswith("run pictured: train: nn on ") for m in messages))


def test_runs_and_progress_lines_carry_the_run_id(nn_run):
    out, state = nn_run
    flow_run_id = state.state_details.flow_run_id
    tasks = _task_runs(flow_run_id)
    steps = ("plan", "validate-and-join", "split", "train", "evaluate", "commit", "report", "artifacts")
    assert set(tasks) == {f"{s}-pictured" for s in steps}
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).name == "train-nn-pictured"
        logs = flow_run_logs(client, flow_run_id, until=lambda messages: _has_step_lines(messages))
    joined = next(m for m in logs if m.startswith("run pictured: validate-and-join: "))
    assert "400 joined rows x 7 columns" in joined and joined.endswith(" s")
    assert any(m.startswith("run pictured: train: nn on ") and "epoch(s)" in m for m in logs)


def test_exact_runs_get_a_report_without_a_loss_curve(tmp_path):
    from linreg.pipeline import inprocess

    w, y, _, _ = linear_tables(tmp_path, rows=60, regions=6)
    out = tmp_path / "out"
    inprocess.run(make_config(weather=w, yields=y, output=str(out), run_id="plain", holdout_fraction=0.0))
    image = mpimg.imread(out / "reports" / "run_id=plain" / "report.png")
    assert image[..., :3].std() > 0.05
    assert "Run plain (exact)" in (out / "reports" / "run_id=plain" / "report.html").read_text()


def test_a_transient_io_error_is_retried_and_the_run_completes(prefect_server, tmp_path, monkeypatch):
    w, y, _, _ = linear_tables(tmp_path, rows=60, regions=6)
    real, calls = commit.open_writer, []

    def flaky(*args, **kwargs):  # the first write of the predictions hits a flaky disk
        calls.append(args[0])
        if len(calls) == 1:
            assert "predictions" in str(args[0])
            raise OSError(errno.EIO, "Input/output error", args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(commit, "open_writer", flaky)
    state = asyncio.run(train(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="flaky"),
                              return_state=True))
    assert state.is_completed() and sum("predictions" in str(c) for c in calls) == 2  # (and the metrics' writer)
    tasks = _task_runs(state.state_details.flow_run_id)
    assert tasks["evaluate-flaky"].run_count == 2 and tasks["plan-flaky"].run_count == 1
    assert pq.read_table(tmp_path / "out" / "predictions" / "run_id=flaky").num_rows == 60


def test_a_validation_error_is_not_retried_and_is_the_runs_failure_message(prefect_server, tmp_path):
    w = write(tmp_path / "w.parquet", region=["a", "b", "c"], year=[1, 1, 1], temp=[1.0, float("inf"), 2.0],
              rainfall=[1.0, 2.0, 3.0], humidity=[1.0, 2.0, 4.0])
    y = write(tmp_path / "y.parquet", region=["a", "b", "c"], year=[1, 1, 1], apples=[1.0, 2.0, 3.0],
              oranges=[1.0, 2.0, 3.0])
    state = asyncio.run(train(make_config(weather=w, yields=y, output=str(tmp_path / "out"), run_id="invalid"),
                              return_state=True))
    assert state.is_failed()
    assert "column 'temp' has 1 null, NaN or infinite value(s)" in state.message
    assert _task_runs(state.state_details.flow_run_id)["validate-and-join-invalid"].run_count == 1
    with pytest.raises(InputError):
        state.result()


def test_only_transient_errors_count_as_transient():
    assert is_transient(OSError(errno.EIO, "x")) and is_transient(TimeoutError()) and is_transient(TransientIOError())
    assert is_transient(ConnectionResetError())
    for permanent in (FileNotFoundError(errno.ENOENT, "x"), PermissionError(errno.EACCES, "x"),
                      OSError(errno.ENOSPC, "disk full"), InputError("bad"), ValueError("bug")):
        assert not is_transient(permanent)


def test_an_unchanged_run_is_reused_and_any_change_retrains(prefect_server, tmp_path, capsys):
    w, y, _, _ = linear_tables(tmp_path, rows=60, regions=6)
    out = str(tmp_path / "out")
    base = ["--weather", w, "--yields", y, "--output", out, "--skip-if-unchanged"]
    assert train_main(base + ["--run-id", "first"]) == 0
    capsys.readouterr()
    assert train_main(base + ["--run-id", "second"]) == 0
    printed = capsys.readouterr().out
    assert "unchanged since run first: not retrained" in printed and "run first (exact)" in printed
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["run_id=first"]

    assert train_main(base + ["--run-id", "other-seed", "--seed", "3"]) == 0  # configuration changed
    part = os.path.join(y, "part-0.parquet")
    os.utime(part, (os.stat(part).st_atime, os.stat(part).st_mtime + 10))  # an input file changed
    assert train_main(base + ["--run-id", "touched"]) == 0
    assert train_main(["--weather", w, "--yields", y, "--output", out, "--run-id", "not-asked"]) == 0
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["run_id=first", "run_id=not-asked", "run_id=other-seed",
                                                             "run_id=touched"]


def test_matplotlib_is_imported_only_to_draw():
    probe = "import sys, flows.train, tasks.train_steps, linreg.pipeline.report\nprint('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
