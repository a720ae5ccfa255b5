"""Inference statistics of a fitted linear model: standard errors, t, p-values, confidence intervals,
residual SD, adjusted R^2 and F, from the training design's triangular factor (see `exact.DesignFactor`).

Formulas (q = design rank counting the intercept, n = training rows of non-zero weight, c = 1 with an
intercept and 0 without, W = sum of weights, RSS = sum w_i r_i^2 of the model whose statistics these are):

    dof = n - q,  sigma^2 = RSS / dof,  residual_sd = sigma
    std_error_j = sigma * sqrt([(X'WX)^-1]_jj)           X the design with its ones column, original units
    t_j = weight_j / std_error_j,  p_j = 2 P(T_dof > |t_j|),  CI = weight_j -/+ t_{(1+confidence)/2, dof} * std_error_j
    R^2 = 1 - RSS / TSS,  TSS centred (sum w (y - ybar)^2) with an intercept, uncentred (sum w y^2) without
    R^2_adj = 1 - (1 - R^2) (n - c) / dof,  F = ((TSS - RSS) / (q - c)) / (RSS / dof)

These are R's `summary(lm)` and statsmodels' OLS/WLS, including R's through-the-origin convention.
The Student t distribution is computed here (no SciPy at run time) from the regularized incomplete beta
function: P(|T| > t) = I_{dof/(dof+t^2)}(dof/2, 1/2), with Lentz's continued fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext

import numpy as np

from linreg.config import config_default

_EPS = 1e-16
_TINY = 1e-300
_DECIMAL_FROM = 2000.0  # a + b above which the continued fraction runs in 40-digit decimals


# ---------------------------------------------------------------- Student t distribution (no SciPy)

def _log_gamma_ratio(a: float, b: float) -> float:
    """log(Gamma(a + b) / Gamma(a)) without the cancellation of lgamma(a + b) - lgamma(a) for large a."""
    if a < 10.0:
        return math.lgamma(a + b) - math.lgamma(a)

    def stirling_correction(x):  # lgamma(x) - [(x - 1/2) log x - x + log(2 pi) / 2]
        x2 = x * x
        return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x

    return ((a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b
            + stirling_correction(a + b) - stirling_correction(a))


def _log_beta(a: float, b: float) -> float:
    """log B(a, b), accurate when one argument is large."""
    big, small = (a, b) if a >= b else (b, a)
    return math.lgamma(small) - _log_gamma_ratio(big, small)


def _beta_continued_fraction(a: float, b: float, x) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes' betacf).

    x is a float, or a Decimal for large a + b: there the terms 1 + aa * d cancel to about 1 / (a + b) of
    their size, so float arithmetic would lose log10(a + b) digits; 40-digit decimals keep them.
    """
    one = type(x)(1)
    tiny = type(x)(_TINY)
    a_, b_ = type(x)(a), type(x)(b)
    qab, qap, qam = a_ + b_, a_ + one, a_ - one
    c, d = one, one - qab * x / qap
    d = one / (d if abs(d) > tiny else tiny)
    h = d
    eps = type(x)(_EPS) if isinstance(x, float) else Decimal("1e-30")
    for m in range(1, 100 * int(math.sqrt(max(a, b))) + 1000):
        m2 = 2 * m
        for aa in (m * (b_ - m) * x / ((qam + m2) * (a_ + m2)), -(a_ + m) * (qab + m) * x / ((a_ + m2) * (qap + m2))):
            d = one + aa * d
            d = one / (d if abs(d) > tiny else tiny)
            c = one + aa / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - one) < eps:
            return float(h)
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x, y=None) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1; y = 1 - x.

    x and y may be Decimals (exact), which matters for large a + b (see _beta_continued_fraction).
    """
    exact = isinstance(x, Decimal)
    if not exact:
        y = 1.0 - x if y is None else y
    elif a + b > _DECIMAL_FROM:
        with localcontext() as ctx:
            ctx.prec = 40
            return _betainc(a, b, float(x), float(y), x, y)
    return _betainc(a, b, float(x), float(y), float(x), float(y))


def _betainc(a, b, x, y, x_cf, y_cf) -> float:
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    # log x and log y from whichever of x, y is small: log(1 - 1e-9) is only 7 digits accurate.
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x_cf) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y_cf) / b


def t_two_sided_p(t: float, dof: float) -> float:
    """P(|T| > |t|) for Student's T with `dof` degrees of freedom (NaN stays NaN)."""
    if math.isnan(t) or not dof > 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    if dof + 0.5 <= _DECIMAL_FROM:
        t2 = t * t
        return betainc(dof / 2.0, 0.5, dof / (dof + t2), t2 / (dof + t2))
    with localcontext() as ctx:
        ctx.prec = 40
        t2, n = Decimal(t) ** 2, Decimal(dof)
        return betainc(dof / 2.0, 0.5, n / (n + t2), t2 / (n + t2))


