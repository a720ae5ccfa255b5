"""Fit a multi-output linear model from a stream of (X, Y) batches with any of the three trainers.

A fit is a fixed sequence, as scikit-learn's `fit` is, each step a function below:

1. `_check`: the trainer is known (and cross-validation asked of the exact trainer only).
2. `_accumulate`: one pass over the batches: the exact least-squares statistics (streaming QR, or a Gram
   matrix when the batches can be read twice; with cross-validation one per fold, the total their merge),
   and for the gradient trainers the float64 moments, the columns' ranges and the float32 training rows
   (unless they exceed the memory limit: then streamed); merged across ranks (`linreg.parallel.merge`:
   identities with one process).
3. `_choose_solver`: the Gram matrices' factors, or a second (QR) pass when one is too ill-conditioned.
4. With cross-validation, `linreg.models.crossval.cross_validate`: every l2 scored from the folds' factors,
   the lowest pooled MSE chosen.
5. Solve: the exact solution, which every run reports as the reference optimum; for a gradient trainer
   also `linreg.models.gradient.train`: standardize, build the batch source, model, optimizer and schedule, and train.
6. `_result`: weights in original units, with the inference statistics of the exact factor.

Batches are (X, Y) or (X, Y, w) with precision weights w (m,) >= 0: weighted least squares for every
trainer. `options.l2` > 0 fits ridge: (weighted) MSE + l2 * sum of squared coefficients of the
standardized features, intercept unpenalized, the same objective for every trainer (exactly solved by
`exact`). Inference statistics (`linreg.models.statistics`) of the returned model come from the exact factor.
With `cv_folds` (exact only) batches are (X, Y, w, fold) and every value of `l2s` is cross-validated; the model
is the fit on all rows at the value with the lowest pooled cross-validated MSE (`linreg.models.crossval`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from linreg.config import config_default
from linreg.errors import InputError
from linreg.models.crossval import CrossValidation, check_folds, cross_validate
from linreg.models.exact import ExactAccumulator, ExactSolution, GRAM_MAX_CONDITION, GramAccumulator
from linreg.models.linear import LinearModel
from linreg.models.standardize import Moments
from linreg.models.statistics import FitStatistics, statistics
from linreg.parallel import dist, merge

log = logging.getLogger(__name__)
GRADIENT_TRAINERS = ("manual", "nn")  # `linreg.models.gradient` trains them (with torch); exact needs no torch


def uses_ddp(trainer: str, average_every: int) -> bool:
    """Whether several ranks train with DistributedDataParallel (nn with --average-every 1), which alone needs
    torch's process group on the CPU; nn with --average-every > 1 runs local SGD (`merge.model_averager`)."""
    return trainer == "nn" and average_every == 1


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
    average_every: int = config_default("average_every")

    @classmethod
    def from_config(cls, config) -> "TrainOptions":
        """The options of a TrainConfig. Its l2 may be a list (the values --cv-folds chooses from, passed to
        `fit(l2s=...)`): l2 is then the first, which a cross-validated fit replaces by the chosen one."""
        values = {name: getattr(config, name) for name in cls.__dataclass_fields__}
        if isinstance(values["l2"], (list, tuple)):
            values["l2"] = float(values["l2"][0])
        return cls(**values)


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
    passes: int = 1  # passes over the batches for the exact factor: 1, or 2 with a QR pass (epochs not counted)
    cv: CrossValidation | None = None  # with cv_folds: every l2's scores and the fold models at the chosen one


