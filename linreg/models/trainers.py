"""The two gradient trainers of the seed notebooks, on float32 rows already standardized.

- `train_manual`: the from-scratch model: `w`, `b` with requires_grad (`ManualModel`), the loss,
  `loss.backward()`, the update under `torch.no_grad()`, `grad.zero_()`. Full batch by default.
- `train_nn`: `nn.Linear` (`Linear`), the loss, `optimizer.zero_grad()`, `backward()`, `optimizer.step()` over
  mini-batches (`SGD`: torch.optim.SGD's update without its per-step machinery).

Each trainer is one loop over built objects (as the PyTorch DDP tutorial's `Trainer`): a batch source
(`linreg.models.sources`: the rows in memory, or streamed from disk every epoch; one interface), the model,
the optimizer (nn) and the `Schedule`. The source yields an epoch's steps, each a list of blocks
(X (m, p), Y (m, k), w (m,) or None, the step's global row count); it scales each block's loss (`loss`,
`ridge`) and computes the epoch's loss for the stopping rule (`epoch_loss`). The trainers never import the
distributed layer: with several ranks the source holds each rank's rows, the nn model arrives wrapped in
DistributedDataParallel and `cluster.all_reduce_sum` (an identity with one process) sums manual's gradients.

`Schedule` is the stopping rule of scikit-learn's SGD with learning_rate='adaptive': an epoch counts as
progress when it lowers the training loss by more than `tol` (relative); after `patience` epochs without
progress the learning rate is divided by 5, and training stops after `max_cuts` cuts. The default
learning rate is 1/L, L the smoothness constant of the mini-batch loss (from the largest eigenvalue of the
design's second moments and the largest row norm, as scikit-learn's SAG picks its step). Weights are
returned in the trainer's (standardized) space; `Standardizer` maps them back.

Optional per-row weights make every loss a weighted mean: sum w_i ||r_i||^2 / (sum w_i * k) over all rows;
a mini-batch divides by its row count times the mean weight (not by its own weight sum), so mini-batch
gradients stay unbiased. An optional `penalty` (p,) adds the ridge term sum_jl penalty_l * coef_jl^2 / k (per
target: the objective of `fit`'s --l2 in the trainer's space). Without them the losses are exactly the
unweighted ones of the seed notebooks.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from linreg.errors import InputError

log = logging.getLogger(__name__)
NN_DEFAULT_BATCH = 1024  # TrainConfig.batch_size's default for nn (see `step_rows`)


def step_rows(trainer: str, batch_size: int | None) -> int | None:
    """Rows per step: --batch-size, or the trainer's default (nn: 1024; manual: None, all rows)."""
    return batch_size or (NN_DEFAULT_BATCH if trainer == "nn" else None)


@dataclass
class TrainResult:
    """Fitted weights in the trainer's space: coef (k, p) and intercept (k,), float64, plus the loss per epoch."""

    coef: np.ndarray
    intercept: np.ndarray
    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch
    lr: float = 0.0
    epochs: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


class Schedule:
    """Adaptive learning rate and stopping rule, decided on the full training loss after each epoch."""

    def __init__(self, lr: float, *, tol: float, patience: int, max_cuts: int = 4):
        """lr: the starting learning rate; tol, patience: as TrainConfig's."""
        self.lr, self.tol, self.patience, self.max_cuts = lr, tol, patience, max_cuts
        self.best = math.inf
        self.stalled = 0
        self.cuts = 0

    def state_dict(self) -> dict:
        """What a snapshot keeps (as torch's optimizers: a dict of plain values)."""
        return {"lr": self.lr, "tol": self.tol, "patience": self.patience, "max_cuts": self.max_cuts,
                "best": self.best, "stalled": self.stalled, "cuts": self.cuts}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s values."""
        self.lr, self.tol, self.patience = state["lr"], state["tol"], state["patience"]
        self.max_cuts, self.best, self.stalled, self.cuts = state["max_cuts"], state["best"], state["stalled"], state["cuts"]

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


class ManualModel:
    """The seed's from-scratch model: w (k, p) and b (k,) float32 tensors requiring grad (b stays 0 without
    an intercept); `model(x)` = x @ w.T + b for x (m, p)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, fit_intercept: bool):
        self.w, self.b, self.fit_intercept = w, b, fit_intercept

    @classmethod
    def draw(cls, k: int, p: int, fit_intercept: bool, generator: torch.Generator, device) -> "ManualModel":
        """w and b from randn (the seed's initialization), drawn from `generator` on the CPU."""
        w = torch.randn(k, p, generator=generator).to(device).requires_grad_(True)
        b = (torch.randn(k, generator=generator) if fit_intercept else torch.zeros(k)).to(device) \
            .requires_grad_(fit_intercept)
        return cls(w, b, fit_intercept)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t() + self.b

    def parameters(self) -> list[torch.Tensor]:
        return [self.w, self.b] if self.fit_intercept else [self.w]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a snapshot keeps."""
        return {"w": self.w, "b": self.b}


class Linear(nn.Linear):
    """nn.Linear whose forward on the CPU is the seed's formula as two operations, x @ W.T then + b: x (m, p)
    -> (m, k). nn.Linear calls addmm, and the CPU's addmm (a matrix product with beta = 1) took 80 us for
    (8192, 3) x (3, 2) on one core here (torch 2.13, MKL) where the product then the sum took 29 us, to the same
    floats; an epoch: `bench/sgd_bench.py`. Elsewhere (CUDA) nn.Linear's own forward, whose addmm is one fused
    kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        out = x @ self.weight.t()
        return out if self.bias is None else out + self.bias


