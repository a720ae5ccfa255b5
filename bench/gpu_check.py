"""The GPU path, checked on a machine that has GPUs: `bash bench/gpu_check.sh [--rows N] [--epochs E]`.

Runs, on generated data (`datagen.synth`), the nn job on every GPU (one rank per GPU with NCCL from two GPUs
up; one GPU runs a single CUDA process) and the exact job with as many ranks (the exact trainer stays on the
CPU with gloo), each beside the same job as one CPU process, and checks the answers:

    exact   every weight within 1e-10 relative of the CPU run's (the same factor, merged across ranks)
    nn      the training MSE (over all targets) within 1% of the CPU run's, with the same seed and epochs

It prints each job's wall time and rows per second (training rows x epochs / seconds for nn, joined rows /
seconds for exact) and exits 1 when a check fails. Where torch sees no CUDA device it fails at once, saying so.
No GPU exists on this project's own machines: this is how the CUDA/NCCL path is checked where one does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXACT_RTOL = 1e-10
NN_MSE_RTOL = 0.01


def gpu_count() -> int:
    """CUDA devices torch can use here (0 without a CUDA build of torch or without a GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_job(data: Path, out: Path, run_id: str, *options: str) -> float:
    """One `python -m flows.train` job on the generated data; its wall time in seconds."""
    command = [sys.executable, "-m", "flows.train", "--weather", str(data / "weather"), "--yields",
               str(data / "yields"), "--output", str(out), "--run-id", run_id, *options]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def weights(out: Path, run_id: str) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(str(out / "weights" / f"run_id={run_id}")).to_pylist()
    return {(r["target"], r["term"]): r["weight"] for r in table}


def train_mse(out: Path, run_id: str) -> tuple[float, int]:
    """(training MSE over all targets, training rows) from the run's metrics."""
    import pyarrow.parquet as pq

    rows = pq.read_table(str(out / "metrics" / f"run_id={run_id}")).to_pylist()
    totals = {r["metric"]: r["value"] for r in rows
              if r["split"] == "train" and r["region"] is None and r["target"] is None}
    count = next(r["value"] for r in rows if r["split"] == "train" and r["region"] is None and r["metric"] == "rows")
    return totals["mse"], int(count)


def relative_gap(a: dict, b: dict) -> float:
    """The largest |a - b| over the weights, relative to the largest |b|."""
    scale = max(abs(v) for v in b.values()) or 1.0
    return max(abs(a[k] - b[k]) for k in b) / scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="yield rows to generate (default 2M)")
    parser.add_argument("--epochs", type=int, default=5, help="nn epochs (default 5)")
    parser.add_argument("--batch-size", type=int, default=65536, help="nn global batch (default 65536)")
    args = parser.parse_args(argv)
    gpus = gpu_count()
    if gpus == 0:
        print("gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False): run it on a machine with "
              "GPUs and a CUDA build of torch (pip install torch==2.13.0 from the CUDA index).", file=sys.stderr)
        return 1
    from datagen.synth import generate

    work = Path(tempfile.mkdtemp(prefix="linreg-gpu-check-"))
    data, out = work / "data", work / "out"
    generate(data, rows=args.rows, regions=max(args.rows // 20, 10), seed=0)
    ranks = ["--nproc-per-node", str(gpus)] if gpus > 1 else []
    nn = ["--trainer", "nn", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--tol", "0",
          "--seed", "0"]
    seconds = {
        "nn-cpu": run_job(data, out, "nn-cpu", *nn, "--device", "cpu"),
        "nn-gpu": run_job(data, out, "nn-gpu", *nn, "--device", "cuda", *ranks),
        "exact-cpu": run_job(data, out, "exact-cpu", "--trainer", "exact"),
        "exact-ranks": run_job(data, out, "exact-ranks", "--trainer", "exact", *ranks),
    }
    (cpu_mse, train_rows), (gpu_mse, _) = train_mse(out, "nn-cpu"), train_mse(out, "nn-gpu")
    exact_gap = relative_gap(weights(out, "exact-ranks"), weights(out, "exact-cpu"))
    nn_gap = abs(gpu_mse - cpu_mse) / cpu_mse
    print(f"{gpus} GPU(s), {args.rows} rows, nn {args.epochs} epochs of global batch {args.batch_size}")
    for name, s in seconds.items():
        rate = train_rows * args.epochs / s if name.startswith("nn") else args.rows / s
        print(f"  {name:12s} {s:8.1f} s  {rate:14,.0f} rows/s")
    checks = [(f"exact on {max(gpus, 1)} rank(s) vs one CPU process: weights within {EXACT_RTOL:g} relative",
               exact_gap <= EXACT_RTOL, f"{exact_gap:.2g}"),
              (f"nn on {gpus} GPU(s) vs CPU: training MSE within {NN_MSE_RTOL:.0%}", nn_gap <= NN_MSE_RTOL,
               f"{gpu_mse:.6g} vs {cpu_mse:.6g} ({nn_gap:.2%})")]
    for text, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {text}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
