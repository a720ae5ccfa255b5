"""The two gradient trainers of the seed notebooks, on float32 tensors already standardized.

- `train_manual`: the from-scratch model: `w`, `b` with requires_grad, the hand-written MSE,
  `loss.backward()`, the update under `torch.no_grad()`, `grad.zero_()`. Full batch by default.
- `train_nn`: `nn.Linear` + `F.mse_loss` + `torch.optim.SGD` over mini-batches: rows shuffled once,
  contiguous batches visited in a new order every epoch (a per-row DataLoader is hundreds of times slower,
  a per-epoch gather of every row costs more than the epoch's steps).

Both share `Schedule`, the stopping rule of scikit-learn's SGD with learning_rate='adaptive': an epoch
counts as progress when it lowers the training loss by more than `tol` (relative: `manual` evaluates the
full loss after the epoch; `nn` takes the mean of the epoch's batch losses, as scikit-learn); after `patience`
epochs without progress the learning rate is divided by 5, and training stops after `max_cuts` cuts.
The default learning rate is 1/L, L the smoothness constant of the mini-batch loss (from the largest
eigenvalue of the design's second moments and the largest row norm, as scikit-learn's SAG picks its step).
Weights are returned in the trainer's (standardized) space; `Standardizer` maps them back.

Optional per-row `sample_weight` (n,) makes every loss a weighted mean: sum w_i ||r_i||^2 / (sum w_i * k)
over all rows; a mini-batch divides by its row count times the mean weight (not by its own weight sum),
so mini-batch gradients stay unbiased. Optional `penalty` (p,) adds the ridge term
sum_jl penalty_l * coef_jl^2 / k (per target: the objective of `fit`'s --l2 in the trainer's space).
Without them the losses are exactly the unweighted ones of the seed notebooks.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linreg.parallel import merge
from linreg.parallel.dist import Cluster
from linreg.errors import InputError

log = logging.getLogger(__name__)
NN_DEFAULT_BATCH = 1024
STREAM_BATCH = 65536  # rows per streamed block when full-batch descent accumulates gradients over the stream


@dataclass
class TrainResult:
    """Fitted weights in the trainer's space: coef (k, p) and intercept (k,), float64, plus the loss per epoch."""

    coef: np.ndarray
    intercept: np.ndarray
    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch (nn in memory)
    lr: float = 0.0
    epochs: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


class Schedule:
    """Adaptive learning rate and stopping rule, decided on the full training loss after each epoch."""

    def __init__(self, lr: float, *, tol: float, patience: int, max_cuts: int = 4):
        self.lr, self.tol, self.patience, self.max_cuts = lr, tol, patience, max_cuts
        self.best = math.inf
        self.stalled = 0
        self.cuts = 0

    def step(self, loss: float) -> str | None:
        """Record an epoch's loss; return why training should stop, or None to go on."""
        if not math.isfinite(loss):
            raise InputError(f"Training diverged (loss {loss}) at learning rate {self.lr:g}: lower --lr, or keep "
                             "the default standardization.")
        if self.tol == 0:
            return None
        if loss < self.best - self.tol * abs(self.best):
            self.stalled = 0
        else:
            self.stalled += 1
        self.best = min(self.best, loss)
        if self.stalled >= self.patience:
            if self.cuts >= self.max_cuts:
                return f"converged: loss improved by less than tol={self.tol:g} for {self.patience} epochs"
            self.lr /= 5
            self.cuts += 1
            self.stalled = 0
        return None


def auto_lr(second_moment: np.ndarray, max_row_sq: float, *, n_rows: int, batch: int, n_targets: int,
            max_penalty: float = 0.0) -> float:
    """1/L for the mean squared error over rows and targets of a (p',)-parameter linear model per target.

    second_moment (p', p'): mean of x x^T of the design (with its ones column when fitting an intercept).
    max_row_sq: the largest ||x||^2 of a row. L interpolates between the full-batch constant and the
    single-row one by the batch size (Gower et al., 2019, "SGD: general analysis and improved rates").
    max_penalty: the largest ridge factor (see the module docstring), which adds 2 * max_penalty / k to L.
    """
    full = 2.0 * (float(np.linalg.eigvalsh(second_moment)[-1]) + max_penalty) / n_targets
    single = 2.0 * (max_row_sq + max_penalty) / n_targets
    b = min(batch, n_rows)
    if n_rows <= 1 or b >= n_rows:
        smooth = full
    else:
        smooth = (n_rows * (b - 1)) / (b * (n_rows - 1)) * full + (n_rows - b) / (b * (n_rows - 1)) * single
    return 1.0 / smooth


