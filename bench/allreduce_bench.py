"""What a collective costs here: latency and bandwidth of gloo's all-reduce on loopback, and the all-gathers
a run makes (region lists, per-region metrics), for the scaling model in docs/scaling.md.

    python -m bench.allreduce_bench                   # 2 ranks, ~30 s
    python -m bench.allreduce_bench --ranks 2 --repeats 50

For each message size (float32 elements) two forked processes (one thread each, as torchrun sets) time one
`all_reduce` (median of --repeats, after warm-up) and print the time, the algorithm bandwidth S/t and the bus
bandwidth S/t * 2(n-1)/n (nccl-tests' definitions, so the figures compare with published NCCL ones). The
smallest message's time is the latency alpha, the largest's bus bandwidth B: t(S) ~ alpha + 2(n-1)/n * S/B.
Then the all-gather of a Python list of R region names (`Cluster.all_gather_object`, as the holdout split
and the folds do) for R = 1e3..1e6.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import statistics
import tempfile
import time

SIZES = [1, 16, 256, 4096, 65536, 1 << 20, 1 << 24]  # float32 elements: 4 B .. 64 MB
REGIONS = [1_000, 10_000, 100_000, 1_000_000]


def _rank(rank: int, world: int, init: str, repeats: int, queue) -> None:
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=dt.timedelta(seconds=300))
    from linreg.parallel.dist import Cluster

    cluster = Cluster(rank=rank, world_size=world, local_rank=rank, device="cpu")
    reduce_times = {}
    for size in SIZES:
        tensor = torch.ones(size)
        times = []
        for i in range(repeats + 3):
            tdist.barrier()
            started = time.perf_counter()
            tdist.all_reduce(tensor)
            if i >= 3:  # warm-up
                times.append(time.perf_counter() - started)
        reduce_times[size] = statistics.median(times)
    gather_times = {}
    for count in REGIONS:
        names = [f"R{rank}-{i:07d}" for i in range(count // world)]
        times = []
        for _ in range(max(3, repeats // 10)):
            tdist.barrier()
            started = time.perf_counter()
            cluster.all_gather_object(names)
            times.append(time.perf_counter() - started)
        gather_times[count] = statistics.median(times)
    if rank == 0:
        queue.put((reduce_times, gather_times))
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.allreduce_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    queue = context.Queue()
    init = os.path.join(tempfile.mkdtemp(prefix="allreduce-"), "init")
    procs = [context.Process(target=_rank, args=(r, args.ranks, init, args.repeats, queue))
             for r in range(args.ranks)]
    for p in procs:
        p.start()
    reduce_times, gather_times = queue.get(timeout=600)
    for p in procs:
        p.join()
    n = args.ranks
    print(f"gloo all_reduce on loopback, {n} ranks, one thread each (median of {args.repeats})")
    print(f"{'bytes':>12} {'time (us)':>12} {'algbw (GB/s)':>14} {'busbw (GB/s)':>14}")
    for size, t in reduce_times.items():
        nbytes = 4 * size
        print(f"{nbytes:>12} {t * 1e6:>12.1f} {nbytes / t / 1e9:>14.3f} {nbytes / t / 1e9 * 2 * (n - 1) / n:>14.3f}")
    alpha = reduce_times[SIZES[0]]
    busbw = 4 * SIZES[-1] / reduce_times[SIZES[-1]] * 2 * (n - 1) / n
    print(f"latency alpha {alpha * 1e6:.1f} us; bus bandwidth B {busbw / 1e9:.2f} GB/s")
    print(f"all_gather_object of region names ({n} ranks)")
    for count, t in gather_times.items():
        print(f"  {count:>9} regions {t * 1e3:10.1f} ms")


if __name__ == "__main__":
    main()