def fit(batches: Iterable[tuple[np.ndarray, ...]] | Callable[[], Iterable[tuple[np.ndarray, ...]]], *,
        trainer: str, features: list[str], targets: list[str], options: TrainOptions = TrainOptions(),
        cluster: dist.Cluster | None = None, checkpoint=None, stream=None, memory_limit: int | None = None,
        cv_folds: int | None = None, l2s: list[float] | None = None) -> FitResult:
    """Fit on batches of X (m, p), Y (m, k) and optionally sample weights w (m,), any float dtype (kept at
    stored precision for `exact`).

    batches: an iterable (one pass: the exact solution by streaming QR), or a function returning a new
    iterable each time it is called: then the first pass sums a Gram matrix (half the work), and a second
    pass makes the QR only if the design is too ill-conditioned for the normal equations (`GramAccumulator`).
    A batch is (X, Y) or (X, Y, w); with cv_folds it is always (X, Y, w, fold): w (m,) or None, fold (m,)
    integers in 0..cv_folds-1, each row's cross-validation fold.

    cv_folds (>= 2, exact trainer only): one factor per fold in the same pass (the second, QR pass is made
    when the Gram matrix of the whole design or of any fold is not trusted); every value of l2s (default:
    [options.l2]) is scored by K-fold cross-validation (`FitResult.cv`), and the model and `exact` are the fit
    on all rows at the chosen value (whose statistics use it). l2s without cv_folds is an InputError.

    stream, memory_limit (bytes): when the gradient trainers' float32 rows would exceed memory_limit,
    `stream(shift, scale, n_rows, mean_weight)` -> `linreg.inputs.stream.StreamedRows` re-reads the training rows
    every epoch instead (memory_limit is a rank's: when one rank's rows exceed it, every rank streams its own).

    cluster: with several ranks, each passes its own shard's batches; the exact factor and the moments are
    merged across ranks (`linreg.parallel.merge`), so the solution, standardization and learning rate equal one
    process's, and the gradient trainers run data-parallel. checkpoint: a `linreg.outputs.snapshot.Snapshots`."""
    start = time.perf_counter()
    gradient = _check(trainer, cv_folds, l2s)
    cluster = cluster or dist.single_process(options.device if gradient else "cpu")
    passes = batches if callable(batches) else None
    can_stream = stream is not None and memory_limit is not None
    seen = _accumulate(passes() if passes else batches, len(features), len(targets), options.fit_intercept,
                       gradient=gradient, two_pass=passes is not None,
                       memory_limit=memory_limit if can_stream else None, cluster=cluster, cv_folds=cv_folds)
    if seen.exact.n_rows == 0:
        raise InputError("No training rows are left after the holdout split" +
                         (" with a positive sample weight." if seen.weighted else "."))
    if seen.folds is not None:
        check_folds([acc.n_rows for acc in seen.folds])
    exact, folds, n_passes = _choose_solver(seen, passes, options.fit_intercept, cluster)
    cv = None
    if folds is not None:
        cv = cross_validate(folds, l2s if l2s is not None else [options.l2], feature_names=list(features),
                            rcond=options.rcond, singular=options.singular, weight_sums=seen.fold_weights)
        options = replace(options, l2=cv.chosen_l2)
    solution = exact.solve(feature_names=list(features), rcond=options.rcond, l2=options.l2,
                           singular=options.singular)
    if not gradient:
        model = LinearModel(solution.coef, solution.intercept, tuple(features), tuple(targets))
        return _result(model, solution, exact.n_rows, options, start, passes=n_passes, cv=cv)
    from linreg.models import gradient  # torch is imported here, by the gradient trainers only

    trained, scaler, lr, streamed = gradient.train(seen, trainer, options, cluster, checkpoint, stream)
    coef, intercept = scaler.to_original(trained.coef, trained.intercept)
    return _result(LinearModel(coef, intercept, tuple(features), tuple(targets)), solution, exact.n_rows, options,
                   start, losses=trained.losses, epochs=trained.epochs, lr=lr,
                   stop_reason=trained.stop_reason, streamed=streamed, passes=n_passes)


def _check(trainer: str, cv_folds: int | None = None, l2s: list[float] | None = None) -> bool:
    """Whether `trainer` is a gradient trainer (nn, manual); an InputError unless it is one or exact, or when
    cross-validation is asked of a gradient trainer, with fewer than 2 folds, or l2s without it."""
    if trainer not in GRADIENT_TRAINERS and trainer != "exact":
        raise InputError(f"Unknown trainer {trainer!r}; choose exact, nn or manual.")
    gradient = trainer in GRADIENT_TRAINERS
    if cv_folds is not None:
        if gradient:
            raise InputError(f"--cv-folds needs --trainer exact: its one pass accumulates a factor per fold, "
                             f"while the {trainer} trainer would train once per fold and l2 value.")
        if cv_folds < 2:
            raise InputError(f"--cv-folds must be at least 2; got {cv_folds}.")
    elif l2s is not None:
        raise InputError(f"--l2 with a list of values ({', '.join(map(str, l2s))}) needs --cv-folds: each "
                         "value is scored by cross-validation.")
    return gradient


