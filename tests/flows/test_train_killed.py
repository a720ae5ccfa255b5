"""SIGKILL the process running the Prefect training flow mid-training and mid-commit; then rerun it.

Every run is the real flow, `flows.train.main(argv)` (what `python -m flows.train <argv>` runs), talking to
one Prefect server started for this module, in a child forked from a warm process
(tests/reliability_flow_runner.py: the imports are paid once). The child SIGKILLs itself before the k-th
optimizer step of the nn trainer (mid-training) or before the k-th file operation of the commit
(mid-commit). After each kill: the README's DuckDB views (committed runs only) show nothing of the run and
the runs index has no entry for it; a partition of it that pyarrow or DuckDB can see in a dataset is whole
(equal to the uninterrupted run's); the earlier run in the same output is byte-identical. Then the same
command again: it finishes (rolling the interrupted commit forward first) and its weights, metrics,
predictions and runs entry equal, bit for bit, those of an uninterrupted run with the same seed written to
another output directory (timestamps and the output path excepted).

LINREG_LONG_TESTS=1 kills at every file operation of a new and of a replacing commit, and at more steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from linreg.outputs import commit
from tests.conftest import REPO, SAMPLE
from tests.helpers import stop_process_group

LONG = os.environ.get("LINREG_LONG_TESTS") == "1"
KILLED = -9
RUN_TIMEOUT = 180  # seconds for one flow run (about 3 s each on an idle 2-core machine)
RUN_ID = "nightly"
ORDER = {"weights": ["target", "term"], "metrics": ["split", "region", "target", "metric"],
         "predictions": ["region", "year"], "runs": ["trainer"]}  # runs: one row, its run id in the folder name


def flow_args(out: Path, run_id: str = RUN_ID) -> list[str]:
    """The command line under test: nn on the shipped sample, seeded, every epoch run (no early stop)."""
    return ["--weather", str(SAMPLE / "weather.parquet"), "--yields", str(SAMPLE / "yields.parquet"),
            "--output", str(out), "--trainer", "nn", "--epochs", "20", "--tol", "0", "--seed", "7",
            "--run-id", run_id]


# ---------------------------------------------------------------------------------------------------------
# One Prefect server and one warm runner for the module

class Runner:
    """Talks to tests/reliability_flow_runner.py: submit a flow run, wait for its exit code."""

    def __init__(self, proc: subprocess.Popen, logs: Path):
        self.proc, self.logs = proc, logs
        self.lines: queue.Queue[str] = queue.Queue()
        self.exited: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def _next(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError("the flow runner did not answer in time") from None
        assert line, f"the flow runner ended:\n{(self.logs / 'runner.log').read_text()[-3000:]}"
        if line.startswith("exited "):
            _, pid, code = line.split()
            self.exited[int(pid)] = int(code)
        return line

    def ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self._next(deadline) != "ready":
            pass

    def submit(self, argv: list[str], log: Path, *, kill_at_step: int = 0, kill_at_op: int = 0) -> "Run":
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill_at_step": kill_at_step,
                                          "kill_at_op": kill_at_op}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not (line := self._next(deadline)).startswith("started "):
            pass
        return Run(self, int(line.split()[1]), log)


class Run:
    def __init__(self, runner: Runner, pid: int, log: Path):
        self.runner, self.pid, self.log = runner, pid, log

    def wait(self, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
        """(exit code, the run's console output)."""
        deadline = time.monotonic() + timeout
        try:
            while self.pid not in self.runner.exited:
                self.runner._next(deadline)
        except AssertionError as exc:
            raise AssertionError(f"flow run {self.pid} did not end within {timeout} s ({exc}):\n"
                                 f"{self.log.read_text()[-3000:]}") from None
        return self.runner.exited[self.pid], self.log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    stop_process_group(proc)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """A Prefect server on 127.0.0.1 and the warm runner, started together (about 20 s); stopped at the end."""
    logs = tmp_path_factory.mktemp("flow-kills")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(logs / "prefect-home"), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_LOGGING_EXTRA_LOGGERS="linreg", PYTHONPATH=str(REPO),
               TMPDIR=str(logs))  # the work directories that killed runs leave behind stay in pytest's tree
    processes = []
    try:
        with open(logs / "server.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with open(logs / "runner.log", "w") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "tests.reliability_flow_runner"], cwd=REPO,
                                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                              text=True, start_new_session=True))
        deadline = time.monotonic() + 180
        while True:
            assert processes[0].poll() is None, (logs / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, (logs / "server.log").read_text()[-3000:]
                time.sleep(0.3)
        r = Runner(processes[1], logs)
        r.ready()
        yield r
    finally:
        for proc in reversed(processes):  # the runner (and any child it still has) first, then the server
            if proc.stdin:
                proc.stdin.close()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            _stop(proc)


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory):
    """The uninterrupted run with the same command line, in its own output directory (submitted at once,
    waited for when first needed)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run = runner.submit(flow_args(out), out.parent / "reference.log")
    cached = {}

    def get() -> dict:
        if not cached:
            code, log = run.wait()
            assert code == 0, log[-3000:]
            cached.update(content(out, RUN_ID))
        return cached

    return get


# ---------------------------------------------------------------------------------------------------------
# What readers see

def content(out: Path, run_id: str, datasets=commit.DATASETS) -> dict:
    """dataset -> the run's rows in key order (all parts of the partition), NaN made comparable; the runs
    entry without its start and end times and the output path in its configuration."""
    found = {}
    for dataset in datasets:
        table = pq.read_table(out / dataset / f"run_id={run_id}")
        if dataset == "runs":
            config = json.loads(table["config"][0].as_py())
            config.pop("output")
            table = table.drop_columns(["started_at", "finished_at", "config"]).append_column(
                "config", [[json.dumps(config, sort_keys=True)]])
        table = table.sort_by([(c, "ascending") for c in ORDER[dataset]])
        found[dataset] = [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row.values())
                          for row in table.to_pylist()]
    return found


def published(out: Path) -> dict:
    """Every published file (staging and locks excluded): path -> sha256."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in (commit.STAGING, "_locks")}