def full_loss(X: torch.Tensor, Y: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor,
              cluster: Cluster, total_elems: float, chunk: int = 1 << 20, *,
              sample_weight: torch.Tensor | None = None, penalty: torch.Tensor | None = None) -> float:
    """(Weighted) mean squared error over all rows and targets (all ranks), summed in float64 chunk by chunk,
    plus the ridge term. total_elems: rows times targets, or the weight sum times targets with weights."""
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


def _global_rows(n_local: int, cluster: Cluster, device) -> int:
    return int(cluster.all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=device)))


def _mean_weight(sample_weight: torch.Tensor | None, n_total: int, cluster: Cluster, device) -> float:
    """The mean weight over all ranks' rows (1 without weights)."""
    if sample_weight is None:
        return 1.0
    total = cluster.all_reduce_sum(sample_weight.sum(dtype=torch.float64).to(device))
    return float(total) / max(n_total, 1)


def train_manual(X: torch.Tensor, Y: torch.Tensor, *, lr: float, epochs: int, batch_size: int | None,
                 fit_intercept: bool, tol: float, patience: int, seed: int, cluster: Cluster,
                 sample_weight: torch.Tensor | None = None, penalty: torch.Tensor | None = None,
                 checkpoint=None, stream=None) -> TrainResult:
    """The seed's from-scratch trainer: X (n, p), Y (n, k) float32 on cluster.device; optional
    sample_weight (n,) and ridge penalty (p,) (see the module docstring). With several ranks, X and Y are
    this rank's rows: gradients are all-reduced (summed; each rank's loss is divided by the global step
    rows) before the update. checkpoint: `linreg.outputs.snapshot.Snapshots` (save every N epochs, resume).
    stream: a `linreg.inputs.stream.StreamedRows` read epoch by epoch instead of X, Y (one process); full-batch
    descent then accumulates the gradient over the streamed batches (as `backward()` does) and steps once."""
    start = time.perf_counter()
    device = cluster.device
    if stream is not None:
        return _train_streamed("manual", stream, lr=lr, epochs=epochs, batch_size=batch_size,
                               fit_intercept=fit_intercept, tol=tol, patience=patience, seed=seed, device=device,
                               penalty=penalty, start=start)
    n, p = X.shape
    k = Y.shape[1]
    n_total = _global_rows(n, cluster, X.device)
    mean_weight = _mean_weight(sample_weight, n_total, cluster, X.device)
    gen = torch.Generator().manual_seed(seed)
    w, b = _manual_parameters(k, p, fit_intercept, gen, X.device)
    params = [w, b] if fit_intercept else [w]

    def model(x):
        return x @ w.t() + b

    def mse(preds, targets, rows_total, weights=None):
        diff = preds - targets
        if weights is None:
            return torch.sum(diff * diff) / (rows_total * diff.shape[1])
        return torch.sum(weights[:, None] * diff * diff) / (rows_total * mean_weight * diff.shape[1])

    batch = batch_size or n_total
    steps = merge.step_slices(n, batch, n_total, cluster)  # equal step counts on every rank
    schedule = Schedule(lr, tol=tol, patience=patience)
    result = TrainResult(coef=np.zeros((k, p)), intercept=np.zeros(k))
    first = 0 if checkpoint is None else checkpoint.restore(tensors={"w": w, "b": b}, schedule=schedule,
                                                              losses=result.losses, generator=gen)
    for epoch in range(first, epochs):
        if cluster.distributed:
            order = torch.randperm(n, generator=merge.epoch_generator(seed, epoch, cluster.rank)).to(X.device) \
                if batch < n_total else None
        else:
            order = torch.randperm(n, generator=gen).to(X.device) if batch < n else None
        Xe, Ye = (X, Y) if order is None else (X[order], Y[order])
        We = sample_weight if order is None or sample_weight is None else sample_weight[order]
        for lo, hi, rows in steps:
            xb, yb = Xe[lo:hi], Ye[lo:hi]
            loss = mse(model(xb), yb, rows, None if We is None else We[lo:hi])
            if penalty is not None:  # once in the all-reduced sum of the ranks' gradients
                loss = loss + torch.sum(penalty * w * w) / (k * cluster.world_size)
            loss.backward()
            for param in params:
                cluster.all_reduce_sum(param.grad)
            with torch.no_grad():
                for param in params:
                    param -= param.grad * schedule.lr
                    param.grad.zero_()
        epoch_loss = full_loss(X, Y, w.detach(), b.detach(), cluster, n_total * mean_weight * k,
                               sample_weight=sample_weight, penalty=penalty)
        result.losses.append(epoch_loss)
        result.stop_reason = schedule.step(epoch_loss) or ""  # the all-reduced loss: every rank stops alike
        if result.stop_reason:
            break
        if checkpoint is not None:
            checkpoint.maybe_save(epoch + 1, tensors={"w": w, "b": b}, schedule=schedule, losses=result.losses,
                                  generator=gen)
    return _finish(result, w, b, schedule, start)


