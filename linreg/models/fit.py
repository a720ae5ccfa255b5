"""Fit a multi-output linear model from a stream of (X, Y) batches with any of the three trainers.

A fit is a fixed sequence, as scikit-learn's `fit` is, each step a function below:

1. `_check`: the trainer is known.
2. `_accumulate`: one pass over the batches: the exact least-squares statistics (streaming QR, or a Gram
   matrix when the batches can be read twice), and for the gradient trainers the float64 moments, the
   columns' ranges and the float32 training rows (unless they exceed the memory limit: then streamed);
   merged across ranks (`linreg.parallel.merge`: identities with one process).
3. `_choose_solver`: the Gram matrix's factor, or a second (QR) pass when it is too ill-conditioned.
4. `_solve`: the exact solution, which every run reports as the reference optimum; for a gradient trainer
   also `linreg.models.gradient.train`: standardize, build the batch source, model, optimizer and schedule, and train.
5. `_result`: weights in original units, with the inference statistics of the exact factor.

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

from linreg.config import config_default
from linreg.errors import InputError
from linreg.models.exact import ExactAccumulator, ExactSolution, GRAM_MAX_CONDITION, GramAccumulator
from linreg.models.linear import LinearModel
from linreg.models.standardize import Moments
from linreg.models.statistics import FitStatistics, statistics
from linreg.parallel import dist, merge

log = logging.getLogger(__name__)
GRADIENT_TRAINERS = ("manual", "nn")  # `linreg.models.gradient` trains them (with torch); exact needs no torch


@dataclass(frozen=True)
class TrainOptions:
    """The trainer settings of TrainConfig (see there for what each means, and for the defaults)."""

    fit_intercept: bool = config_default("fit_intercept")
    standardize: bool = config_default("standardize")
    lr: float | None = config_default("lr")
    epochs: int = config_default("epochs")
    batch_size: int | None = config_default("batch_size")
    tol: float = config_default("tol")
    patience: int = config_default("patience")
    seed: int = config_default("seed")
    device: str = config_default("device")
    l2: float = config_default("l2")
    rcond: float = config_default("rcond")
    singular: str = config_default("singular")
    confidence: float = config_default("confidence")

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
    gradient = _check(trainer)
    cluster = cluster or dist.single_process(options.device if gradient else "cpu")
    passes = batches if callable(batches) else None
    # streaming is for one process: with several ranks each rank's shard stays in memory
    can_stream = stream is not None and memory_limit is not None and not cluster.distributed
    seen = _accumulate(passes() if passes else batches, len(features), len(targets), options.fit_intercept,
                       gradient=gradient, two_pass=passes is not None,
                       memory_limit=memory_limit if can_stream else None, cluster=cluster)
    exact = _choose_solver(seen.exact, passes, options.fit_intercept, cluster)
    if exact.n_rows == 0:
        raise InputError("No training rows are left after the holdout split" +
                         (" with a positive sample weight." if seen.weighted else "."))
    solution = exact.solve(feature_names=list(features), rcond=options.rcond, l2=options.l2,
                           singular=options.singular)
    if not gradient:
        model = LinearModel(solution.coef, solution.intercept, tuple(features), tuple(targets))
        return _result(model, solution, exact.n_rows, options, start)
    from linreg.models import gradient  # torch is imported here, by the gradient trainers only

    trained, scaler, lr, streamed = gradient.train(seen, trainer, options, cluster, checkpoint, stream)
    coef, intercept = scaler.to_original(trained.coef, trained.intercept)
    return _result(LinearModel(coef, intercept, tuple(features), tuple(targets)), solution, exact.n_rows, options,
                   start, losses=trained.losses, epochs=trained.epochs, lr=lr,
                   stop_reason=trained.stop_reason, streamed=streamed)


def _check(trainer: str) -> bool:
    """Whether `trainer` is a gradient trainer (nn, manual); an InputError unless it is one or exact."""
    if trainer not in GRADIENT_TRAINERS and trainer != "exact":
        raise InputError(f"Unknown trainer {trainer!r}; choose exact, nn or manual.")
    return trainer in GRADIENT_TRAINERS


@dataclass
class Seen:
    """What one pass over the training rows gathered (all ranks' after `_accumulate`).

    exact: the least-squares accumulator; x, y: moments of X (p columns) and Y (k); low, high (p,): each
    feature's range; weighted: whether any batch had weights; parts: float32 blocks (m, p + k [+ 1]) of the
    rows, or None when they are streamed instead."""

    exact: ExactAccumulator
    x: Moments
    y: Moments
    low: np.ndarray
    high: np.ndarray
    weighted: bool = False
    parts: list[np.ndarray] | None = field(default_factory=list)


def _accumulate(batches, p: int, k: int, fit_intercept: bool, *, gradient: bool, two_pass: bool,
                memory_limit: int | None, cluster: dist.Cluster) -> Seen:
    """One pass over batches (X (m, p), Y (m, k)[, w (m,)]), merged across ranks. The gradient trainers'
    rows are kept as float32 until they exceed memory_limit bytes (None: no limit), then dropped (streamed)."""
    seen = Seen((GramAccumulator if two_pass else ExactAccumulator)(p, k, fit_intercept=fit_intercept),
                 Moments(p), Moments(k), np.full(p, np.inf), np.full(p, -np.inf))
    held = 0
    for X, Y, *rest in batches:
        w = rest[0] if rest else None
        seen.weighted = seen.weighted or w is not None
        seen.exact.update(X, Y, w)
        if not gradient:
            continue
        seen.x.update(X, w)
        seen.y.update(Y, w)
        if len(X):  # bound the largest row norm when streaming
            seen.low, seen.high = np.minimum(seen.low, X.min(axis=0)), np.maximum(seen.high, X.max(axis=0))
        held += X.shape[0] * (p + k + 1) * 4
        if seen.parts is not None and memory_limit is not None and held > memory_limit:
            seen.parts = None
        if seen.parts is not None:
            seen.parts.append(np.hstack([X, Y] if w is None else [X, Y, np.asarray(w)[:, None]]).astype(np.float32))
    # every rank ends with the merged (all-rank) factor and moments
    seen.exact = merge.merge_exact(cluster, seen.exact)
    seen.weighted = any(cluster.all_gather_object(seen.weighted))
    if gradient:
        seen.x, seen.y = merge.merge_moments(cluster, seen.x), merge.merge_moments(cluster, seen.y)
    return seen


def _choose_solver(exact: ExactAccumulator, passes, fit_intercept: bool, cluster: dist.Cluster) -> ExactAccumulator:
    """The accumulator to solve: a streaming QR as it is; a Gram matrix's factor when it is accurate enough,
    else the QR of a second pass over `passes()` (every rank's, merged)."""
    if not isinstance(exact, GramAccumulator):
        return exact
    factor = exact.factor()
    if factor:
        return factor
    log.info("the design's condition number exceeds %g: the normal equations would lose digits, so a second "
             "pass factorizes it by QR", GRAM_MAX_CONDITION)
    qr = ExactAccumulator(exact.n_features, exact.n_targets, fit_intercept=fit_intercept)
    for X, Y, *rest in passes():
        qr.update(X, Y, rest[0] if rest else None)
    return merge.merge_exact(cluster, qr)


def _result(model: LinearModel, solution: ExactSolution, train_rows: int, options: TrainOptions, start: float,
            **extra) -> FitResult:
    """The FitResult of a model in original units, with the inference statistics of the exact factor."""
    stats = statistics(solution.factor, model.coef_, model.intercept_, confidence=options.confidence,
                       coefficients_estimated=options.l2 == 0)
    return FitResult(model=model, exact=solution, train_rows=train_rows, stats=stats,
                     seconds=time.perf_counter() - start, **extra)