def committed_views(out: Path) -> dict:
    """dataset -> run ids seen through the README's views (committed runs only), with DuckDB."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet('{out}/runs/*/*.parquet', hive_partitioning = true)")
    for dataset in ("weights", "metrics", "predictions"):
        con.execute(f"CREATE VIEW {dataset} AS SELECT * FROM read_parquet('{out}/{dataset}/*/*.parquet', "
                    "hive_partitioning = true) SEMI JOIN runs USING (run_id)")
    return {d: {r for (r,) in con.sql(f"SELECT DISTINCT run_id FROM {d}").fetchall()} for d in commit.DATASETS}


def raw_partitions(out: Path) -> dict:
    """dataset -> {run id: rows} of every partition a reader globbing the dataset sees; pyarrow and DuckDB agree."""
    con = duckdb.connect()
    seen = {}
    for dataset in commit.DATASETS:
        table = ds.dataset(out / dataset, format="parquet", partitioning="hive").to_table(columns=["run_id"])
        by_arrow = {r["run_id"]: r["run_id_count"] for r in table.group_by("run_id").aggregate(
            [("run_id", "count")]).to_pylist()}
        by_duckdb = dict(con.sql(f"SELECT run_id, count(*) FROM read_parquet('{out}/{dataset}/*/*.parquet', "
                                 "hive_partitioning = true) GROUP BY run_id").fetchall())
        assert by_arrow == by_duckdb, (dataset, by_arrow, by_duckdb)
        seen[dataset] = by_arrow
    return seen


def earlier_run(out: Path) -> dict:
    """Commit an earlier run (exact trainer, another id) in `out`; return its published files' digests."""
    from linreg.config import make_config
    from linreg.pipeline import steps

    steps.run(make_config(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                             output=str(out), run_id="earlier"))
    return published(out)


def check_after_kill(out: Path, before: dict, want: dict) -> set:
    """No partial run visible; the earlier run byte-identical. Returns the datasets where a partition of the
    killed run is visible (each whole: equal to the uninterrupted run's)."""
    assert {k: v for k, v in published(out).items() if k in before} == before  # the earlier run, byte for byte
    views = committed_views(out)
    raw = raw_partitions(out)
    visible = {d for d in commit.DATASETS if RUN_ID in raw[d]}
    if "runs" in visible:  # the commit point was passed before the kill: then the run is whole everywhere
        assert visible == set(commit.DATASETS) and all(RUN_ID in v for v in views.values()), (visible, views)
    else:
        assert all(v == {"earlier"} for v in views.values()), views
    for dataset in visible:
        assert content(out, RUN_ID, [dataset]) == {dataset: want[dataset]}, dataset
    return visible