class SGD:
    """Stochastic gradient descent without momentum for the nn trainer: each step p.add_(p.grad, alpha=-lr),
    which is what torch.optim.SGD does (one fused multiply-add), float for float; `separate`: p -= p.grad * lr
    instead (two roundings: the update streamed nn epochs have always made, as manual's).

    Not a torch.optim.Optimizer: for a model of a few parameters its per-step machinery (hooks, the profiler's
    record, the grad-mode wrapper) cost more than the update, and its first call imports torch._dynamo (0.9 s
    a process here). The interface the trainer and `linreg.outputs.snapshot` use is the same: param_groups,
    zero_grad, step, state_dict, load_state_dict (which also reads a torch.optim.SGD's state_dict)."""

    def __init__(self, params, lr: float, *, separate: bool = False):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.separate = separate

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.zero_()

    def step(self) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                lr = group["lr"]
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    if self.separate:
                        param -= param.grad * lr
                    else:
                        param.add_(param.grad, alpha=-lr)

    def state_dict(self) -> dict:
        """torch.optim's layout: no per-parameter state; each group's settings, its parameters by position."""
        groups, first = [], 0
        for group in self.param_groups:
            groups.append({"lr": group["lr"], "params": list(range(first, first + len(group["params"])))})
            first += len(group["params"])
        return {"state": {}, "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        if len(state["param_groups"]) != len(self.param_groups):
            raise ValueError("the optimizer state has another number of parameter groups")
        for group, saved in zip(self.param_groups, state["param_groups"]):
            group["lr"] = saved["lr"]


def train_manual(source, model: ManualModel, schedule: Schedule, *, epochs: int, cluster,
                 penalty: torch.Tensor | None = None, checkpoint=None, generator: torch.Generator | None = None
                 ) -> TrainResult:
    """The seed's from-scratch loop: per step, each block's loss backward (summed gradients), the ridge term,
    the gradients summed over ranks (`cluster.all_reduce_sum`, an identity with one process), then
    w -= lr * grad under no_grad and grad.zero_(). source: `linreg.models.sources` (in memory or streamed);
    penalty (p,); checkpoint: `linreg.outputs.snapshot.Snapshots`, saving `generator` too."""
    start = time.perf_counter()
    w, b, k, params = model.w, model.b, model.w.shape[0], model.parameters()
    result = TrainResult(coef=np.zeros(tuple(w.shape)), intercept=np.zeros(k))
    first = 0 if checkpoint is None else checkpoint.restore(tensors=model.tensors(), schedule=schedule,
                                                              losses=result.losses, generator=generator)
    for epoch in range(first, epochs):
        epoch_start = time.perf_counter()
        blocks = []  # (detached data loss, block rows, step rows) of the epoch
        for step in source.epoch(epoch):
            for xb, yb, wb, rows in step:
                loss = source.loss(model(xb), yb, wb, rows)
                blocks.append((loss.detach(), len(xb), rows))
                if penalty is not None and not source.accumulates:
                    loss = loss + source.ridge(w, penalty)
                loss.backward()
            if penalty is not None and source.accumulates:  # once per step, after the blocks' gradients
                source.ridge(w, penalty).backward()
            for param in params:
                cluster.all_reduce_sum(param.grad)
            with torch.no_grad():
                for param in params:
                    param -= param.grad * schedule.lr
                    param.grad.zero_()
        epoch_loss = source.epoch_loss(blocks, w, b, penalty)
        if _end_of_epoch(result, schedule, epoch_loss, epoch_start):
            break
        if checkpoint is not None:
            checkpoint.maybe_save(epoch + 1, tensors=model.tensors(), schedule=schedule, losses=result.losses,
                                  generator=generator)
    return _finish(result, w, b, schedule, start)


def train_nn(source, model: nn.Linear, optimizer: SGD, schedule: Schedule, *, epochs: int,
             forward: nn.Module | None = None, penalty: torch.Tensor | None = None, checkpoint=None,
             generator: torch.Generator | None = None, average=None, average_every: int = 1) -> TrainResult:
    """nn.Linear trained by `optimizer` over the source's steps (one block each): loss, ridge term,
    zero_grad, backward, step; the optimizer's learning rate follows the schedule after each epoch.
    forward: the model as called (DistributedDataParallel(model) with several ranks; default the model).
    average: local SGD (`linreg.parallel.merge.model_averager`): the ranks' models are averaged every
    `average_every` steps and at the end of every epoch, instead of DDP's all-reduce of every step's gradients.
    checkpoint: as in train_manual (with the optimizer's state)."""
    start = time.perf_counter()
    forward = model if forward is None else forward
    k = model.weight.shape[0]
    bias = model.bias if model.bias is not None else torch.zeros(k)
    result = TrainResult(coef=np.zeros(tuple(model.weight.shape)), intercept=np.zeros(k))
    tensors = {"weight": model.weight, **({"bias": model.bias} if model.bias is not None else {})}
    first = 0 if checkpoint is None else checkpoint.restore(tensors=tensors, optimizer=optimizer, schedule=schedule,
                                                              losses=result.losses, generator=generator)
    for epoch in range(first, epochs):
        epoch_start = time.perf_counter()
        blocks = []  # detached loss tensors: no tensor op per step to record them
        for step in source.epoch(epoch):
            for xb, yb, wb, rows in step:
                if average is not None and len(xb):  # local SGD: this rank's own mean (the averaging weighs ranks)
                    loss = source.own_loss(forward(xb), yb, wb)
                    blocks.append((loss.detach(), len(xb), len(xb) * source.world))  # the loss of len(xb) * world rows
                else:
                    loss = source.loss(forward(xb), yb, wb, rows)
                    blocks.append((loss.detach(), len(xb), rows))
                if penalty is not None:
                    loss = loss + source.ridge(model.weight, penalty)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if average is not None and len(blocks) % average_every == 0:
                    average()
        if average is not None and len(blocks) % average_every:
            average()  # every rank ends the epoch with the same model
        epoch_loss = source.epoch_loss(blocks, model.weight, bias, penalty)
        if _end_of_epoch(result, schedule, epoch_loss, epoch_start):
            break
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr
        if checkpoint is not None:
            checkpoint.maybe_save(epoch + 1, tensors=tensors, optimizer=optimizer, schedule=schedule,
                                  losses=result.losses, generator=generator)
    return _finish(result, model.weight, bias, schedule, start)


def _end_of_epoch(result: TrainResult, schedule: Schedule, epoch_loss: float, epoch_start: float) -> bool:
    """Record the epoch's loss and time; whether the schedule stops training (every rank alike: the loss
    is over all ranks' rows)."""
    result.losses.append(epoch_loss)
    result.epoch_seconds.append(time.perf_counter() - epoch_start)
    result.stop_reason = schedule.step(epoch_loss) or ""
    return bool(result.stop_reason)


def _finish(result: TrainResult, w: torch.Tensor, b: torch.Tensor, schedule: Schedule, start: float) -> TrainResult:
    result.coef = w.detach().cpu().double().numpy()
    result.intercept = b.detach().cpu().double().numpy()
    result.epochs = len(result.losses)
    result.lr = schedule.lr
    result.stop_reason = result.stop_reason or f"reached --epochs {result.epochs}"
    result.seconds = time.perf_counter() - start
    return result


TRAINERS = {"manual": train_manual, "nn": train_nn}