def train_nn(X: torch.Tensor, Y: torch.Tensor, *, lr: float, epochs: int, batch_size: int | None,
             fit_intercept: bool, tol: float, patience: int, seed: int, cluster: Cluster,
             sample_weight: torch.Tensor | None = None, penalty: torch.Tensor | None = None,
             checkpoint=None, stream=None) -> TrainResult:
    """nn.Linear + F.mse_loss + optim.SGD over shuffled mini-batches: X (n, p), Y (n, k) float32; optional
    sample_weight (n,) and ridge penalty (p,) (see the module docstring). With several ranks the model is
    wrapped in DistributedDataParallel, X and Y are this rank's rows, `batch_size` is the global batch and
    each rank reshuffles its rows every epoch from (seed, epoch, rank). checkpoint: as in train_manual.
    stream: a `linreg.inputs.stream.StreamedRows` read epoch by epoch instead of X, Y (one process)."""
    start = time.perf_counter()
    if stream is not None:
        return _train_streamed("nn", stream, lr=lr, epochs=epochs, batch_size=batch_size,
                               fit_intercept=fit_intercept, tol=tol, patience=patience, seed=seed,
                               device=cluster.device, penalty=penalty, start=start)
    n, p = X.shape
    k = Y.shape[1]
    n_total = _global_rows(n, cluster, X.device)
    mean_weight = _mean_weight(sample_weight, n_total, cluster, X.device)
    torch.manual_seed(seed)
    model = nn.Linear(p, k, bias=fit_intercept).to(X.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    # Rows are shuffled once (seeded by seed and rank); every epoch then visits the contiguous batches in
    # a new order, the same on every rank ("shuffle once": a per-epoch gather of all rows cost more than
    # the epoch's SGD steps). The epoch's loss for the stopping rule is the mean of its batch losses
    # before each step (as scikit-learn's SGD), not another pass over the rows.
    once = torch.randperm(n, generator=merge.rows_generator(seed, cluster.rank)).to(X.device)
    Xs, Ys = X.index_select(0, once), Y.index_select(0, once)  # contiguous: batches are contiguous slices
    Ws = None if sample_weight is None else sample_weight.index_select(0, once)
    batch = max(1, min(batch_size or NN_DEFAULT_BATCH, n_total))
    steps = merge.step_slices(n, batch, n_total, cluster)  # equal step counts on every rank
    # step s's loss times this is its rows' share of sum w * r^2 / k (all ranks: then summed)
    # (one process: rows = hi - lo, mean_weight 1 without weights, world_size 1)
    share = torch.tensor([rows * mean_weight / cluster.world_size for _, _, rows in steps], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule(lr, tol=tol, patience=patience)
    result = TrainResult(coef=np.zeros((k, p)), intercept=np.zeros(k))
    tensors = {"weight": model.weight, **({"bias": model.bias} if fit_intercept else {})}
    first = 0 if checkpoint is None else checkpoint.restore(tensors=tensors, optimizer=opt, schedule=schedule,
                                                              losses=result.losses, generator=gen)
    forward = model
    if cluster.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[X.device.index] if X.device.type == "cuda" else None)
    for epoch in range(first, epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(steps), generator=merge.epoch_generator(seed, epoch, 0)).tolist()
        step_losses = []  # detached loss tensors: no tensor op per step to record them
        for s in order:
            lo, hi, rows = steps[s]
            xb, yb = Xs[lo:hi], Ys[lo:hi]
            # DDP averages gradients over ranks; times world_size / global step rows gives the global mean.
            if sample_weight is None and not cluster.distributed:
                loss = F.mse_loss(forward(xb), yb)
            elif sample_weight is None:
                loss = F.mse_loss(forward(xb), yb, reduction="sum") * (cluster.world_size / (rows * k))
            else:
                wb = Ws[lo:hi]
                loss = ((wb[:, None] * (forward(xb) - yb) ** 2).sum() / (rows * mean_weight * k)
                        * cluster.world_size)
            step_losses.append(loss.detach())
            if penalty is not None:
                loss = loss + (penalty * model.weight ** 2).sum() / k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        data_loss = cluster.all_reduce_sum((torch.stack(step_losses).double().cpu() * share[order]).sum()
                                           .to(cluster.comm_device))
        epoch_loss = float(data_loss) / (n_total * mean_weight)
        if penalty is not None:
            epoch_loss += float((penalty.double() * model.weight.detach().double() ** 2).sum()) / k
        result.losses.append(epoch_loss)
        result.epoch_seconds.append(time.perf_counter() - epoch_start)
        result.stop_reason = schedule.step(epoch_loss) or ""  # the all-reduced loss: every rank stops alike
        if result.stop_reason:
            break
        for group in opt.param_groups:
            group["lr"] = schedule.lr
        if checkpoint is not None:
            checkpoint.maybe_save(epoch + 1, tensors=tensors, optimizer=opt, schedule=schedule,
                                  losses=result.losses, generator=gen)
    bias = model.bias if fit_intercept else torch.zeros(k)
    return _finish(result, model.weight, bias, schedule, start)


def _manual_parameters(k: int, p: int, fit_intercept: bool, gen: torch.Generator, device):
    """The seed's w (k, p) and b (k,), drawn from randn, requiring grad (b stays 0 without an intercept)."""
    w = torch.randn(k, p, generator=gen).to(device).requires_grad_(True)
    b = (torch.randn(k, generator=gen) if fit_intercept else torch.zeros(k)).to(device).requires_grad_(fit_intercept)
    return w, b


def _train_streamed(kind: str, stream, *, lr: float, epochs: int, batch_size: int | None, fit_intercept: bool,
                    tol: float, patience: int, seed: int, device, penalty: torch.Tensor | None,
                    start: float) -> TrainResult:
    """Either trainer over rows streamed from disk each epoch (one process). The epoch's loss for the stopping
    rule is the mean of the batch losses seen during the epoch (as scikit-learn's SGD does), not a second
    pass; full-batch `manual` sums gradients over the streamed batches and steps once per epoch."""
    p, k, n_total = len(stream.features), len(stream.targets), stream.n_rows
    full_batch = kind == "manual" and batch_size is None
    batch = STREAM_BATCH if full_batch else (batch_size or NN_DEFAULT_BATCH)
    gen = torch.Generator().manual_seed(seed)
    if kind == "manual":
        w, b = _manual_parameters(k, p, fit_intercept, gen, device)
        params = [w, b] if fit_intercept else [w]

        def forward(x):
            return x @ w.t() + b
    else:
        torch.manual_seed(seed)
        model = nn.Linear(p, k, bias=fit_intercept).to(device)
        params = list(model.parameters())
        w, b = model.weight, (model.bias if fit_intercept else torch.zeros(k, device=device))
        forward = model
    schedule = Schedule(lr, tol=tol, patience=patience)
    result = TrainResult(coef=np.zeros((k, p)), intercept=np.zeros(k))
    mean_weight = stream.mean_weight

    def step() -> None:
        with torch.no_grad():
            for param in params:
                param -= param.grad * schedule.lr
                param.grad.zero_()

    for epoch in range(epochs):
        data_loss = 0.0
        for xb, yb, wb in stream.epoch(epoch, seed, batch, device):
            rows = n_total if full_batch else len(xb)
            sq = (forward(xb) - yb) ** 2
            loss = (sq.sum() if wb is None else (wb[:, None] * sq).sum()) / (rows * mean_weight * k)
            data_loss += float(loss.detach()) * (1.0 if full_batch else len(xb) / n_total)
            if penalty is not None and not full_batch:
                loss = loss + (penalty * w * w).sum() / k
            loss.backward()
            if not full_batch:
                step()
        if full_batch:
            if penalty is not None:
                ((penalty * w * w).sum() / k).backward()
            step()
        ridge = 0.0 if penalty is None else float((penalty * w.detach() ** 2).sum()) / k
        result.losses.append(data_loss + ridge)
        result.stop_reason = schedule.step(result.losses[-1]) or ""
        if result.stop_reason:
            break
    return _finish(result, w, b, schedule, start)


def _finish(result: TrainResult, w: torch.Tensor, b: torch.Tensor, schedule: Schedule, start: float) -> TrainResult:
    result.coef = w.detach().cpu().double().numpy()
    result.intercept = b.detach().cpu().double().numpy()
    result.epochs = len(result.losses)
    result.lr = schedule.lr
    result.stop_reason = result.stop_reason or f"reached --epochs {result.epochs}"
    result.seconds = time.perf_counter() - start
    return result


TRAINERS = {"manual": train_manual, "nn": train_nn}
