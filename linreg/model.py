"""A fitted multi-output linear model in original units: `yield = x @ coef_.T + intercept_`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from linreg.schema import weights_schema


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

    def weights_table(self) -> pa.Table:
        """The `weights` rows: one per target and term (each feature, then 'intercept')."""
        rows = {"target": [], "term": [], "weight": []}
        for j, target in enumerate(self.targets):
            for i, feature in enumerate(self.features):
                rows["target"].append(target)
                rows["term"].append(feature)
                rows["weight"].append(float(self.coef_[j, i]))
            rows["target"].append(target)
            rows["term"].append("intercept")
            rows["weight"].append(float(self.intercept_[j]))
        return pa.table(rows, schema=weights_schema())
