"""A fitted multi-output linear model in original units: `yield = x @ coef_.T + intercept_`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from linreg.inputs.schema import weights_schema


@dataclass(frozen=True)
class LinearModel:
    """coef_ (k, p) and intercept_ (k,) in float64, for `features` (p names) and `targets` (k names)."""

    coef_: np.ndarray
    intercept_: np.ndarray
    features: tuple[str, ...]
    targets: tuple[str, ...]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """X (m, p) in the features' units -> predictions (m, k), float64."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def weights_table(self, stats=None) -> pa.Table:
        """The `weights` rows: one per target and term (each feature, then 'intercept').

        stats: a `linreg.models.statistics.FitStatistics` for the std_error, t_value, p_value, ci_low and ci_high
        columns; a statistic that is not defined (NaN there: an aliased term, a ridge fit, the intercept of
        a fit through the origin) is written as null, as are all of them without stats.
        """
        k, p = self.coef_.shape
        schema = weights_schema()
        weights = np.hstack([self.coef_, self.intercept_[:, None]]).astype(np.float64)
        columns = {"target": pa.array(np.repeat(list(self.targets), p + 1).tolist(), pa.string()),
                   "term": pa.array((list(self.features) + ["intercept"]) * k, pa.string()),
                   "weight": pa.array(weights.ravel())}
        for name in schema.names[3:]:
            values = np.full((k, p + 1), np.nan) if stats is None else np.asarray(getattr(stats, name), np.float64)
            flat = values.ravel()
            columns[name] = pa.array(flat, pa.float64(), mask=np.isnan(flat))
        return pa.table(columns, schema=schema)
