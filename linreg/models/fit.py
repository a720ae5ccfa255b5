"""Fit a multi-output linear model from a stream of (X, Y) batches with any of the three trainers.

A fit is a fixed sequence, as scikit-learn's `fit` is, each step a function below:

1. `_check`: the trainer is known.
2. `_accumulate`: one pass over the batches: the exact least-squares statistics (streaming QR, or a Gram
   matrix when the batches can be read twice), and for the gradient trainers the float64 moments, the
   columns' ranges and the float32 training rows (unless they exceed the memory limit: then streamed);
   merged across ranks (`linreg.parallel.merge`: identities with one process).
3. `_choose_solver`: the Gram matrix's factor, or a second (QR) pass when it is too ill-conditioned.
4. `_solve`: the exact solution, which every run reports as the reference optimum; for a gradient trainer
   also `_train`: standardize, build the batch source, model, optimizer and schedule, and train.
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
import torch
from torch import nn

from linreg.config import config_default
from linreg.errors import InputError
from linreg.inputs.batches import stack_float32
from linreg.models.exact import ExactAccumulator, ExactSolution, GRAM_MAX_CONDITION, GramAccumulator
from linreg.models.linear import LinearModel
from linreg.models.sources import ReshuffledRows, ShuffledOnceRows, StreamedSteps
from linreg.models.standardize import Moments, Standardizer
from linreg.models.statistics import FitStatistics, statistics
from linreg.models.trainers import ManualModel, PlainSGD, Schedule, TRAINERS, TrainResult, auto_lr, step_rows
from linreg.parallel import dist, merge

log = logging.getLogger(__name__)


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
    trained, scaler, lr, streamed = _train(seen, trainer, options, cluster, checkpoint, stream)
    coef, intercept = scaler.to_original(trained.coef, trained.intercept)
    return _result(LinearModel(coef, intercept, tuple(features), tuple(targets)), solution, exact.n_rows, options,
                   start, losses=trained.losses, epochs=trained.epochs, lr=lr,
                   stop_reason=trained.stop_reason, streamed=streamed)


def _check(trainer: str) -> bool:
    """Whether `trainer` is a gradient trainer (nn, manual); an InputError unless it is one or exact."""
    if trainer not in TRAINERS and trainer != "exact":
        raise InputError(f"Unknown trainer {trainer!r}; choose exact, nn or manual.")
    return trainer in TRAINERS


@dataclass
class _Seen:
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
                memory_limit: int | None, cluster: dist.Cluster) -> _Seen:
    """One pass over batches (X (m, p), Y (m, k)[, w (m,)]), merged across ranks. The gradient trainers'
    rows are kept as float32 until they exceed memory_limit bytes (None: no limit), then dropped (streamed)."""
    seen = _Seen((GramAccumulator if two_pass else ExactAccumulator)(p, k, fit_intercept=fit_intercept),
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


def _train(seen: _Seen, trainer: str, options: TrainOptions, cluster: dist.Cluster, checkpoint, stream
           ) -> tuple[TrainResult, Standardizer, float, bool]:
    """Standardize, build the batch source, model, optimizer and schedule, and run the gradient trainer:
    (its result in the standardized space, the standardizer, the starting learning rate, whether the rows
    were streamed)."""
    p, k = len(seen.x.mean), len(seen.y.mean)
    scaler = Standardizer.fit(seen.x, seen.y, fit_intercept=options.fit_intercept, enabled=options.standardize)
    shift = np.concatenate([scaler.x_mean, scaler.y_mean])
    scale = np.concatenate([scaler.x_scale, scaler.y_scale])
    batch = step_rows(trainer, options.batch_size)
    generator = torch.Generator().manual_seed(options.seed)  # manual's weights and one-process shuffles
    model = ManualModel.draw(k, p, options.fit_intercept, generator, cluster.device) if trainer == "manual" else None
    if seen.parts is None:
        mean_weight = seen.x.weight / max(seen.x.n, 1) if seen.weighted else 1.0
        rows = stream(shift, scale, seen.x.n, mean_weight)
        source = StreamedSteps(rows, batch=batch, seed=options.seed, device=cluster.device)
        checkpoint = None  # streamed epochs are not snapshotted
        # a bound from each column's range: never larger than the true maximum
        far = np.maximum((seen.low - scaler.x_mean) ** 2, (seen.high - scaler.x_mean) ** 2) / scaler.x_scale ** 2
        local_max, n_local = float(far.sum()), rows.n_rows
    else:
        X, Y, w = _standardized_rows(seen, p, k, shift, scale, cluster.device)
        if options.lr is None:
            local_max, n_local = (float((X * X).sum(dim=1).max()) if len(X) else -np.inf), len(X)
        if trainer == "manual":
            source = ReshuffledRows(X, Y, w, batch=batch, cluster=cluster, seed=options.seed, generator=generator)
        else:
            source = ShuffledOnceRows(X, Y, w, batch=batch, cluster=cluster, seed=options.seed)
    penalty = _penalty(seen, scaler, options, cluster.device)
    lr = options.lr
    if lr is None:
        max_row_sq = cluster.all_reduce_max(local_max) + (1.0 if options.fit_intercept else 0.0)
        n_rows = merge.total(cluster, n_local)  # all ranks' rows: the same lr as one process
        lr = auto_lr(scaler.second_moment(seen.x, options.fit_intercept), max_row_sq, n_rows=n_rows,
                     batch=batch or n_rows, n_targets=k, max_penalty=0.0 if penalty is None else float(penalty.max()))
    schedule = Schedule(lr, tol=options.tol, patience=options.patience)
    if trainer == "manual":
        trained = TRAINERS[trainer](source, model, schedule, epochs=options.epochs, cluster=cluster, penalty=penalty,
                                    checkpoint=checkpoint, generator=generator)
    else:
        torch.manual_seed(options.seed)  # nn.Linear's initialization
        model = nn.Linear(p, k, bias=options.fit_intercept).to(cluster.device)
        if isinstance(source, StreamedSteps):  # one process; the update streamed epochs have always made
            optimizer, forward = PlainSGD(model.parameters(), lr=lr), model
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            forward = merge.data_parallel(model, cluster, source.X.device)
        trained = TRAINERS[trainer](source, model, optimizer, schedule, epochs=options.epochs, forward=forward,
                                    penalty=penalty, checkpoint=checkpoint, generator=generator)
    return trained, scaler, lr, seen.parts is None


def _standardized_rows(seen: _Seen, p: int, k: int, shift: np.ndarray, scale: np.ndarray, device):
    """The kept float32 rows, standardized on the CPU and moved to `device`: X (n, p), Y (n, k), w (n,) or None."""
    data = stack_float32(seen.parts, p + k + seen.weighted, torch.device("cpu"))
    seen.parts = []
    data[:, :p + k].sub_(torch.from_numpy(shift.astype(np.float32))).div_(torch.from_numpy(scale.astype(np.float32)))
    data = data.to(device)
    return data[:, :p], data[:, p:p + k], (data[:, p + k] if seen.weighted else None)


def _penalty(seen: _Seen, scaler: Standardizer, options: TrainOptions, device) -> torch.Tensor | None:
    """The ridge factors (p,) float32 in the trainer's space, or None without --l2.

    Ridge on the standardized features (sd, or root mean square through the origin), whatever the trainer's
    own scaling: in its space the coefficient c maps to beta * sd / x_scale."""
    if options.l2 <= 0:
        return None
    sd = Standardizer.fit(seen.x, seen.y, fit_intercept=options.fit_intercept, enabled=True).x_scale
    return torch.from_numpy((options.l2 * (sd / scaler.x_scale) ** 2).astype(np.float32)).to(device)


def _result(model: LinearModel, solution: ExactSolution, train_rows: int, options: TrainOptions, start: float,
            **extra) -> FitResult:
    """The FitResult of a model in original units, with the inference statistics of the exact factor."""
    stats = statistics(solution.factor, model.coef_, model.intercept_, confidence=options.confidence,
                       coefficients_estimated=options.l2 == 0)
    return FitResult(model=model, exact=solution, train_rows=train_rows, stats=stats,
                     seconds=time.perf_counter() - start, **extra)
