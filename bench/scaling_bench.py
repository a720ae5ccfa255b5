"""Scaling of data-parallel training on this machine (gloo, CPU), printed as ratios; nothing is asserted.

    python -m bench.scaling_bench                     # ~1-2 minutes on 2 cores
    python -m bench.scaling_bench --rows 400000 --batch-size 4096

1. Training throughput: the `nn` trainer (DDP) on --rows rows for --epochs epochs with global batch
   --batch-size, with 1 and with 2 ranks (forked processes, one thread each, as torchrun sets): rows per
   second of the whole job, and the speed-up (rows/s with 2 ranks over rows/s with 1).
2. Communication per step: with 2 ranks, the time of one all-reduce of the model's gradients (as DDP does
   once per step) over the time of one training step.
3. The join of one rank's shard (2 ranks) over the join of all rows in one process (one DuckDB thread each,
   footers read included), for three layouts: files sorted by region (ranks take ranges of regions and read
   only their row groups), hive-partitioned by region (a rank reads only its files), and rows shuffled
   across files (every rank scans the key columns of every file and filters by the region hash).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as tdist

FEATURES, TARGETS = ["temp", "rainfall", "humidity"], ["apples", "oranges"]


def _rank(rank, world, init, rows, epochs, batch, queue):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=dt.timedelta(seconds=120))
    from linreg.parallel.dist import Cluster

    from linreg.models.sources import ShuffledOnceRows
    from linreg.models.trainers import SGD, Linear, Schedule, train_nn
    from linreg.parallel import merge

    cluster = Cluster(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(rank)
    n = rows // world
    X = torch.randn(n, len(FEATURES), generator=gen)
    Y = X @ torch.randn(len(FEATURES), len(TARGETS), generator=torch.Generator().manual_seed(0)) \
        + 0.1 * torch.randn(n, len(TARGETS), generator=gen)
    tdist.barrier()
    start = time.perf_counter()
    source = ShuffledOnceRows(X, Y, None, batch=batch, cluster=cluster, seed=0)
    torch.manual_seed(0)
    model = Linear(len(FEATURES), len(TARGETS))
    result = train_nn(source, model, SGD(model.parameters(), lr=0.05), Schedule(0.05, tol=0, patience=5),
                      epochs=epochs, forward=merge.data_parallel(model, cluster, X.device))
    seconds = time.perf_counter() - start
    steps = result.epochs * -(-rows // batch)
    comm = None
    if world > 1:  # one all-reduce of the gradients (weight and bias), as DDP does per step
        grads = torch.zeros(len(TARGETS) * (len(FEATURES) + 1))
        tdist.barrier()
        t = time.perf_counter()
        for _ in range(2000):
            tdist.all_reduce(grads)
        comm = (time.perf_counter() - t) / 2000
    queue.put((rank, seconds, steps, comm))
    tdist.destroy_process_group()


def train_rate(rows: int, epochs: int, batch: int, world: int) -> tuple[float, float, float | None]:
    """(rows per second of the job, seconds per step, all-reduce seconds) with `world` forked ranks."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    init = tempfile.mktemp(prefix="linreg-bench-init-")
    procs = [ctx.Process(target=_rank, args=(r, world, init, rows, epochs, batch, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    seconds = max(r[1] for r in results)
    steps = results[0][2]
    comm = next((r[3] for r in results if r[0] == 0), None)
    return rows * epochs / seconds, seconds / steps, comm


def join_seconds(weather: str, yields: str, world: int, rank: int, work: str) -> float:
    from linreg.inputs import shard
    from linreg.inputs.join import connect, join_tables
    from linreg.inputs.schema import resolve_columns
    from linreg.inputs.tables import open_table

    start = time.perf_counter()
    w, y = open_table(weather, "weather"), open_table(yields, "yields")
    columns = resolve_columns(w, y, features=FEATURES, targets=TARGETS, keys=None)
    sharding = shard.plan_sharding(w, y, columns.region, world)
    w, _ = shard.restrict(w, columns.region, rank, sharding)
    y, _ = shard.restrict(y, columns.region, rank, sharding)
    con = connect(work, 2 << 30, threads=1)
    join_tables(con, w, y, columns, os.path.join(work, f"joined-{world}-{rank}.parquet"), max_drop_fraction=1.0,
                row_filter=sharding.predicate(columns.region, rank), filter_rows=sharding.by_range, check=False,
                ordered=False)
    con.close()
    return time.perf_counter() - start


def exchanged_seconds(weather: str, yields: str, world: int, rank: int, work: str) -> float:
    """Rank `rank`'s join of rows exchanged by all ranks (`linreg.inputs.exchange`): the other ranks' sends run
    first, untimed (in a job they run at the same time on their own cores), then this rank's send, receive and
    join are timed."""
    from linreg.inputs import exchange
    from linreg.inputs.join import connect, join_tables, needed_columns
    from linreg.inputs.schema import resolve_columns
    from linreg.inputs.tables import open_table

    w, y = open_table(weather, "weather"), open_table(yields, "yields")
    columns = resolve_columns(w, y, features=FEATURES, targets=TARGETS, keys=None)
    shares = exchange.plan_shares(w, y, world)
    directory = os.path.join(work, f"exchange-{world}")
    con = connect(work, 2 << 30, threads=1)
    try:
        for sender in [r for r in range(world) if r != rank] + [rank]:
            if sender == rank:
                start = time.perf_counter()
            exchange.send_tables(con, (w, y), needed_columns(columns, None), columns.region, shares, directory,
                                 sender, world)
        received = exchange.receive_tables(directory, rank, world)
        join_tables(con, w, y, columns, os.path.join(work, f"exchanged-{world}-{rank}.arrow"), max_drop_fraction=1.0,
                    check=False, ordered=False, exchanged=received)
        return time.perf_counter() - start
    finally:
        con.close()
        shutil.rmtree(directory, ignore_errors=True)


def shuffle_files(directory: Path, seed: int = 0) -> None:
    """Rewrite a table's files with its rows shuffled across them (every file then holds every region's
    range, as with one file per year): the layout whose ranks fall back to the region hash."""
    import numpy as np
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet"))
    table = pq.read_table(files)
    table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    for i, (file, part) in enumerate(zip(files, np.array_split(np.arange(table.num_rows), len(files)))):
        pq.write_table(table.slice(int(part[0]), len(part)) if len(part) else table.slice(0, 0), file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--join-rows", type=int, default=1_000_000)
    args = parser.parse_args()

    one_rate, one_step, _ = train_rate(args.rows, args.epochs, args.batch_size, 1)
    two_rate, two_step, comm = train_rate(args.rows, args.epochs, args.batch_size, 2)
    print(f"training (nn, {args.rows} rows, global batch {args.batch_size}, {args.epochs} epochs, gloo, "
          f"{os.cpu_count()} cores)")
    print(f"  rows/s with 1 rank : {one_rate:,.0f}")
    print(f"  rows/s with 2 ranks: {two_rate:,.0f}")
    print(f"  speed-up 2 ranks / 1 rank: {two_rate / one_rate:.2f}")
    print(f"  all-reduce / step time (2 ranks): {comm / two_step:.2f}  "
          f"({comm * 1e6:.0f} us of {two_step * 1e6:.0f} us per step)")

    from datagen.synth import generate

    with tempfile.TemporaryDirectory(prefix="linreg-scaling-") as tmp:
        flat, parted, shuffled = Path(tmp) / "flat", Path(tmp) / "parted", Path(tmp) / "shuffled"
        regions = max(args.join_rows // 1000, 4)
        generate(flat, rows=args.join_rows, regions=regions)
        generate(parted, rows=args.join_rows, regions=regions, partition_by_region=True)
        generate(shuffled, rows=args.join_rows, regions=regions)
        for table in ("weather", "yields"):
            shuffle_files(shuffled / table)
        for name, data in (("files sorted by region", flat), ("partitioned by region", parted),
                           ("rows shuffled across files", shuffled)):
            w, y = str(data / "weather"), str(data / "yields")
            whole = join_seconds(w, y, 1, 0, tmp)
            shard0 = join_seconds(w, y, 2, 0, tmp)
            print(f"join of one rank's shard (2 ranks) / join of all rows, {name} ({args.join_rows} rows, "
                  f"{regions} regions): {shard0 / whole:.2f}  ({shard0:.2f} s / {whole:.2f} s)")
            if data is shuffled:  # what one machine's ranks do with this layout: the shared scan
                sent = exchanged_seconds(w, y, 2, 0, tmp)
                print(f"the same rank's send of its files' rows and join of the rows exchanged (2 ranks) / join of "
                      f"all rows: {sent / whole:.2f}  ({sent:.2f} s / {whole:.2f} s)")


if __name__ == "__main__":
    main()
