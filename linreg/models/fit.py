"""Fit a multi-output linear model from a stream of (X, Y) batches with any of the three trainers.

One pass over the batches accumulates the exact least-squares solution (streaming QR, float64), which
every run reports as the reference optimum, and, for the gradient trainers, the float64 moments for
standardization and the float32 training tensors. Weights come back in original units.

Batches are (X, Y) or (X, Y, w) with precision weights w (m,) >= 0: weighted least squares for every
trainer. `options.l2` > 0 fits ridge: (weighted) MSE + l2 * sum of squared coefficients of the
standardized features, intercept unpenalized, the same objective for every trainer (exactly solved by
`exact`). Inference statistics (`linreg.models.statistics`) of the returned model come from the exact factor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from linreg.parallel import dist
from linreg.parallel import merge
from linreg.errors import InputError
from linreg.models.exact import GRAM_MAX_CONDITION, ExactAccumulator, ExactSolution, GramAccumulator
from linreg.models.statistics import FitStatistics, statistics
from linreg.models.linear import LinearModel
from linreg.models.standardize import Moments, Standardizer
from linreg.inputs.batches import stack_float32
from linreg.models.trainers import NN_DEFAULT_BATCH, TRAINERS, auto_lr

log = logging.getLogger(__name__)


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
    l2: float = 0.0
    rcond: float = 1e-13
    singular: str = "error"
    confidence: float = 0.95

    @classmethod
    def from_config(cls, config) -> "TrainOptions":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


@dataclass
class FitResult:
    """The trained model, the exact optimum on the same rows, and how training went."""

    model: LinearModel
    exact: ExactSolution
    train_rows: int
    stats: FitStatistics | None = None
    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    lr: float | None = None
    stop_reason: str = ""
    seconds: float = 0.0
    streamed: bool = False  # the gradient trainer re-read the rows from disk every epoch


def fit(batches: Iterable[tuple[np.ndarray, ...]] | Callable[[], Iterable[tuple[np.ndarray, ...]]], *,
        trainer: str, features: list[str], targets: list[str], options: TrainOptions = TrainOptions(),
        cluster: dist.Cluster | None = None, checkpoint=None, stream=None, memory_limit: int | None = None) -> FitResult:
    """Fit on batches of X (m, p), Y (m, k) and optionally sample weights w (m,), any float dtype (kept at
    stored precision for `exact`).

    batches: an iterable (one pass: the exact solution by streaming QR), or a function returning a new
    iterable each time it is called: then the first pass sums a Gram matrix (half the work), and a second
    pass makes the QR only if the design is too ill-conditioned for the normal equations (`GramAccumulator`).

    stream, memory_limit (bytes): when the gradient trainers' float32 rows would exceed memory_limit,
    `stream(shift, scale, n_rows, mean_weight)` -> `linreg.inputs.stream.StreamedRows` re-reads the training rows
    every epoch instead (one process; with several ranks each rank's shard stays in memory).

    cluster: with several ranks, each passes its own shard's batches; the exact factor and the moments are
    merged across ranks (`linreg.parallel.merge`), so the solution, standardization and learning rate equal one
    process's, and the gradient trainers run data-parallel. checkpoint: a `linreg.outputs.snapshot.Snapshots`."""
    start = time.perf_counter()
    gradient = trainer in TRAINERS
    if not gradient and trainer != "exact":
        raise InputError(f"Unknown trainer {trainer!r}; choose exact, nn or manual.")
    p, k = len(features), len(targets)
    passes = batches if callable(batches) else None
    exact = (GramAccumulator if passes else ExactAccumulator)(p, k, fit_intercept=options.fit_intercept)
    x_moments, y_moments = Moments(p), Moments(k)
    parts: list[np.ndarray] = []
    weighted = False
    streaming = False
    cluster = cluster or dist.single_process(options.device if gradient else "cpu")
    x_low, x_high = np.full(p, np.inf), np.full(p, -np.inf)  # bound the largest row norm when streaming
    held = 0
    for X, Y, *rest in (passes() if passes else batches):
        w = rest[0] if rest else None
        weighted = weighted or w is not None
        exact.update(X, Y, w)
        if gradient:
            x_moments.update(X, w)
            y_moments.update(Y, w)
            if len(X):
                x_low, x_high = np.minimum(x_low, X.min(axis=0)), np.maximum(x_high, X.max(axis=0))
            held += X.shape[0] * (p + k + 1) * 4
            if not streaming and stream is not None and memory_limit is not None and held > memory_limit \
                    and not cluster.distributed:
                streaming, parts = True, []
            if not streaming:
                parts.append(np.hstack([X, Y] if w is None else [X, Y, np.asarray(w)[:, None]]).astype(np.float32))
    if cluster.distributed:  # every rank ends with the merged (all-rank) factor and moments
        exact = merge.merge_exact(cluster, exact)
        weighted = any(cluster.all_gather_object(weighted))
        if gradient:
            x_moments, y_moments = merge.merge_moments(cluster, x_moments), merge.merge_moments(cluster, y_moments)
    if isinstance(exact, GramAccumulator):
        exact = exact.factor() or _qr_pass(passes(), p, k, options.fit_intercept, cluster)
    if exact.n_rows == 0:
        raise InputError("No training rows are left after the holdout split" +
                         (" with a positive sample weight." if weighted else "."))
    solution = exact.solve(feature_names=list(features), rcond=options.rcond, l2=options.l2,
                           singular=options.singular)

    def result(model: LinearModel, **extra) -> FitResult:
        stats = statistics(solution.factor, model.coef_, model.intercept_, confidence=options.confidence,
                           coefficients_estimated=options.l2 == 0)
        return FitResult(model=model, exact=solution, train_rows=exact.n_rows, stats=stats,
                         seconds=time.perf_counter() - start, **extra)

    if not gradient:
        return result(LinearModel(solution.coef, solution.intercept, tuple(features), tuple(targets)))

    scaler = Standardizer.fit(x_moments, y_moments, fit_intercept=options.fit_intercept, enabled=options.standardize)
    shift_np = np.concatenate([scaler.x_mean, scaler.y_mean])
    scale_np = np.concatenate([scaler.x_scale, scaler.y_scale])
    streamed = None
    if streaming:
        mean_weight = x_moments.weight / max(x_moments.n, 1) if weighted else 1.0
        streamed = stream(shift_np, scale_np, x_moments.n, mean_weight)
        X = Y = sample_weight = None
    else:
        data = stack_float32(parts, p + k + weighted, torch.device("cpu"))
        del parts
        data[:, :p + k].sub_(torch.from_numpy(shift_np.astype(np.float32))).div_(
            torch.from_numpy(scale_np.astype(np.float32)))
        data = data.to(cluster.device)
        X, Y = data[:, :p], data[:, p:p + k]
        sample_weight = data[:, p + k] if weighted else None
    penalty = None
    if options.l2 > 0:
        # Ridge on the standardized features (sd, or root mean square through the origin), whatever the
        # trainer's own scaling: in its space the coefficient c maps to beta * sd / x_scale.
        sd = Standardizer.fit(x_moments, y_moments, fit_intercept=options.fit_intercept, enabled=True).x_scale
        penalty = torch.from_numpy((options.l2 * (sd / scaler.x_scale) ** 2).astype(np.float32)).to(cluster.device)
    batch_size = options.batch_size or (None if trainer == "manual" else NN_DEFAULT_BATCH)
    lr = options.lr
    if lr is None:
        if streamed is not None:  # a bound from each column's range: never larger than the true maximum
            far = np.maximum((x_low - scaler.x_mean) ** 2, (x_high - scaler.x_mean) ** 2) / scaler.x_scale ** 2
            local_max, n_local = float(far.sum()), streamed.n_rows
        else:
            local_max, n_local = (float((X * X).sum(dim=1).max()) if len(X) else -np.inf), len(X)
        max_row_sq = cluster.all_reduce_max(local_max) + (1.0 if options.fit_intercept else 0.0)
        n_rows = merge.total(cluster, n_local)  # all ranks' rows: the same lr as one process
        lr = auto_lr(scaler.second_moment(x_moments, options.fit_intercept), max_row_sq, n_rows=n_rows,
                     batch=batch_size or n_rows, n_targets=k,
                     max_penalty=0.0 if penalty is None else float(penalty.max()))
    trained = TRAINERS[trainer](X, Y, lr=lr, epochs=options.epochs, batch_size=batch_size,
                                fit_intercept=options.fit_intercept, tol=options.tol, patience=options.patience,
                                seed=options.seed, cluster=cluster, sample_weight=sample_weight, penalty=penalty,
                                checkpoint=checkpoint, stream=streamed)
    coef, intercept = scaler.to_original(trained.coef, trained.intercept)
    return result(LinearModel(coef, intercept, tuple(features), tuple(targets)), losses=trained.losses,
                  epochs=trained.epochs, lr=lr, stop_reason=trained.stop_reason, streamed=streamed is not None)


def _qr_pass(batches, p: int, k: int, fit_intercept: bool, cluster: dist.Cluster) -> ExactAccumulator:
    """The streaming QR of the batches (every rank's, merged), when the Gram pass is not accurate enough."""
    log.info("the design's condition number exceeds %g: the normal equations would lose digits, so a second "
             "pass factorizes it by QR", GRAM_MAX_CONDITION)
    exact = ExactAccumulator(p, k, fit_intercept=fit_intercept)
    for X, Y, *rest in batches:
        exact.update(X, Y, rest[0] if rest else None)
    return merge.merge_exact(cluster, exact) if cluster.distributed else exact