def check_rerun(out: Path, before: dict, want: dict, code: int, log: str) -> None:
    assert code == 0, log[-3000:]
    assert content(out, RUN_ID) == want  # bit for bit: the same seed, the same operations
    assert all(v == {"earlier", RUN_ID} for v in committed_views(out).values())
    assert {k: v for k, v in published(out).items() if k in before} == before
    assert not list((out / commit.STAGING).glob(f"*/{commit.JOURNAL}"))  # no interrupted commit left


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [1, 5, 20] if LONG else [5])
def test_killed_mid_training_shows_nothing_and_the_rerun_equals_an_uninterrupted_run(runner, reference, tmp_path,
                                                                                      step):
    out = tmp_path / "out"
    before = earlier_run(out)
    code, log = runner.submit(flow_args(out), tmp_path / "killed.log", kill_at_step=step).wait()
    assert code == KILLED, log[-3000:]
    assert f"SIGKILL before optimizer step {step}" in log and f"'split-{RUN_ID}' - Finished" in log
    assert f"run {RUN_ID}: train:" not in log  # the train task never finished
    want = reference()
    assert check_after_kill(out, before, want) == set()  # nothing of the run in any dataset
    assert {v for d in raw_partitions(out).values() for v in d} == {"earlier"}

    code, log = runner.submit(flow_args(out), tmp_path / "rerun.log").wait()
    check_rerun(out, before, want, code, log)


# (k, replacing): a new commit has 6 file operations, a replacing one 10 (both with the local layout of
# commit.py); k past the end runs the commit whole and is skipped. CI: between two datasets of a new commit.
COMMIT_KILLS = [(k, False) for k in range(1, 8)] + [(k, True) for k in range(1, 12)] if LONG else [(4, False)]


@pytest.mark.parametrize("op,replacing", COMMIT_KILLS)
def test_killed_mid_commit_shows_no_partial_run_and_the_rerun_equals_an_uninterrupted_run(runner, reference,
                                                                                          tmp_path, op, replacing):
    out = tmp_path / "out"
    before = earlier_run(out)
    if replacing:  # the run id was committed before (another trainer): the rerun replaces it
        from linreg.config import make_config
        from linreg.pipeline import steps

        steps.run(make_config(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                                 output=str(out), run_id=RUN_ID, trainer="manual", epochs=5, tol=0))
        old = content(out, RUN_ID)
    code, log = runner.submit(flow_args(out), tmp_path / "killed.log", kill_at_op=op).wait()
    if code == 0 and LONG:
        pytest.skip(f"the commit has fewer than {op} file operations")
    assert code == KILLED and f"SIGKILL before file operation {op} of the commit" in log, log[-3000:]
    want = reference()
    if replacing:  # a reader sees the old version or the new one of each partition, whole, never a mix
        assert {k: v for k, v in published(out).items() if k in before} == before
        for dataset in commit.DATASETS:
            if (out / dataset / f"run_id={RUN_ID}").exists():
                assert content(out, RUN_ID, [dataset])[dataset] in (old[dataset], want[dataset]), dataset
        if (out / "runs" / f"run_id={RUN_ID}").exists():  # a listed run is whole everywhere, in that version
            version = old if content(out, RUN_ID, ["runs"])["runs"] == old["runs"] else want
            assert content(out, RUN_ID) == version
    else:
        visible = check_after_kill(out, before, want)
        if not LONG:  # the CI kill point falls between datasets: some published, the runs entry not yet
            assert visible and "runs" not in visible, visible
    journal = bool(list((out / commit.STAGING).glob(f"*/{commit.JOURNAL}")))

    code, log = runner.submit(flow_args(out), tmp_path / "rerun.log").wait()
    check_rerun(out, before, want, code, log)
    if journal:  # the rerun's first step finished the interrupted commit
        assert "rolled forward the interrupted commit" in log, log[-3000:]
