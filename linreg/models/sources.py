"""Where a gradient trainer's steps come from: its training rows in memory, or streamed from disk every epoch.

Every source has one interface (what `linreg.models.trainers` uses):

- `epoch(epoch)`: the epoch's steps; a step is a list of blocks (X (m, p), Y (m, k), w (m,) or None, rows),
  `rows` the global row count of the step (all ranks). One block per step, except full-batch descent over
  streamed rows (`accumulates`: the gradient is summed over the blocks, then one update).
- `loss(pred, Y, w, rows)`: a block's data loss, scaled so that the gradients summed over the step's blocks
  (and ranks) are the gradient of the step's (weighted) mean squared error; `ridge(weight, penalty)` the
  penalty's term in the step's loss. `own_loss(pred, Y, w)` (nn's sources): a rank's mean over its own block,
  for local SGD, recorded as the loss of (block rows x world size) rows.
- `epoch_loss(blocks, weight, bias, penalty)`: the epoch's loss for the stopping rule, from the blocks'
  detached losses (block loss, block rows, step rows) or from a pass over the rows.

The sources are built by `linreg.models.fit` from this rank's rows and the `Cluster`: with several ranks the
steps come from `linreg.parallel.merge` (equal step counts on every rank, per-rank shuffles) and the epoch's
loss is summed over ranks. Each keeps the float32 operations, in order, that its path has always used, so
a seeded run gives the same values (the in-memory and streamed paths were written apart and round apart).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linreg.inputs.stream import StreamedRows
from linreg.parallel import merge
from linreg.parallel.dist import Cluster

STREAM_BATCH = 65536  # rows per streamed block when full-batch descent accumulates gradients over the stream


def global_rows(n_local: int, cluster: Cluster, device) -> int:
    """The row count of all ranks."""
    return int(cluster.all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=device)))


def mean_weight(sample_weight: torch.Tensor | None, n_total: int, cluster: Cluster, device) -> float:
    """The mean weight over all ranks' rows (1 without weights)."""
    if sample_weight is None:
        return 1.0
    total = cluster.all_reduce_sum(sample_weight.sum(dtype=torch.float64).to(device))
    return float(total) / max(n_total, 1)


def own_loss(pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, mean_weight: float) -> torch.Tensor:
    """A rank's own (weighted) mean squared error over its block of m > 0 rows (local SGD: the averaging
    weighs the ranks by their rows): sum w_i ||r_i||^2 / (m * mean_weight * k); unweighted, F.mse_loss (one
    operation: a step of this tiny model costs little more than its operations' overhead)."""
    if w is None:
        return F.mse_loss(pred, Y)
    return (w[:, None] * (pred - Y) ** 2).sum() / (len(Y) * mean_weight * Y.shape[1])


def full_loss(X: torch.Tensor, Y: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor,
              cluster: Cluster, total_elems: float, chunk: int = 1 << 20, *,
              sample_weight: torch.Tensor | None = None, penalty: torch.Tensor | None = None) -> float:
    """(Weighted) mean squared error over all rows and targets (all ranks), summed in float64 chunk by chunk,
    plus the ridge term. X (n, p), Y (n, k), coef (k, p), intercept (k,); total_elems: rows times targets,
    or the weight sum times targets with weights."""
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        for i in range(0, len(X), chunk):
            diff = X[i:i + chunk] @ coef.T + intercept - Y[i:i + chunk]
            sq = diff * diff
            if sample_weight is not None:
                sq = sq * sample_weight[i:i + chunk, None]
            total += sq.sum(dtype=torch.float64)
        loss = float(cluster.all_reduce_sum(total)) / total_elems
        if penalty is not None:
            loss += float((penalty.double() * coef.double() ** 2).sum()) / coef.shape[0]
        return loss


