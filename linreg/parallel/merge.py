"""Merging the partial results of the ranks of a data-parallel job, so they equal one process's results.

Every rank sees a shard of the rows (whole regions). Partial results are small (a triangular factor,
moments, sums), so each rank all-gathers them and merges them in rank order: every rank ends with the
same, exact merged value (sums in float64; R factors stacked and re-factorized; moments by Chan's
formula), never an average of per-rank averages.
"""

from __future__ import annotations

import numpy as np

from linreg.parallel.dist import Cluster
from linreg.models.exact import ExactAccumulator
from linreg.models.standardize import Moments


def moments_state(m: Moments) -> tuple:
    return (m.n, m.weight, m.mean, m.comoment)


def moments_from_state(state: tuple) -> Moments:
    n, weight, mean, comoment = state
    m = Moments(len(mean))
    m.n, m.weight, m.mean, m.comoment = n, weight, np.asarray(mean), np.asarray(comoment)
    return m


def merge_moments(cluster: Cluster, local: Moments) -> Moments:
    """The moments of every rank's rows (Chan's parallel merge, in rank order)."""
    if not cluster.distributed:
        return local
    merged = Moments(len(local.mean))
    for state in cluster.all_gather_object(moments_state(local)):
        merged.merge(moments_from_state(state))
    return merged


def merge_exact(cluster: Cluster, local: ExactAccumulator) -> ExactAccumulator:
    """The streaming QR of every rank's rows: R factors stacked (shifts reconciled) and re-factorized."""
    if not cluster.distributed:
        return local
    states = cluster.all_gather_object(local.state())
    merged = type(local).from_state(states[0])  # a GramAccumulator merges Gram matrices
    for state in states[1:]:
        merged.merge(type(local).from_state(state))
    return merged


def merge_split_errors(cluster: Cluster, local: dict) -> dict:
    """{split: metrics.SplitErrors} summed over ranks: squared errors added, target moments merged."""
    if not cluster.distributed:
        return local
    gathered = cluster.all_gather_object({s: (e.sse, moments_state(e.y)) for s, e in local.items()})
    for split, errors in local.items():
        errors.sse = np.sum([g[split][0] for g in gathered], axis=0)
        y = Moments(len(errors.sse))
        for g in gathered:
            y.merge(moments_from_state(g[split][1]))
        errors.y = y
    return local


def total(cluster: Cluster, value):
    """Sum of a Python number (or {key: number}) over ranks, exactly (Python ints, float sums in rank order)."""
    values = cluster.all_gather_object(value)
    if isinstance(value, dict):
        keys = sorted({k for v in values for k in v})
        return {k: sum(v.get(k, 0) for v in values) for k in keys}
    return sum(values)


def step_slices(n_local: int, batch: int, n_total: int, cluster: Cluster) -> list[tuple[int, int, int]]:
    """The steps of one epoch as (start, stop, global rows of the step) over this rank's (shuffled) rows.

    One process: contiguous slices of `batch` rows. Several ranks: every rank takes the same number of
    steps, ceil(n_total / batch), and its share of each step is proportional to its rows, so a global step
    holds about `batch` rows (the global batch) and the gradient is the mean over the step's rows of all
    ranks; ranks with fewer rows (or none) never leave the others waiting in an all-reduce.
    """
    if not cluster.distributed:
        return [(i, min(i + batch, n_local), min(i + batch, n_local) - i) for i in range(0, n_local, batch)]
    import torch

    steps = max(1, -(-n_total // max(batch, 1)))
    edges = [s * n_local // steps for s in range(steps + 1)]
    rows = torch.tensor([edges[s + 1] - edges[s] for s in range(steps)], dtype=torch.float64,
                        device=cluster.comm_device)
    cluster.all_reduce_sum(rows)
    return [(edges[s], edges[s + 1], int(rows[s])) for s in range(steps)]


def rows_generator(seed: int, rank: int):
    """A torch.Generator for the one-time shuffle of this rank's rows (depends only on seed and rank)."""
    import torch

    state = int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


def epoch_generator(seed: int, epoch: int, rank: int):
    """A torch.Generator for this rank's shuffle of `epoch` (as DistributedSampler.set_epoch): the order
    depends only on (seed, epoch, rank), so a job resumed from a snapshot shuffles as if never stopped."""
    import torch

    state = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)
