"""The two gradient trainers of the seed notebooks, on float32 tensors already standardized.

- `train_manual`: the from-scratch model: `w`, `b` with requires_grad, the hand-written MSE,
  `loss.backward()`, the update under `torch.no_grad()`, `grad.zero_()`. Full batch by default.
- `train_nn`: `nn.Linear` + `F.mse_loss` + `torch.optim.SGD` over shuffled mini-batches (one row gather
  per epoch, then contiguous slices: a per-row DataLoader is hundreds of times slower).

Both share `Schedule`, the stopping rule of scikit-learn's SGD with learning_rate='adaptive': an epoch
counts as progress when it lowers the full training loss by more than `tol` (relative); after `patience`
epochs without progress the learning rate is divided by 5, and training stops after `max_cuts` cuts.
The default learning rate is 1/L, L the smoothness constant of the mini-batch loss (from the largest
eigenvalue of the design's second moments and the largest row norm, as scikit-learn's SAG picks its step).
Weights are returned in the trainer's (standardized) space; `Standardizer` maps them back.
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

from linreg.dist import Cluster
from linreg.errors import InputError

log = logging.getLogger(__name__)
NN_DEFAULT_BATCH = 1024


@dataclass
class TrainResult:
    """Fitted weights in the trainer's space: coef (k, p) and intercept (k,), float64, plus the loss per epoch."""

    coef: np.ndarray
    intercept: np.ndarray
    losses: list[float] = field(default_factory=list)
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


def auto_lr(second_moment: np.ndarray, max_row_sq: float, *, n_rows: int, batch: int, n_targets: int) -> float:
    """1/L for the mean squared error over rows and targets of a (p',)-parameter linear model per target.

    second_moment (p', p'): mean of x x^T of the design (with its ones column when fitting an intercept).
    max_row_sq: the largest ||x||^2 of a row. L interpolates between the full-batch constant and the
    single-row one by the batch size (Gower et al., 2019, "SGD: general analysis and improved rates").
    """
    full = 2.0 * float(np.linalg.eigvalsh(second_moment)[-1]) / n_targets
    single = 2.0 * max_row_sq / n_targets
    b = min(batch, n_rows)
    if n_rows <= 1 or b >= n_rows:
        smooth = full
    else:
        smooth = (n_rows * (b - 1)) / (b * (n_rows - 1)) * full + (n_rows - b) / (b * (n_rows - 1)) * single
    return 1.0 / smooth


def full_loss(X: torch.Tensor, Y: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor,
              cluster: Cluster, total_elems: int, chunk: int = 1 << 20) -> float:
    """Mean squared error over all rows and targets (all ranks), summed in float64 chunk by chunk."""
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64, device=X.device)
        for i in range(0, len(X), chunk):
            diff = X[i:i + chunk] @ coef.T + intercept - Y[i:i + chunk]
            total += (diff * diff).sum(dtype=torch.float64)
        return float(cluster.all_reduce_sum(total)) / total_elems


def _global_rows(n_local: int, cluster: Cluster, device) -> int:
    return int(cluster.all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=device)))


def train_manual(X: torch.Tensor, Y: torch.Tensor, *, lr: float, epochs: int, batch_size: int | None,
                 fit_intercept: bool, tol: float, patience: int, seed: int, cluster: Cluster) -> TrainResult:
    """The seed's from-scratch trainer: X (n, p), Y (n, k) float32 on cluster.device."""
    start = time.perf_counter()
    n, p = X.shape
    k = Y.shape[1]
    n_total = _global_rows(n, cluster, X.device)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(k, p, generator=gen).to(X.device).requires_grad_(True)
    b = (torch.randn(k, generator=gen) if fit_intercept else torch.zeros(k)).to(X.device).requires_grad_(fit_intercept)
    params = [w, b] if fit_intercept else [w]

    def model(x):
        return x @ w.t() + b

    def mse(preds, targets, rows_total):
        diff = preds - targets
        return torch.sum(diff * diff) / (rows_total * diff.shape[1])

    batch = batch_size or n
    schedule = Schedule(lr, tol=tol, patience=patience)
    result = TrainResult(coef=np.zeros((k, p)), intercept=np.zeros(k))
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(X.device) if batch < n else None
        Xe, Ye = (X, Y) if order is None else (X[order], Y[order])
        for i in range(0, n, batch):
            xb, yb = Xe[i:i + batch], Ye[i:i + batch]
            rows = _global_rows(len(xb), cluster, X.device) if batch < n else n_total
            loss = mse(model(xb), yb, rows)
            loss.backward()
            for param in params:
                cluster.all_reduce_sum(param.grad)
            with torch.no_grad():
                for param in params:
                    param -= param.grad * schedule.lr
                    param.grad.zero_()
        epoch_loss = full_loss(X, Y, w.detach(), b.detach(), cluster, n_total * k)
        result.losses.append(epoch_loss)
        result.stop_reason = schedule.step(epoch_loss) or ""
        if result.stop_reason:
            break
    return _finish(result, w, b, schedule, start)


def train_nn(X: torch.Tensor, Y: torch.Tensor, *, lr: float, epochs: int, batch_size: int | None,
             fit_intercept: bool, tol: float, patience: int, seed: int, cluster: Cluster) -> TrainResult:
    """nn.Linear + F.mse_loss + optim.SGD over shuffled mini-batches: X (n, p), Y (n, k) float32."""
    start = time.perf_counter()
    n, p = X.shape
    k = Y.shape[1]
    n_total = _global_rows(n, cluster, X.device)
    torch.manual_seed(seed)
    model = nn.Linear(p, k, bias=fit_intercept).to(X.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    packed = torch.cat([X, Y], dim=1)
    batch = min(batch_size or NN_DEFAULT_BATCH, n)
    gen = torch.Generator().manual_seed(seed)
    schedule = Schedule(lr, tol=tol, patience=patience)
    result = TrainResult(coef=np.zeros((k, p)), intercept=np.zeros(k))
    for epoch in range(epochs):
        shuffled = packed.index_select(0, torch.randperm(n, generator=gen).to(X.device))
        for i in range(0, n, batch):
            xb, yb = shuffled[i:i + batch, :p], shuffled[i:i + batch, p:]
            loss = F.mse_loss(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bias = model.bias.detach() if fit_intercept else torch.zeros(k, device=X.device)
        epoch_loss = full_loss(X, Y, model.weight.detach(), bias, cluster, n_total * k)
        result.losses.append(epoch_loss)
        result.stop_reason = schedule.step(epoch_loss) or ""
        if result.stop_reason:
            break
        for group in opt.param_groups:
            group["lr"] = schedule.lr
    bias = model.bias if fit_intercept else torch.zeros(k)
    return _finish(result, model.weight, bias, schedule, start)


def _finish(result: TrainResult, w: torch.Tensor, b: torch.Tensor, schedule: Schedule, start: float) -> TrainResult:
    result.coef = w.detach().cpu().double().numpy()
    result.intercept = b.detach().cpu().double().numpy()
    result.epochs = len(result.losses)
    result.lr = schedule.lr
    result.stop_reason = result.stop_reason or f"reached --epochs {result.epochs}"
    result.seconds = time.perf_counter() - start
    return result


TRAINERS = {"manual": train_manual, "nn": train_nn}
