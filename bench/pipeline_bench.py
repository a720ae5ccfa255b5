"""End-to-end and per-stage benchmark of the exact pipeline, as ratios to baselines measured in the same run.

    python -m bench.pipeline_bench --rows 10000000                 # ~1 minute on 2 cores
    python -m bench.pipeline_bench --rows 100000000 --memory-budget 2GB

Baselines: "scan" (pyarrow streaming scan of the 5 numeric columns of both tables), and "join alone"
(DuckDB reading both tables from the same files and producing the joined Arrow record batches; Polars
too when it is installed: the faster counts). Each pipeline stage runs in a child process so that its
peak RSS is its own. Prints a table; nothing is asserted (CI runs none of this).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

KEYS = ["region", "year"]
FEATURES = ["temp", "rainfall", "humidity"]
TARGETS = ["apples", "oranges"]


def ensure_data(rows: int, data_dir: Path) -> tuple[Path, float | None]:
    """Generate (once) `rows` rows under data_dir/<rows>; return the path and the generator's seconds."""
    out = data_dir / f"rows{rows}"
    if (out / "truth.json").exists():
        return out, None
    from datagen.synth import generate

    start = time.perf_counter()
    generate(out, rows=rows, regions=max(rows // 100, 1), overwrite=True)
    return out, time.perf_counter() - start


def scan_seconds(data: Path) -> float:
    import pyarrow.dataset as ds

    start = time.perf_counter()
    rows = 0
    for table, columns in (("weather", FEATURES), ("yields", TARGETS)):
        for batch in ds.dataset(data / table).to_batches(columns=columns, batch_readahead=2, fragment_readahead=1):
            rows += batch.num_rows
    return time.perf_counter() - start


def join_alone_seconds(data: Path, memory_limit: str, polars_too: bool = True) -> dict[str, float]:
    import duckdb

    result = {}
    con = duckdb.connect(config={"memory_limit": memory_limit})
    select = ", ".join([f"w.{k}" for k in KEYS] + [f"w.{f}" for f in FEATURES] + [f"y.{t}" for t in TARGETS])
    start = time.perf_counter()
    reader = con.sql(f"SELECT {select} FROM read_parquet('{data}/weather/*.parquet') w JOIN "
                     f"read_parquet('{data}/yields/*.parquet') y USING (region, year)").to_arrow_reader(1 << 17)
    sum(b.num_rows for b in reader)
    result["duckdb"] = time.perf_counter() - start
    try:
        import polars as pl
    except ImportError:
        return result
    if not polars_too:
        return result
    start = time.perf_counter()
    lazy = pl.scan_parquet(f"{data}/weather/*.parquet").join(pl.scan_parquet(f"{data}/yields/*.parquet"), on=KEYS)
    for _ in lazy.collect_batches():
        pass
    result["polars"] = time.perf_counter() - start
    return result


def child(data: str, memory_budget: str, trainer: str = "exact", epochs: int | None = None) -> dict:
    """One measured stage in this (child) process; returns seconds and details."""
    from linreg.config import make_config
    from linreg.pipeline import steps

    config = make_config(weather=f"{data}/weather", yields=f"{data}/yields", output=f"{data}/bench-out",
                         trainer=trainer, run_id="bench", memory_budget=memory_budget,
                         **({"epochs": epochs, "tol": 0.0} if epochs else {}))
    timings, rss = {}, {}

    def peak() -> float:
        return vm_hwm_mb()

    start = time.perf_counter()
    plan = steps.plan_run(config)
    timings["plan"] = time.perf_counter() - start
    mark = time.perf_counter()
    joined = steps.join_inputs(plan)
    timings["validate+join"] = time.perf_counter() - mark
    rss["validate+join"] = peak()
    mark = time.perf_counter()
    split = steps.split_rows(plan, joined)
    timings["split"] = time.perf_counter() - mark
    rss["split"] = peak()
    mark = time.perf_counter()
    fit = steps.fit_model(plan, joined, split)
    timings["fit"] = time.perf_counter() - mark
    rss["fit"] = peak()
    mark = time.perf_counter()
    evaluation = steps.evaluate_model(plan, joined, split, fit)
    timings["evaluate+predictions"] = time.perf_counter() - mark
    rss["evaluate+predictions"] = peak()
    parquet_copy = _parquet_copy(joined.path, plan.work_dir)
    mark = time.perf_counter()
    joined_scan = _scan_joined(parquet_copy)
    timings["scan of joined rows"] = time.perf_counter() - mark
    rss["baseline scans (bench only)"] = peak()
    mark = time.perf_counter()
    _scan_joined(joined.path)
    timings["read of joined file (IPC)"] = time.perf_counter() - mark
    mark = time.perf_counter()
    steps.commit_run(plan, joined, fit, evaluation)
    timings["commit"] = time.perf_counter() - mark
    rss["commit"] = peak()
    timings["end to end"] = sum(timings[k] for k in ("plan", "validate+join", "split", "fit",
                                                     "evaluate+predictions", "commit"))
    return {"timings": timings, "joined_rows": joined.joined_rows, "scanned": joined_scan, "rss_mb": rss,
            "epochs": fit.epochs, "train_rows": fit.train_rows, "streamed": bool(fit.epochs) and fit.streamed,
            "weights": {t: [float(c) for c in fit.model.coef_[j]] + [float(fit.model.intercept_[j])]
                        for j, t in enumerate(fit.model.targets)}}


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child started by a big parent
    inherits from it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scan_joined(path: str) -> int:
    from linreg.inputs.batches import read_batches

    return sum(b.num_rows for b in read_batches(path, FEATURES + TARGETS))


def _parquet_copy(joined_path: str, work_dir: str) -> str:
    """The joined rows' numeric columns as a Parquet file (snappy, no dictionary: as our outputs), for
    the baseline "scan of the joined rows"; not timed."""
    import pyarrow.parquet as pq

    from linreg.inputs.batches import read_batches

    path = os.path.join(work_dir, "joined-baseline.parquet")
    batches = read_batches(joined_path, FEATURES + TARGETS)
    first = next(batches)
    with pq.ParquetWriter(path, first.schema, compression="snappy", use_dictionary=False) as writer:
        writer.write_batch(first)
        for batch in batches:
            writer.write_batch(batch)
    return path


def run_child(data: Path, memory_budget: str, trainer: str, epochs: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.pipeline_bench", "--child", str(data), "--memory-budget", memory_budget,
           "--trainer", trainer] + (["--epochs", str(epochs)] if epochs else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        sys.exit(f"the pipeline child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = max(v for k, v in result["rss_mb"].items() if k in ("validate+join", "split", "fit",
                                                                              "evaluate+predictions"))
    return result


def in_memory_solvers(data: Path, joined_rows: int) -> dict[str, tuple[float, float | None]]:
    """numpy lstsq and scikit-learn (if installed; on float64 and on float32 input) on the joined matrix,
    and our exact fit on the same in-memory rows: {name: (seconds, largest relative coefficient error
    against lstsq in float64)}. The load (join + matrix) is timed separately."""
    import numpy as np
    import pyarrow.dataset as ds

    from linreg.models.fit import fit

    start = time.perf_counter()
    w = ds.dataset(data / "weather").to_table(columns=KEYS + FEATURES)
    y = ds.dataset(data / "yields").to_table(columns=KEYS + TARGETS)
    table = w.join(y, KEYS, join_type="inner")
    X = np.column_stack([table.column(f).to_numpy() for f in FEATURES] + [np.ones(table.num_rows)])
    Y = np.column_stack([table.column(t).to_numpy() for t in TARGETS]).astype(np.float64)
    del w, y, table
    result = {"load (join+matrix)": (time.perf_counter() - start, None)}
    start = time.perf_counter()
    reference = np.linalg.lstsq(X, Y, rcond=None)[0].T  # (k, p + 1): coefficients then intercept
    result["numpy lstsq fit"] = (time.perf_counter() - start, 0.0)

    def error(coef, intercept) -> float:
        got = np.hstack([np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)[:, None]])
        return float(np.max(np.abs(got - reference) / np.abs(reference)))

    features = np.ascontiguousarray(X[:, :-1])
    start = time.perf_counter()
    block = 1 << 17
    ours = fit(lambda: ((features[i:i + block], Y[i:i + block]) for i in range(0, len(X), block)),
               trainer="exact", features=FEATURES, targets=TARGETS)
    result["ours (exact, same rows in memory)"] = (time.perf_counter() - start,
                                                   error(ours.model.coef_, ours.model.intercept_))
    try:
        from sklearn.linear_model import LinearRegression
    except ImportError:
        return result
    for name, dtype in (("scikit-learn fit (float64)", np.float64), ("scikit-learn fit (float32)", np.float32)):
        Xd, Yd = features.astype(dtype), Y.astype(dtype)
        start = time.perf_counter()
        model = LinearRegression().fit(Xd, Yd)
        result[name] = (time.perf_counter() - start, error(model.coef_, model.intercept_))
        del Xd, Yd
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--data-dir", default="/tmp/linreg-bench")
    parser.add_argument("--memory-budget", default="2GB")
    parser.add_argument("--skip-in-memory", action="store_true", help="skip numpy/scikit-learn on the whole matrix")
    parser.add_argument("--trainer", default="exact", choices=["exact", "nn", "manual"])
    parser.add_argument("--epochs", type=int, help="gradient trainers: exactly this many epochs (tol 0)")
    parser.add_argument("--skip-baselines", action="store_true", help="skip the scan and join-alone baselines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.memory_budget, args.trainer, args.epochs)))
        return
    data, gen_seconds = ensure_data(args.rows, Path(args.data_dir))
    if args.skip_baselines:
        scan, joins = math.nan, {}
    else:
        scan = scan_seconds(data)
        # Polars joins in memory: at 100M rows that does not fit this machine (PERF-NOTES), so only DuckDB
        joins = join_alone_seconds(data, "1GB", polars_too=args.rows <= 20_000_000)
    join = min(joins.values(), default=math.nan)
    stages = run_child(data, args.memory_budget, args.trainer, args.epochs)
    t = stages["timings"]
    print(f"rows: {args.rows:,} yield rows, {stages['joined_rows']:,} joined; trainer {args.trainer}; "
          f"memory budget {args.memory_budget}")
    if gen_seconds:
        print(f"generator: {gen_seconds:.1f} s ({args.rows / gen_seconds / 1e6:.2f} M rows/s)")
    print(f"{'measure':34s} {'seconds':>9s} {'/ scan':>8s} {'/ join alone':>13s}")
    print(f"{'scan (5 numeric columns)':34s} {scan:9.2f} {1:8.2f} {scan / join:13.2f}")
    for name, seconds in joins.items():
        print(f"{'join alone: ' + name:34s} {seconds:9.2f} {seconds / scan:8.2f} {seconds / join:13.2f}")
    for name, seconds in t.items():
        print(f"{'pipeline ' + name:34s} {seconds:9.2f} {seconds / scan:8.2f} {seconds / join:13.2f}")
    print(f"fit / scan of the same joined rows (Parquet): {t['fit'] / t['scan of joined rows']:.2f}x")
    if stages["epochs"]:
        print(f"{args.trainer}: {stages['epochs']} epoch(s) over {stages['train_rows']:,} training rows, "
              f"{'streamed from disk' if stages['streamed'] else 'in memory'}: "
              f"{stages['epochs'] * stages['train_rows'] / t['fit'] / 1e6:.2f} M rows/s over the fit stage")
    print(f"peak RSS of the pipeline process: {stages['peak_rss_mb']:.0f} MB; after each stage: "
          + ", ".join(f"{k} {v:.0f}" for k, v in stages["rss_mb"].items()))
    if not args.skip_in_memory:
        for name, (seconds, err) in in_memory_solvers(data, stages["joined_rows"]).items():
            accuracy = "" if err is None else f"   largest coefficient error vs lstsq: {err:.1e}"
            print(f"{'in memory: ' + name:40s} {seconds:8.2f}   / our fit stage: {seconds / t['fit']:6.2f}{accuracy}")


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