def t_sf(t: float, dof: float) -> float:
    """P(T > t), the upper tail."""
    half = 0.5 * t_two_sided_p(t, dof)
    return half if t >= 0 else 1.0 - half


def t_quantile(prob: float, dof: float) -> float:
    """The t such that P(T <= t) = prob, for 0 < prob < 1 (bisection on the two-sided tail)."""
    if not (0.0 < prob < 1.0) or not dof > 0:
        return math.nan
    if prob == 0.5:
        return 0.0
    tail = 2.0 * min(prob, 1.0 - prob)  # two-sided tail probability of |t|
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, dof) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_two_sided_p(mid, dof) > tail:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if prob > 0.5 else -t


# ---------------------------------------------------------------- statistics of a fit

@dataclass(frozen=True)
class FitStatistics:
    """Per target and term (features, then the intercept) arrays (k, p + 1), NaN where not estimated
    (an aliased term, the intercept of a fit through the origin, every term of a ridge fit, dof = 0);
    per-target arrays (k,); and per-run scalars."""

    std_error: np.ndarray
    t_value: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    dof: int
    residual_sd: np.ndarray
    r2: np.ndarray
    r2_adj: np.ndarray
    f_statistic: np.ndarray
    condition_number: float
    design_rank: int
    confidence: float

    COLUMNS = ("std_error", "t_value", "p_value", "ci_low", "ci_high")

    def term_columns(self) -> dict[str, np.ndarray]:
        """The weights-table columns, each (k, p + 1)."""
        return {name: getattr(self, name) for name in self.COLUMNS}


def statistics(factor, coef: np.ndarray, intercept: np.ndarray, *, confidence: float = config_default("confidence"),
               coefficients_estimated: bool = True) -> FitStatistics:
    """Statistics of the model coef (k, p), intercept (k,) on the training design `factor` (a DesignFactor).

    The residual sum of squares is that of the given model (the least-squares one for `exact`, the trained
    one for gradient trainers), computed from the factor. coefficients_estimated=False (ridge) leaves the
    per-term statistics NaN: a penalized estimate is biased, so its t statistics would not be Student t.
    """
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    k, p = coef.shape
    c = int(factor.fit_intercept)
    q = factor.rank + c
    dof = factor.n_rows - q
    rss = factor.rss(coef, intercept)
    params = np.hstack([coef, intercept[:, None]])
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = rss / dof if dof > 0 else np.full(k, np.nan)
        se = np.sqrt(sigma2[:, None] * factor.unscaled_variance[None, :])
        if not coefficients_estimated:
            se = np.full_like(se, np.nan)
        t = params / se
        p_values = np.vectorize(lambda v: t_two_sided_p(v, dof), otypes=[float])(t) if dof > 0 else t * np.nan
        half_width = t_quantile(0.5 + confidence / 2.0, dof) * se if dof > 0 else se * np.nan
        r2 = np.where(factor.tss > 0, 1.0 - rss / factor.tss, np.nan)
        r2_adj = 1.0 - (1.0 - r2) * (factor.n_rows - c) / dof if dof > 0 else np.full(k, np.nan)
        numerator_dof = q - c
        f = ((factor.tss - rss) / numerator_dof) / sigma2 if numerator_dof > 0 else np.full(k, np.nan)
    return FitStatistics(std_error=se, t_value=t, p_value=p_values, ci_low=params - half_width,
                         ci_high=params + half_width, dof=int(dof), residual_sd=np.sqrt(sigma2), r2=r2,
                         r2_adj=r2_adj, f_statistic=f, condition_number=float(factor.condition_number),
                         design_rank=int(q), confidence=float(confidence))