@dataclass
class Seen:
    """What one pass over the training rows gathered (all ranks' after `_accumulate`).

    exact: the least-squares accumulator (with folds: their merge); x, y: moments of X (p columns) and Y (k);
    low, high (p,): each feature's range; weighted: whether any batch had weights; parts: float32 blocks
    (m, p + k [+ 1]) of the rows, or None when they are streamed instead; folds: with cross-validation, each
    fold's accumulator, and fold_weights (K,) each fold's sum of weights (its rows when unweighted)."""

    exact: ExactAccumulator
    x: Moments
    y: Moments
    low: np.ndarray
    high: np.ndarray
    weighted: bool = False
    parts: list[np.ndarray] | None = field(default_factory=list)
    n_local: int = 0  # this rank's rows (the moments count all ranks')
    folds: list[ExactAccumulator] | None = None
    fold_weights: np.ndarray | None = None


def _accumulate(batches, p: int, k: int, fit_intercept: bool, *, gradient: bool, two_pass: bool,
                memory_limit: int | None, cluster: dist.Cluster, cv_folds: int | None = None) -> Seen:
    """One pass over batches (X (m, p), Y (m, k)[, w (m,)]; with cv_folds (X, Y, w, fold)), merged across ranks.
    The gradient trainers' rows are kept as float32 until they exceed memory_limit bytes (None: no limit),
    then dropped (streamed)."""
    kind = GramAccumulator if two_pass else ExactAccumulator
    seen = Seen(kind(p, k, fit_intercept=fit_intercept), Moments(p), Moments(k), np.full(p, np.inf),
                np.full(p, -np.inf))
    if cv_folds is not None:
        seen.folds = [kind(p, k, fit_intercept=fit_intercept) for _ in range(cv_folds)]
        seen.fold_weights = np.zeros(cv_folds)
    held = 0
    for batch in batches:
        if seen.folds is not None:
            X, Y, w, fold = batch
            _update_folds(seen.folds, X, Y, w, fold, seen.fold_weights)
        else:
            X, Y, *rest = batch
            w = rest[0] if rest else None
            seen.exact.update(X, Y, w)
        seen.weighted = seen.weighted or w is not None
        if not gradient:
            continue
        seen.x.update(X, w)
        seen.y.update(Y, w)
        if len(X):  # bound the largest row norm when streaming
            seen.low, seen.high = np.minimum(seen.low, X.min(axis=0)), np.maximum(seen.high, X.max(axis=0))
        seen.n_local += X.shape[0]
        held += X.shape[0] * (p + k + 1) * 4
        if seen.parts is not None and memory_limit is not None and held > memory_limit:
            seen.parts = None
        if seen.parts is not None:
            # row-major: the trainers gather rows (a gather of 15.7M column-major rows took 7 s, row-major 0.6 s)
            seen.parts.append(np.hstack([X, Y] if w is None else [X, Y, np.asarray(w)[:, None]]).astype(np.float32,
                                                                                                     order="C"))
    # every rank ends with the merged (all-rank) factor and moments
    if seen.folds is not None:
        seen.folds = [merge.merge_exact(cluster, acc) for acc in seen.folds]
        sums = merge.total(cluster, {f: float(v) for f, v in enumerate(seen.fold_weights)})
        seen.fold_weights = np.array([sums[f] for f in range(cv_folds)])
        seen.exact = _merge_all(seen.folds)
    else:
        seen.exact = merge.merge_exact(cluster, seen.exact)
    seen.weighted = any(cluster.all_gather_object(seen.weighted))
    if gradient:
        seen.x, seen.y = merge.merge_moments(cluster, seen.x), merge.merge_moments(cluster, seen.y)
        if memory_limit is not None and any(cluster.all_gather_object(seen.parts is None)):
            seen.parts = None  # one rank's rows exceed its share: every rank streams (the same kind of steps)
    return seen


