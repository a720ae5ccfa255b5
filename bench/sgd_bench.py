"""One `nn` epoch of the product against the fastest bare PyTorch loop over the same tensors and batch size.

    python -m bench.sgd_bench --rows 2000000 --batch-size 1024 8192 65536

The bare loop is the PERF-NOTES floor for nn.Linear + torch.optim.SGD: shuffled contiguous chunks (the chunk order
is permuted, rows inside a chunk stay together), no per-epoch loss evaluation. The product's epoch
(linreg.models.trainers.train_nn, tol 0) shuffles the rows once, then visits contiguous batches in a new order
every epoch and records each batch's loss for its convergence rule; its fastest epoch of --repeat is
compared with the bare loop's fastest, and its one-time setup (packing, the one shuffle) is printed apart.
Prints rows per second and the product / floor time ratio (target: within 1.2x).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linreg.models.sources import ShuffledOnceRows
from linreg.models.trainers import SGD, Linear, Schedule, train_nn
from linreg.parallel import dist, merge


def bare_epoch(X: torch.Tensor, Y: torch.Tensor, batch: int, gen: torch.Generator) -> float:
    model = nn.Linear(X.shape[1], Y.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    starts = torch.randperm((len(X) + batch - 1) // batch, generator=gen) * batch
    start = time.perf_counter()
    for s in starts.tolist():
        loss = F.mse_loss(model(X[s:s + batch]), Y[s:s + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def product_epochs(X: torch.Tensor, Y: torch.Tensor, batch: int, epochs: int) -> tuple[float, float]:
    """(fastest epoch, one-time setup: packing and the one shuffle of the rows) of a train_nn run."""
    cluster = dist.single_process("cpu")
    start = time.perf_counter()
    source = ShuffledOnceRows(X, Y, None, batch=batch, cluster=cluster, seed=0)  # packing and the one shuffle
    setup = time.perf_counter() - start
    torch.manual_seed(0)
    model = Linear(X.shape[1], Y.shape[1])  # the product's model and update (`linreg.models.gradient`)
    result = train_nn(source, model, SGD(model.parameters(), lr=0.01), Schedule(0.01, tol=0.0, patience=5),
                      epochs=epochs, forward=merge.data_parallel(model, cluster, X.device))
    return min(result.epoch_seconds), setup + result.seconds - sum(result.epoch_seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--repeat", type=int, default=3, help="best of N epochs each")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(args.rows, 3)).astype(np.float32))
    Y = torch.from_numpy(rng.normal(size=(args.rows, 2)).astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    print(f"{args.rows:,} rows, 3 features, 2 targets, {torch.get_num_threads()} threads")
    print(f"{'batch':>7s} {'bare M rows/s':>14s} {'product M rows/s':>17s} {'product / bare':>15s} "
          f"{'setup s':>8s}")
    for batch in args.batch_size:
        bare = min(bare_epoch(X, Y, batch, gen) for _ in range(args.repeat))
        ours, setup = product_epochs(X, Y, batch, args.repeat)
        print(f"{batch:7d} {args.rows / bare / 1e6:14.1f} {args.rows / ours / 1e6:17.1f} {ours / bare:15.2f} "
              f"{setup:8.2f}")


if __name__ == "__main__":
    main()
