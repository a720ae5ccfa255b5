"""The commands a user runs, each timed as a whole process beside its peers on the same files.

    python -m bench.command_bench --rows 10000000                       # ~10 minutes on 2 cores, Spark included
    python -m bench.command_bench --rows 100000000 --budgets 2GB,256MB --skip-spark
    python -m bench.command_bench --only-small                          # --help and the sample runs only

Commands: our CLI (`python -m flows.train`, exact trainer, a Prefect server configured) at each
`--budgets` memory budget; the DuckDB all-SQL job (`bench.duckdb_job`: join, normal equations as SQL sums,
predictions of every joined row COPYed to Parquet, DuckDB's default threads, memory_limit 1GB) and the same
without predictions; Spark MLlib's whole job (local[2], normal solver, predictions written) when pyspark
imports; and the small ones: `--help`, and the sample run with no server configured and with one. The bench
starts its own Prefect server on 127.0.0.1 (a free port, a temporary PREFECT_HOME) and stops it at the end.

Rounds are interleaved (round 1 runs every command once, then round 2, ...); every run writes to a fresh
temporary directory, deleted after its round. Wall time is measured from the spawn to the exit; peak RSS is
the child's ru_maxrss from wait4 (Spark: the Python driver and its JVM are reported apart). After round 1
our weights are compared with the DuckDB job's coefficients. Prints tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.pipeline_bench import FEATURES, KEYS, TARGETS, vm_hwm_mb

REPO = Path(__file__).resolve().parents[1]
# Targets of issue 14: (what, limit); printed beside the measurements, never asserted.
TARGET_RATIO_TO_DUCKDB = 1.3
TARGET_BUDGET_RATIO = 2.0
TARGET_SECONDS = {"help": 1.0, "sample, no server": 3.0, "sample, server": 6.0}


@dataclass
class Command:
    """One command: its argv ('{out}' is replaced by a fresh directory per run) and environment kind
    ('server': PREFECT_API_URL set; 'none': no server configured)."""
    name: str
    argv: list[str]
    env: str
    small: bool = False
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    notes: str = ""


def prefect_env(kind: str, home: Path, api_url: str | None) -> dict[str, str]:
    """The environment of a child: PREFECT_HOME an empty directory (no profile configures a server), and
    PREFECT_API_URL only for kind 'server'."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if kind == "server":
        env["PREFECT_API_URL"] = api_url
    return env


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port of 127.0.0.1, in its own process group; returns it and its API URL
    once /api/health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env("none", home, None)
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=home)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError(f"prefect server did not answer {url}/health within 180 s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """Terminate the server's process group; kill it if it is still there after 20 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


def run_once(command: Command, work: Path, env: dict[str, str]) -> tuple[float, float, Path]:
    """Run the command once with '{out}' -> work/out; return wall seconds, peak RSS in MB (ru_maxrss of the
    child and of the descendants it waited for) and the output directory. Exits on a failed command."""
    work.mkdir(parents=True)
    out = work / "out"
    argv = [a.replace("{out}", str(out)) for a in command.argv]
    with open(work / "stdout", "wb") as stdout, open(work / "stderr", "wb") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{command.name} failed (exit {child.returncode}): {shlex.join(argv)}\n"
                 f"{(work / 'stderr').read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def build_commands(args, data: Path | None, spark: bool) -> list[Command]:
    py = sys.executable
    commands = []
    if not args.only_small:
        weather, yields = str(data / "weather"), str(data / "yields")
        ours_env = "none" if args.no_server else "server"
        for budget in args.budgets:
            commands.append(Command(f"ours, exact, {budget}", [py, "-m", "flows.train", "--weather", weather,
                                    "--yields", yields, "--memory-budget", budget, "--output", "{out}"], ours_env))
        threads = ["--threads", str(args.threads)] if args.threads else []
        job = [py, "-m", "bench.duckdb_job", "--weather", weather, "--yields", yields, "--output", "{out}",
               "--memory-limit", "1GB", *threads]
        commands.append(Command("DuckDB all-SQL job", job, "none"))
        commands.append(Command("DuckDB job, no predictions", job + ["--no-predictions"], "none"))
        if spark:
            commands.append(Command("Spark MLlib job", [py, "-m", "bench.command_bench", "--spark-job", str(data),
                                                        "--output", "{out}"], "none"))
    if not args.skip_small:
        commands.append(Command("help", [py, "-m", "flows.train", "--help"], "none", small=True))
        commands.append(Command("sample, no server", [py, "-m", "flows.train", "--output", "{out}"], "none",
                                small=True))
        if not args.no_server:
            commands.append(Command("sample, server", [py, "-m", "flows.train", "--output", "{out}"], "server",
                                    small=True))
    return commands


def spark_job(data: Path, output: Path, driver_memory: str = "12g") -> None:
    """Spark MLlib's whole job in this process: read, join, fit every target (normal solver), write keys,
    actual and predicted values to output/predictions; prints JSON with the coefficients, this driver's
    peak RSS and its JVM's (the JVM is waited for here, so its rusage is known)."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", driver_memory)
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "8").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    gateway = spark.sparkContext._gateway
    weather = spark.read.parquet(str(data / "weather")).select(*KEYS, *FEATURES)
    yields = spark.read.parquet(str(data / "yields")).select(*KEYS, *TARGETS)
    joined = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(weather.join(yields, KEYS)).cache()
    coefficients, predicted = {}, joined
    for target in TARGETS:
        model = LinearRegression(featuresCol="features", labelCol=target, solver="normal",
                                 predictionCol=f"{target}_pred").fit(joined)
        coefficients[target] = list(model.coefficients) + [model.intercept]
        predicted = model.transform(predicted)
    predicted.select(*KEYS, *[c for t in TARGETS for c in (t, f"{t}_pred")]).write.parquet(str(output / "predictions"))
    spark.stop()
    gateway.shutdown()
    gateway.proc.stdin.close()  # the JVM exits when its stdin closes
    gateway.proc.wait(timeout=120)
    output.mkdir(parents=True, exist_ok=True)
    (output / "coefficients.json").write_text(json.dumps(coefficients))
    print(json.dumps({"coefficients": coefficients, "driver_rss_mb": vm_hwm_mb(),
                      "jvm_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def check(data: Path, ours: Path, job: Path) -> None:
    """Prints JSON: the largest absolute difference between our weights and (a) the DuckDB job's coefficients
    (all joined rows; ours fit the training split only) and (b) the same normal equations, in DuckDB, over
    exactly the rows our run trained on (its predictions' split = 'train')."""
    import duckdb
    import pyarrow.dataset as ds

    from bench.duckdb_job import solve, sums_sql

    table = ds.dataset(ours / "weights", partitioning="hive").to_table(columns=["target", "term", "weight"])
    weights = {(t, term): w for t, term, w in zip(*(table.column(c).to_pylist() for c in ("target", "term", "weight")))}
    our = {t: [weights[(t, f)] for f in FEATURES] + [weights[(t, "intercept")]] for t in TARGETS}
    all_rows = json.loads((job / "coefficients.json").read_text())
    train_rows = (f"(SELECT w.{', w.'.join(FEATURES)}, p.{', p.'.join(TARGETS)} "
                  f"FROM read_parquet('{data}/weather/**/*.parquet') w "
                  f"JOIN read_parquet('{ours}/predictions/**/*.parquet', hive_partitioning = false) p "
                  f"USING ({', '.join(KEYS)}) WHERE p.split = 'train')")
    select, pairs = sums_sql(train_rows, FEATURES, TARGETS)
    same_rows = solve(duckdb.connect(config={"memory_limit": "1GB"}).execute(select).fetchone(), pairs,
                      FEATURES, TARGETS)
    print(json.dumps({"ours": our, "duckdb_job": all_rows, "duckdb_on_our_training_rows": same_rows,
                      "diff_job": _largest_difference(our, all_rows),
                      "diff_same_rows": _largest_difference(our, same_rows)}))


def _largest_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    return max(abs(x - y) for t in TARGETS for x, y in zip(a[t], b[t]))


def ensure_data(rows: int, data_dir: Path) -> Path:
    """bench.pipeline_bench.ensure_data, run in a child when the data must be generated (so that this process
    stays small: a child's ru_maxrss starts at its parent's peak)."""
    path = data_dir / f"rows{rows}"
    if not (path / "truth.json").exists():
        code = ("import sys; from pathlib import Path; from bench.pipeline_bench import ensure_data; "
                f"ensure_data({rows}, Path({str(data_dir)!r}))")
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return path


def spark_importable() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import pyspark"], capture_output=True)
    return probe.returncode == 0 and shutil.which("java") is not None


def _fmt(seconds: float) -> str:
    return f"{seconds:8.2f}" if math.isfinite(seconds) else f"{'-':>8s}"


def report(commands: list[Command], args, checks: dict | None, spark_rss: dict | None) -> None:
    median = {c.name: statistics.median(c.seconds) for c in commands}
    reference = median.get("DuckDB all-SQL job", math.nan)
    big = [c for c in commands if not c.small]
    if big:
        print(f"\n{'command':30s} {'median s':>8s} {'min s':>8s} {'max s':>8s} {'peak RSS MB':>12s} "
              f"{'/ DuckDB job':>13s}  target")
        for c in big:
            ratio = median[c.name] / reference
            target = ""
            if c.name == f"ours, exact, {args.budgets[0]}":
                target = (f"<= {TARGET_RATIO_TO_DUCKDB}x: "
                          f"{'met' if ratio <= TARGET_RATIO_TO_DUCKDB else 'NOT met'}")
            elif c.name.startswith("ours, exact, "):
                budget_ratio = median[c.name] / median[f"ours, exact, {args.budgets[0]}"]
                target = (f"{budget_ratio:.2f}x the {args.budgets[0]} run (<= {TARGET_BUDGET_RATIO}x: "
                          f"{'met' if budget_ratio <= TARGET_BUDGET_RATIO else 'NOT met'})")
            print(f"{c.name:30s} {_fmt(median[c.name])} {_fmt(min(c.seconds))} {_fmt(max(c.seconds))} "
                  f"{max(c.rss_mb):12.0f} {ratio:12.2f}x  {target}")
        if spark_rss:
            driver, jvm = spark_rss["driver_rss_mb"], spark_rss["jvm_rss_mb"]
            print(f"Spark's peak RSS above is the larger of its Python driver and its JVM (which the driver reaps); "
                  f"apart, largest over the rounds: driver {driver:.0f} MB, JVM {jvm:.0f} MB (at once: <= "
                  f"{driver + jvm:.0f} MB)")
    small = [c for c in commands if c.small]
    if small:
        print(f"\n{'small command':30s} {'median s':>8s} {'min s':>8s} {'max s':>8s} {'peak RSS MB':>12s}  target")
        for c in small:
            limit = TARGET_SECONDS[c.name]
            print(f"{c.name:30s} {_fmt(median[c.name])} {_fmt(min(c.seconds))} {_fmt(max(c.seconds))} "
                  f"{max(c.rss_mb):12.0f}  <= {limit:.0f} s: {'met' if median[c.name] <= limit else 'NOT met'}")
    if checks:
        print(f"\nlargest absolute coefficient difference, ours ({big[0].name}, round 1) against:")
        print(f"  DuckDB normal equations on the same training rows: {checks['diff_same_rows']:.2e}")
        print(f"  the DuckDB job (all joined rows; ours excludes the holdout regions): {checks['diff_job']:.2e}")
        if "diff_spark_job" in checks:
            print(f"  Spark's coefficients against the DuckDB job's (both on all joined rows): "
                  f"{checks['diff_spark_job']:.2e}")
        print("  ours (features..., intercept):", {t: [round(v, 6) for v in w] for t, w in checks["ours"].items()})
    print(f"\nthis bench process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(a child's peak RSS cannot read lower than its parent's at the spawn)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="yield rows of the generated data")
    parser.add_argument("--data-dir", default="/tmp/linreg-bench", help="generated data, cached per row count")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default="2GB", help="our CLI's --memory-budget values, comma-separated; the "
                        "first is the reference (e.g. 2GB,256MB)")
    parser.add_argument("--threads", type=int, help="DuckDB job's threads (default: DuckDB's)")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--skip-small", action="store_true", help="skip --help and the sample runs")
    parser.add_argument("--only-small", action="store_true", help="only --help and the sample runs")
    parser.add_argument("--no-server", action="store_true", help="start no Prefect server: our runs have none "
                        "configured, and the sample run with a server is skipped")
    parser.add_argument("--spark-job", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--check", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.spark_job:
        return spark_job(Path(args.spark_job), Path(args.output))
    if args.check:
        return check(*(Path(p) for p in args.check))
    args.budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    data_dir = Path(args.data_dir)
    data = ensure_data(args.rows, data_dir) if not args.only_small else None
    spark = not (args.skip_spark or args.only_small) and spark_importable()
    commands = build_commands(args, data, spark)
    bench_dir = Path(tempfile.mkdtemp(prefix="command-bench-", dir=data_dir if data_dir.is_dir() else None))
    server = None
    try:
        api_url = None
        if not args.no_server:
            started = time.perf_counter()
            server, api_url = start_server(_mkdir(bench_dir / "server-home"), bench_dir / "server.log")
            print(f"Prefect server: {api_url} (answered after {time.perf_counter() - started:.1f} s)")
        print(f"rows: {args.rows:,} yield rows ({data})" if data else "small commands only")
        print(f"rounds: {args.rounds}, interleaved; working directory {REPO}; python = {sys.executable}")
        print("commands (OUT: a fresh directory per run; PREFECT_HOME: an empty directory per run;"
              " 'server': PREFECT_API_URL set to the server above; 'none': PREFECT_API_URL unset):")
        for c in commands:
            argv = ["python"] + [a.replace("{out}", "OUT") for a in c.argv[1:]]
            print(f"  [{c.env:6s}] {c.name}: {shlex.join(argv)}")
        if spark is False and not (args.skip_spark or args.only_small):
            print("  Spark MLlib job: skipped (pyspark or java not found)")
        checks, spark_rss = None, None
        for round_ in range(1, args.rounds + 1):
            round_dir = bench_dir / f"round{round_}"
            outputs = {}
            for i, c in enumerate(commands):
                work = round_dir / f"{i}"
                env = prefect_env(c.env, _mkdir(work / "prefect-home"), api_url)
                seconds, rss, outputs[c.name] = run_once(c, work / "run", env)
                c.seconds.append(seconds)
                c.rss_mb.append(rss)
                if c.name == "Spark MLlib job":
                    this = json.loads((work / "run" / "stdout").read_text().strip().splitlines()[-1])
                    spark_rss = {k: max(this[k], (spark_rss or this)[k]) for k in ("driver_rss_mb", "jvm_rss_mb")}
            print(f"round {round_}: " + ", ".join(f"{c.name} {c.seconds[-1]:.2f} s" for c in commands), flush=True)
            if round_ == 1 and not args.only_small:
                checks = _checks(data, outputs[commands[0].name], outputs["DuckDB all-SQL job"],
                                 outputs.get("Spark MLlib job"))
            shutil.rmtree(round_dir)
        report(commands, args, checks, spark_rss)
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(bench_dir, ignore_errors=True)


def _checks(data: Path, ours: Path, job: Path, spark: Path | None) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.command_bench", "--check", str(data), str(ours), str(job)],
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the coefficient check failed:\n{result.stderr[-3000:]}")
    checks = json.loads(result.stdout.strip().splitlines()[-1])
    if spark is not None:
        checks["diff_spark_job"] = _largest_difference(json.loads((spark / "coefficients.json").read_text()),
                                                       checks["duckdb_job"])
    return checks


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