class ReshuffledRows:
    """manual's rows in memory: X (n, p), Y (n, k), optional w (n,) float32 on the cluster's device; every
    epoch reshuffles them (when a step holds fewer than all rows) and cuts them into contiguous steps of
    `batch` global rows (None: full batch). The epoch's loss is a pass over all rows after the epoch."""

    accumulates = False

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, sample_weight: torch.Tensor | None, *, batch: int | None,
                 cluster: Cluster, seed: int, generator: torch.Generator):
        self.X, self.Y, self.w, self.cluster, self.seed, self.generator = X, Y, sample_weight, cluster, seed, generator
        self.n_rows = global_rows(len(X), cluster, X.device)
        self.mean_weight = mean_weight(sample_weight, self.n_rows, cluster, X.device)
        self.batch = batch or self.n_rows
        self.steps = merge.step_slices(len(X), self.batch, self.n_rows, cluster)  # equal step counts on every rank

    def epoch(self, epoch: int):
        order = merge.epoch_order(len(self.X), self.batch, self.n_rows, self.cluster, seed=self.seed, epoch=epoch,
                                  generator=self.generator)
        X, Y, w = self.X, self.Y, self.w
        if order is not None:
            order = order.to(X.device)
            X, Y, w = X[order], Y[order], (None if w is None else w[order])
        for lo, hi, rows in self.steps:
            yield [(X[lo:hi], Y[lo:hi], None if w is None else w[lo:hi], rows)]

    def loss(self, pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, rows: int) -> torch.Tensor:
        diff = pred - Y
        if w is None:
            return torch.sum(diff * diff) / (rows * diff.shape[1])
        return torch.sum(w[:, None] * diff * diff) / (rows * self.mean_weight * diff.shape[1])

    def ridge(self, weight: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Once in the sum of the ranks' gradients."""
        return torch.sum(penalty * weight * weight) / (weight.shape[0] * self.cluster.world_size)

    def epoch_loss(self, blocks, weight: torch.Tensor, bias: torch.Tensor, penalty: torch.Tensor | None) -> float:
        return full_loss(self.X, self.Y, weight.detach(), bias.detach(), self.cluster,
                         self.n_rows * self.mean_weight * weight.shape[0], sample_weight=self.w, penalty=penalty)


class ShuffledOnceRows:
    """nn's rows in memory: shuffled once (seeded by seed and rank) into contiguous batches of `batch` global
    rows, visited in a new order every epoch, the same on every rank ("shuffle once": a per-epoch gather of
    every row costs more than the epoch's SGD steps). The epoch's loss is the mean of its batch losses
    before each step (as scikit-learn's SGD), summed over ranks, not another pass over the rows."""

    accumulates = False

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, sample_weight: torch.Tensor | None, *, batch: int,
                 cluster: Cluster, seed: int):
        self.cluster, self.seed, self.world = cluster, seed, cluster.world_size
        self.n_rows = global_rows(len(X), cluster, X.device)
        self.mean_weight = mean_weight(sample_weight, self.n_rows, cluster, X.device)
        once = torch.randperm(len(X), generator=merge.rows_generator(seed, cluster.rank)).to(X.device)
        self.X, self.Y = X.index_select(0, once), Y.index_select(0, once)  # contiguous: batches are slices
        self.w = None if sample_weight is None else sample_weight.index_select(0, once)
        self.steps = merge.step_slices(len(X), max(1, min(batch, self.n_rows)), self.n_rows, cluster)

    def epoch(self, epoch: int):
        for s in torch.randperm(len(self.steps), generator=merge.epoch_generator(self.seed, epoch, 0)).tolist():
            lo, hi, rows = self.steps[s]
            yield [(self.X[lo:hi], self.Y[lo:hi], None if self.w is None else self.w[lo:hi], rows)]

    def loss(self, pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, rows: int) -> torch.Tensor:
        """DDP averages gradients over ranks: times world_size / global step rows gives the global mean."""
        k = Y.shape[1]
        if w is None and self.world == 1:
            return F.mse_loss(pred, Y)
        if w is None:
            return F.mse_loss(pred, Y, reduction="sum") * (self.world / (rows * k))
        return (w[:, None] * (pred - Y) ** 2).sum() / (rows * self.mean_weight * k) * self.world

    def own_loss(self, pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """This rank's mean loss over its block (local SGD; `own_loss`)."""
        return own_loss(pred, Y, w, self.mean_weight)

    def ridge(self, weight: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        return (penalty * weight ** 2).sum() / weight.shape[0]

    def epoch_loss(self, blocks, weight: torch.Tensor, bias: torch.Tensor, penalty: torch.Tensor | None) -> float:
        # a step's loss times rows * mean_weight / world_size is its rows' share of sum w * r^2 / k (all ranks)
        share = torch.tensor([rows * self.mean_weight / self.world for _, _, rows in blocks], dtype=torch.float64)
        losses = torch.stack([loss for loss, _, _ in blocks]).double().cpu()
        data_loss = self.cluster.all_reduce_sum((losses * share).sum().to(self.cluster.comm_device))
        loss = float(data_loss) / (self.n_rows * self.mean_weight)
        if penalty is not None:
            loss += float((penalty.double() * weight.detach().double() ** 2).sum()) / weight.shape[0]
        return loss


class StreamedSteps:
    """Rows re-read from disk every epoch (`linreg.inputs.stream.StreamedRows`: this rank's rows), shuffled
    through a buffer, in blocks of `batch` rows (None: full batch, accumulated over blocks of STREAM_BATCH
    rows). With several ranks every rank takes the same steps (`merge.step_slices`: ceil(all rows / batch),
    its share of each step proportional to its rows, empty blocks included), and `averaged` says whether the
    ranks' gradients are averaged (nn under DDP: losses times the world size) or summed (manual). The epoch's
    loss is the mean of the block losses seen during the epoch (summed over ranks), not a second pass."""

    def __init__(self, rows: StreamedRows, *, batch: int | None, seed: int, device: torch.device,
                 cluster: Cluster | None = None, averaged: bool = False):
        self.rows, self.seed, self.device = rows, seed, device
        self.cluster = cluster
        self.world = 1 if cluster is None else cluster.world_size
        self.n_rows = rows.n_rows if self.world == 1 else global_rows(rows.n_rows, cluster, device)
        self.mean_weight = rows.mean_weight
        self.accumulates = batch is None
        self.block = STREAM_BATCH if batch is None else batch
        self.scale = self.world if averaged else 1  # DDP divides the summed gradients by the world size
        self.steps = None  # with several ranks, mini-batches: (this rank's rows, all ranks' rows) of each step
        if self.world > 1 and not self.accumulates:
            self.steps = [(hi - lo, rows) for lo, hi, rows in
                          merge.step_slices(rows.n_rows, max(1, min(batch, self.n_rows)), self.n_rows, cluster)]

    def epoch(self, epoch: int):
        rank = None if self.world == 1 else self.cluster.rank
        if self.steps is None:  # one process, or full batch: the step's rows are the block's, or all rows
            blocks = ((X, Y, w, self.n_rows if self.accumulates else len(X))
                      for X, Y, w in self.rows.epoch(epoch, self.seed, self.block, self.device, rank=rank))
        else:
            sizes = [m for m, _ in self.steps]
            blocks = ((X, Y, w, rows) for (X, Y, w), (_, rows) in
                      zip(self.rows.epoch(epoch, self.seed, self.block, self.device, rank=rank, sizes=sizes),
                          self.steps, strict=True))
        if self.accumulates:
            yield blocks
        else:
            for block in blocks:
                yield [block]

    def loss(self, pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, rows: int) -> torch.Tensor:
        sq = (pred - Y) ** 2
        loss = (sq.sum() if w is None else (w[:, None] * sq).sum()) / (rows * self.mean_weight * Y.shape[1])
        return loss if self.scale == 1 else loss * self.scale

    def own_loss(self, pred: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """This rank's mean loss over its block (local SGD; `own_loss`)."""
        return own_loss(pred, Y, w, self.mean_weight)

    def ridge(self, weight: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Once in the ranks' gradients: averaged (nn) as it is, summed (manual) a world_size-th on each rank."""
        ridge = (penalty * weight * weight).sum() / weight.shape[0]
        return ridge if self.world == self.scale else ridge / self.world

    def epoch_loss(self, blocks, weight: torch.Tensor, bias: torch.Tensor, penalty: torch.Tensor | None) -> float:
        data_loss = 0.0
        if self.world == 1:
            for loss, m, _ in blocks:
                data_loss += float(loss) * (1.0 if self.accumulates else m / self.n_rows)
        else:  # a block's loss times its step's rows / scale is its rows' sum of w * r^2 / (mean weight * k)
            mine = sum(float(loss) * rows / self.scale for loss, _, rows in blocks)
            data_loss = float(self.cluster.all_reduce_sum(torch.tensor(mine, dtype=torch.float64,
                                                                       device=self.cluster.comm_device))) / self.n_rows
        ridge = 0.0 if penalty is None else float((penalty * weight.detach() ** 2).sum()) / weight.shape[0]
        return data_loss + ridge
