"""The model for people who use the library from Python, in scikit-learn's style.

    from linreg.models.estimator import LinearRegression
    model = LinearRegression(trainer="exact").fit(X, y)       # X (n, p), y (n,) or (n, k)
    model.coef_, model.intercept_, model.predict(X_new), model.score(X_test, y_test)
    model = LinearRegression.from_run("output")               # the newest committed run's weights
    model = LinearRegression.from_run("output/weights/run_id=nightly-1")

X and y may be NumPy arrays, pandas DataFrames/Series or pyarrow Tables. As in scikit-learn, a 1-D y
gives coef_ (p,) and a scalar intercept_; a 2-D y gives coef_ (k, p) and intercept_ (k,). Training is
`linreg.models.fit.fit` (the same trainers as the pipeline); loading reads the `weights` dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.config import config_default
from linreg.errors import InputError
from linreg.inputs.tables import BATCH_ROWS
from linreg.models.fit import FitResult, TrainOptions, fit
from linreg.models.linear import LinearModel
from linreg.outputs import commit, runindex

_PARAMS = ("trainer", "fit_intercept", "standardize", "lr", "epochs", "batch_size", "tol", "patience", "seed", "device")
_WEIGHTS_PARTITION = re.compile(r"^(?P<root>.*?)/+weights/+run_id=(?P<run_id>[^/]+)/*$")


@dataclass(frozen=True)
class TrainedRun:
    """A committed run's model: weights in original units, its run id and its configuration."""

    model: LinearModel
    run_id: str
    output: str
    config: dict


def load_run(model: str) -> TrainedRun:
    """`OUTPUT` (the newest committed run) or `OUTPUT/weights/run_id=ID` -> the run's LinearModel."""
    match = _WEIGHTS_PARTITION.match(model)
    output, run_id = (match["root"] or "/", match["run_id"]) if match else (model.rstrip("/") or "/", None)
    row = runindex.run_row(output, run_id) if run_id else runindex.newest_run(output)
    filesystem, root, _ = commit.resolve(output)
    path = f"{commit.partition(root, 'weights', row['run_id'])}/{commit.PART_FILE}"
    try:
        table = pq.read_table(path, filesystem=filesystem, columns=["target", "term", "weight"])
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"The weights of run {row['run_id']!r} cannot be read from {path!r}: {exc}") from None
    return TrainedRun(model=model_from_weights(table), run_id=row["run_id"], output=output,
                      config=runindex.run_config(row))


def model_from_weights(table: pa.Table) -> LinearModel:
    """A LinearModel from `weights` rows (target, term, weight), terms in their written order."""
    targets, features, values = [], [], {}
    for target, term, weight in zip(*(table.column(c).to_pylist() for c in ("target", "term", "weight"))):
        if target not in targets:
            targets.append(target)
        if term != "intercept" and term not in features:
            features.append(term)
        values[target, term] = weight
    coef = np.array([[values[t, f] for f in features] for t in targets], dtype=np.float64).reshape(len(targets), -1)
    intercept = np.array([values.get((t, "intercept"), 0.0) for t in targets], dtype=np.float64)
    return LinearModel(coef, intercept, tuple(features), tuple(targets))


