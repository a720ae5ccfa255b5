"""Merging the partial results of the ranks of a data-parallel job, so they equal one process's results.

Every rank sees a shard of the rows (whole regions). Partial results are small (a triangular factor,
moments, sums), so each rank all-gathers them and merges them in rank order: every rank ends with the
same, exact merged value (sums in float64; R factors stacked and re-factorized; moments by Chan's
formula), never an average of per-rank averages. The partial results know how to merge themselves
(`state()`, `from_state()`, `merge()`); this module holds the collectives (`merged`), so it never imports
the models.

The gradient trainers' data-parallel pieces are here too, used by whoever builds a trainer's batch source
and model (`linreg.models.fit`, `linreg.models.sources`), never by the trainers: equal step counts on every
rank (`step_slices`), the per-rank shuffles (`rows_generator`, `epoch_generator`, `epoch_order`) and the
DistributedDataParallel wrapping (`data_parallel`). Each is an identity, or one process's plain choice,
with one process.
"""

from __future__ import annotations

import numpy as np

from linreg.parallel.dist import Cluster


def merged(cluster: Cluster, local):
    """`local` merged with every rank's counterpart in rank order; `local` itself with one process.

    local: any partial result with `state()` (picklable), `type(local).from_state(state)` and
    `merge(other)` (`linreg.models.standardize.Moments`, `linreg.models.exact.ExactAccumulator` and
    `GramAccumulator`): the collective is here, what merging means is the partial result's own."""
    if not cluster.distributed:
        return local
    return _merge_states(type(local), cluster.all_gather_object(local.state()))


def _merge_states(kind, states: list):
    """kind.from_state of the first state with the others merged into it, in order."""
    result = kind.from_state(states[0])
    for state in states[1:]:
        result.merge(kind.from_state(state))
    return result


def merge_moments(cluster: Cluster, local):
    """The `Moments` of every rank's rows (Chan's parallel merge, in rank order)."""
    return merged(cluster, local)


def merge_exact(cluster: Cluster, local):
    """The streaming QR of every rank's rows (`ExactAccumulator`: R factors stacked, shifts reconciled, and
    re-factorized; `GramAccumulator`: Gram matrices added)."""
    return merged(cluster, local)


def merge_split_errors(cluster: Cluster, local: dict) -> dict:
    """{split: metrics.SplitErrors} summed over ranks: squared errors added, target moments merged."""
    if not cluster.distributed:
        return local
    gathered = cluster.all_gather_object({s: (e.sse, e.y.state()) for s, e in local.items()})
    for split, errors in local.items():
        errors.sse = np.sum([g[split][0] for g in gathered], axis=0)
        errors.y = _merge_states(type(errors.y), [g[split][1] for g in gathered])
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


def epoch_order(n_local: int, batch: int, n_total: int, cluster: Cluster, *, seed: int, epoch: int, generator):
    """This rank's shuffle of its n_local rows for `epoch` (a CPU index tensor), or None when a step holds
    every row. One process: drawn from `generator` (stateful: snapshots keep it); several ranks: from
    (seed, epoch, rank) alone, as DistributedSampler.set_epoch."""
    import torch

    if not cluster.distributed:
        return torch.randperm(n_local, generator=generator) if batch < n_local else None
    return torch.randperm(n_local, generator=epoch_generator(seed, epoch, cluster.rank)) if batch < n_total else None


def model_averager(module, cluster: Cluster, share: float):
    """A function that replaces `module`'s parameters, on every rank, by their mean over the ranks weighted by
    each rank's `share` of the training rows (shares sum to 1): one all-reduce of all parameters flattened
    together (local SGD's periodic averaging, as torch's `PeriodicModelAverager` does, weighted so that
    averaging after every step is exactly the global mini-batch step)."""
    import torch

    params = [p for p in module.parameters()]

    def average() -> None:
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params]).to(cluster.comm_device) * share
            cluster.all_reduce_sum(flat)
            offset = 0
            for p in params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p).to(p.device))
                offset += p.numel()
    return average


def data_parallel(module, cluster: Cluster, device):
    """`module` as the ranks call it: wrapped in DistributedDataParallel (gradients averaged over ranks at
    each backward) with several ranks, the module itself with one process. device: where its tensors are."""
    if not cluster.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
