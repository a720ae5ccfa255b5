"""Fit a multi-output linear model from a stream of (X, Y) batches with any of the three trainers.

One pass over the batches accumulates the exact least-squares solution (streaming QR, float64), which
every run reports as the reference optimum, and, for the gradient trainers, the float64 moments for
standardization and the float32 training tensors. Weights come back in original units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from linreg import dist
from linreg.errors import InputError
from linreg.exact import ExactAccumulator, ExactSolution
from linreg.model import LinearModel
from linreg.standardize import Moments, Standardizer
from linreg.tensors import stack_float32
from linreg.trainers import NN_DEFAULT_BATCH, TRAINERS, auto_lr


@dataclass(frozen=True)
class TrainOptions:
    """The trainer settings of TrainConfig (see there for what each means)."""

    fit_intercept: bool = True
    standardize: bool = True
    lr: float | None = None
    epochs: int = 1000
    batch_size: int | None = None
    tol: float = 1e-5
    patience: int = 5
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_config(cls, config) -> "TrainOptions":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


@dataclass
class FitResult:
    """The trained model, the exact optimum on the same rows, and how training went."""

    model: LinearModel
    exact: ExactSolution
    train_rows: int
    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    lr: float | None = None
    stop_reason: str = ""
    seconds: float = 0.0


def fit(batches: Iterable[tuple[np.ndarray, np.ndarray]], *, trainer: str, features: list[str],
        targets: list[str], options: TrainOptions = TrainOptions()) -> FitResult:
    """Fit on batches of X (m, p) and Y (m, k), any float dtype (kept at stored precision for `exact`)."""
    start = time.perf_counter()
    gradient = trainer in TRAINERS
    if not gradient and trainer != "exact":
        raise InputError(f"Unknown trainer {trainer!r}; choose exact, nn or manual.")
    p, k = len(features), len(targets)
    exact = ExactAccumulator(p, k, fit_intercept=options.fit_intercept)
    x_moments, y_moments = Moments(p), Moments(k)
    parts: list[np.ndarray] = []
    for X, Y in batches:
        exact.update(X, Y)
        if gradient:
            x_moments.update(X)
            y_moments.update(Y)
            parts.append(np.hstack([X, Y]).astype(np.float32))
    if exact.n_rows == 0:
        raise InputError("No training rows are left after the holdout split.")
    solution = exact.solve(feature_names=list(features))
    if not gradient:
        model = LinearModel(solution.coef, solution.intercept, tuple(features), tuple(targets))
        return FitResult(model=model, exact=solution, train_rows=exact.n_rows, seconds=time.perf_counter() - start)

    cluster = dist.single_process(options.device)
    scaler = Standardizer.fit(x_moments, y_moments, fit_intercept=options.fit_intercept, enabled=options.standardize)
    data = stack_float32(parts, p + k, torch.device("cpu"))
    del parts
    shift = torch.from_numpy(np.concatenate([scaler.x_mean, scaler.y_mean]).astype(np.float32))
    scale = torch.from_numpy(np.concatenate([scaler.x_scale, scaler.y_scale]).astype(np.float32))
    data.sub_(shift).div_(scale)
    data = data.to(cluster.device)
    X, Y = data[:, :p], data[:, p:]
    batch_size = options.batch_size or (None if trainer == "manual" else NN_DEFAULT_BATCH)
    lr = options.lr
    if lr is None:
        max_row_sq = float((X * X).sum(dim=1).max()) + (1.0 if options.fit_intercept else 0.0)
        lr = auto_lr(scaler.second_moment(x_moments, options.fit_intercept), max_row_sq, n_rows=len(X),
                     batch=batch_size or len(X), n_targets=k)
    trained = TRAINERS[trainer](X, Y, lr=lr, epochs=options.epochs, batch_size=batch_size,
                                fit_intercept=options.fit_intercept, tol=options.tol, patience=options.patience,
                                seed=options.seed, cluster=cluster)
    coef, intercept = scaler.to_original(trained.coef, trained.intercept)
    model = LinearModel(coef, intercept, tuple(features), tuple(targets))
    return FitResult(model=model, exact=solution, train_rows=exact.n_rows, losses=trained.losses,
                     epochs=trained.epochs, lr=lr, stop_reason=trained.stop_reason,
                     seconds=time.perf_counter() - start)
