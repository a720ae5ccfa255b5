"""Small builders for test inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SEED_X = np.array([[73, 67, 43], [91, 88, 64], [87, 134, 58], [102, 43, 37], [69, 96, 70], [74, 66, 43],
                   [91, 87, 65], [88, 134, 59], [101, 44, 37], [68, 96, 71], [73, 66, 44], [92, 87, 64],
                   [87, 135, 57], [103, 43, 36], [68, 97, 70]], dtype=np.float64)
SEED_Y = np.array([[56, 70], [81, 101], [119, 133], [22, 37], [103, 119], [57, 69], [80, 102], [118, 132],
                   [21, 38], [104, 118], [57, 69], [82, 100], [118, 134], [20, 38], [102, 120]], dtype=np.float64)


def write(path: Path | str, **columns) -> str:
    """Write one Parquet file with the given columns (lists or arrays); return its path as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def linear_tables(directory: Path, *, rows: int = 200, regions: int = 20, features=("temp", "rainfall", "humidity"),
                  targets=("apples", "oranges"), seed: int = 0, noise: float = 1.0, files: int = 1):
    """Weather and yields files over regions x years from a known linear model; returns (weather, yields, W, b)."""
    rng = np.random.default_rng(seed)
    region = np.array([f"R{i % regions:03d}" for i in range(rows)])
    year = np.array([2000 + i // regions for i in range(rows)], dtype=np.int64)
    X = rng.normal(size=(rows, len(features))) * 10 + 50
    W = rng.normal(size=(len(targets), len(features)))
    b = rng.normal(size=len(targets)) * 5
    Y = X @ W.T + b + noise * rng.normal(size=(rows, len(targets)))
    weather_dir, yields_dir = Path(directory) / "weather", Path(directory) / "yields"
    order = rng.permutation(rows)
    for f, chunk in enumerate(np.array_split(order, files)):
        write(weather_dir / f"part-{f}.parquet", region=region[chunk], year=year[chunk],
              **{name: X[chunk, j] for j, name in enumerate(features)})
    for f, chunk in enumerate(np.array_split(np.arange(rows), files)):
        write(yields_dir / f"part-{f}.parquet", region=region[chunk], year=year[chunk],
              **{name: Y[chunk, j] for j, name in enumerate(targets)})
    return str(weather_dir), str(yields_dir), W, b


def stop_process_group(proc) -> None:
    """SIGTERM the process group of `proc` (a subprocess.Popen started with start_new_session=True), then
    SIGKILL it if it has not exited within 15 s."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def flow_run_logs(client, flow_run_id, until=lambda messages: True, timeout: float = 30.0) -> list[str]:
    """Every log message of a flow run, read page by page (the server returns at most 200 per call).
    A run's last log batch can reach the server after its final state, so this re-reads for up to
    `timeout` seconds until `until(messages)` holds, and returns what it has then."""
    import time

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    while True:
        messages = []
        while True:
            page = client.read_logs(log_filter=log_filter, limit=200, offset=len(messages))
            messages += [entry.message for entry in page]
            if len(page) < 200:
                break
        if until(messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)