def _as_matrix(data, what: str) -> tuple[np.ndarray, list[str] | None]:
    """(n, m) float array and column names (None for plain arrays) of X or y; 1-D stays 1-D."""
    names = None
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        names = list(data.column_names)
        data = np.column_stack([data.column(n).to_numpy(zero_copy_only=False) for n in names]) if names else None
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas DataFrame
        names = [str(c) for c in data.columns]
        data = data.to_numpy()
    elif hasattr(data, "name") and hasattr(data, "to_numpy"):  # pandas Series
        names = [str(data.name)] if data.name is not None else None
        data = data.to_numpy()
    try:
        array = np.asarray(data)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(f"Input {what} must be numeric; it holds {np.asarray(data).dtype} values.") from None
    if array.ndim not in (1, 2) or array.shape[0] == 0:
        raise InputError(f"Input {what} must be a non-empty 1-D or 2-D array; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise InputError(f"Input {what} contains NaN or infinity.")
    return array, names


class LinearRegression:
    """Multi-output least squares `y = X @ coef_.T + intercept_`, trained by the pipeline's trainers."""

    def __init__(self, *, trainer: str = config_default("trainer"),
                 fit_intercept: bool = config_default("fit_intercept"),
                 standardize: bool = config_default("standardize"), lr: float | None = config_default("lr"),
                 epochs: int = config_default("epochs"), batch_size: int | None = config_default("batch_size"),
                 tol: float = config_default("tol"), patience: int = config_default("patience"),
                 seed: int = config_default("seed"), device: str = config_default("device")):
        """The defaults are TrainConfig's (`python -m flows.train --help` explains each)."""
        self.trainer, self.fit_intercept, self.standardize, self.lr = trainer, fit_intercept, standardize, lr
        self.epochs, self.batch_size, self.tol, self.patience = epochs, batch_size, tol, patience
        self.seed, self.device = seed, device

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params) -> "LinearRegression":
        for name, value in params.items():
            if name not in _PARAMS:
                raise ValueError(f"Invalid parameter {name!r} for LinearRegression; valid ones: {', '.join(_PARAMS)}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != LinearRegression().get_params()[k]}
        return "LinearRegression(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def fit(self, X, y) -> "LinearRegression":
        """Fit on X (n, p) and y (n,) or (n, k). Float32 and float64 data keep their precision for `exact`."""
        X, x_names = _as_matrix(X, "X")
        Y, y_names = _as_matrix(y, "y")
        if X.ndim == 1:
            raise InputError("Expected a 2-D X (n_samples, n_features); reshape a single feature with X.reshape(-1, 1).")
        if len(X) != len(Y):
            raise InputError(f"X and y have different numbers of rows: {len(X)} and {len(Y)}.")
        self._y_1d = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        features = x_names or [f"x{i}" for i in range(X.shape[1])]
        targets = y_names if y_names and len(y_names) == Y.shape[1] else [f"y{j}" for j in range(Y.shape[1])]
        batches = ((X[i:i + BATCH_ROWS], Y[i:i + BATCH_ROWS]) for i in range(0, len(X), BATCH_ROWS))
        result = fit(batches, trainer=self.trainer, features=features, targets=targets,
                     options=TrainOptions(**{n: getattr(self, n) for n in _PARAMS if n != "trainer"}))
        self._set_model(result.model, x_names is not None)
        self.fit_result_: FitResult = result
        self.losses_ = list(result.losses)
        self.n_iter_ = result.epochs
        return self

    @classmethod
    def from_run(cls, model: str = "output") -> "LinearRegression":
        """Load a committed run: `OUTPUT` (the newest) or `OUTPUT/weights/run_id=ID`."""
        run = load_run(model)
        params = {k: v for k, v in run.config.items() if k in _PARAMS}
        estimator = cls(**params)
        estimator._y_1d = False
        estimator._set_model(run.model, True)
        estimator.run_id_ = run.run_id
        return estimator

    def _set_model(self, model: LinearModel, named: bool) -> None:
        self.model_ = model
        self.n_features_in_ = len(model.features)
        if named:
            self.feature_names_in_ = np.array(model.features, dtype=object)
        self.targets_ = list(model.targets)

    @property
    def coef_(self) -> np.ndarray:
        self._check_fitted()
        return self.model_.coef_[0] if self._y_1d else self.model_.coef_

    @property
    def intercept_(self):
        self._check_fitted()
        return float(self.model_.intercept_[0]) if self._y_1d else self.model_.intercept_

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise AttributeError("This LinearRegression instance is not fitted yet. Call 'fit' with appropriate "
                                 "arguments before using this estimator.")

    def _features(self, X) -> np.ndarray:
        self._check_fitted()
        X, names = _as_matrix(X, "X")
        if X.ndim == 1:
            raise InputError("Expected a 2-D X (n_samples, n_features); reshape a single feature with X.reshape(-1, 1).")
        expected = getattr(self, "feature_names_in_", None)
        if names is not None and expected is not None:
            missing = [f for f in expected if f not in names]
            unseen = [n for n in names if n not in expected]
            if missing or unseen:
                raise InputError("The feature names should match those that were passed during fit. "
                                 f"Unseen at fit time: {unseen or 'none'}; seen at fit time, yet now missing: "
                                 f"{missing or 'none'}.")
            X = X[:, [names.index(f) for f in expected]]
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but LinearRegression is expecting "
                             f"{self.n_features_in_} features as input.")
        return X

    def predict(self, X) -> np.ndarray:
        """Predictions (n,) for a 1-D y at fit, else (n, k), float64."""
        X = self._features(X)  # checks that the model is fitted first
        pred = self.model_.predict(X)
        return pred[:, 0] if self._y_1d else pred

    def score(self, X, y) -> float:
        """R^2 on (X, y), averaged uniformly over the targets (scikit-learn's r2_score default)."""
        pred = self.predict(X).reshape(len(X), -1)
        Y, _ = _as_matrix(y, "y")
        Y = Y.reshape(len(Y), -1)
        ss_res = ((Y - pred) ** 2).sum(axis=0)
        ss_tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
        return float(r2.mean())