def _update_folds(folds: list[ExactAccumulator], X, Y, w, fold, weights: np.ndarray | None = None) -> None:
    """Add each row of X (m, p), Y (m, k), w (m,) or None to the accumulator of its fold (m,) in 0..K-1, and
    its weight (1 unweighted; zero-weight rows add 0) to weights (K,) when given."""
    fold = np.asarray(fold)
    m = np.shape(X)[0]
    if fold.shape != (m,) or (m and not np.issubdtype(fold.dtype, np.integer)):
        raise ValueError(f"Expected integer folds of shape ({m},); got {fold.dtype} {fold.shape}.")
    if m == 0:
        return
    present = np.unique(fold)
    if present[0] < 0 or present[-1] >= len(folds):
        raise ValueError(f"Folds must be in 0..{len(folds) - 1}; got {present[0]}..{present[-1]}.")
    for f in present.tolist():
        rows = None if len(present) == 1 else fold == f  # a batch of one fold is used as it is
        Xf, Yf = (X, Y) if rows is None else (X[rows], Y[rows])
        wf = None if w is None else (np.asarray(w) if rows is None else np.asarray(w)[rows])
        folds[f].update(Xf, Yf, wf)
        if weights is not None:
            weights[f] += len(Xf) if wf is None else float(np.sum(wf, dtype=np.float64))


def _merge_all(accumulators: list[ExactAccumulator]) -> ExactAccumulator:
    """A new accumulator of every accumulator's rows, merged in order (the inputs are left as they are)."""
    total = type(accumulators[0]).from_state(accumulators[0].state())
    for acc in accumulators[1:]:
        total.merge(acc)
    return total


def _choose_solver(seen: Seen, passes, fit_intercept: bool,
                   cluster: dist.Cluster) -> tuple[ExactAccumulator, list[ExactAccumulator] | None, int]:
    """The QR accumulators to solve (the total, and the folds' or None) and the passes made (1 or 2): streaming
    QRs as they are; the Gram matrices' factors when every one is accurate enough, else the QRs of a second
    pass over `passes()` (every rank's, merged)."""
    if not isinstance(seen.exact, GramAccumulator):
        return seen.exact, seen.folds, 1
    factors = [acc.factor() for acc in [seen.exact] + (seen.folds or [])]
    if all(factor is not None for factor in factors):
        return factors[0], (factors[1:] if seen.folds is not None else None), 1
    exact = seen.exact
    what = "the design's" if seen.folds is None else "the design's or a cross-validation fold's"
    log.info("%s condition number exceeds %g (or its fit leaves almost no residual): the normal equations "
             "would lose digits, so a second pass factorizes it by QR", what, GRAM_MAX_CONDITION)
    if seen.folds is None:
        qr = ExactAccumulator(exact.n_features, exact.n_targets, fit_intercept=fit_intercept)
        for X, Y, *rest in passes():
            qr.update(X, Y, rest[0] if rest else None)
        return merge.merge_exact(cluster, qr), None, 2
    folds = [ExactAccumulator(exact.n_features, exact.n_targets, fit_intercept=fit_intercept) for _ in seen.folds]
    for X, Y, w, fold in passes():
        _update_folds(folds, X, Y, w, fold)
    folds = [merge.merge_exact(cluster, acc) for acc in folds]
    return _merge_all(folds), folds, 2


def _result(model: LinearModel, solution: ExactSolution, train_rows: int, options: TrainOptions, start: float,
            **extra) -> FitResult:
    """The FitResult of a model in original units, with the inference statistics of the exact factor
    (options.l2: the l2 the model was fitted with)."""
    stats = statistics(solution.factor, model.coef_, model.intercept_, confidence=options.confidence,
                       coefficients_estimated=options.l2 == 0)
    return FitResult(model=model, exact=solution, train_rows=train_rows, stats=stats,
                     seconds=time.perf_counter() - start, **extra)
