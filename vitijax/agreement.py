"""Agreement between two raters of the same quantity (here: predicted vs expert F-Vitiligo).

Definitions (n paired values x_i, y_i; d_i = x_i - y_i):
  * Bland-Altman: bias = mean(d); limits of agreement = bias -+ 1.96 sd(d) (sd with n-1).
  * ICC(2,1) (Shrout & Fleiss; McGraw & Wong's ICC(A,1)): two-way random effects,
    absolute agreement, single rater, from the two-way ANOVA without replication:
    (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n), here with k = 2.
  * Lin's concordance correlation: 2 s_xy / (s_x^2 + s_y^2 + (mean x - mean y)^2),
    moments with divisor n.
  * Pearson r.
Pairs with a NaN (e.g. an undefined ratio from an empty face mask) are left out and counted.
"""

from __future__ import annotations

import numpy as np


def _pairs(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], int((~ok).sum())


def bland_altman(x, y) -> dict[str, float]:
    x, y, dropped = _pairs(x, y)
    d = x - y
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    bias = float(d.mean()) if len(d) else float("nan")
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": len(d),
            "left_out": dropped}


def icc_a1(x, y) -> float:
    """ICC(2,1) of two raters: two-way random, absolute agreement, single rater (:func:`icc_2_1`)."""
    x, y, _ = _pairs(x, y)
    return icc_2_1(np.stack([x, y], 1))


def icc_2_1(ratings) -> float:
    """ICC(2,1) (Shrout & Fleiss 1979) of ``ratings`` [n targets, k raters], from the two-way ANOVA
    without replication; NaN with fewer than two targets."""
    data = np.asarray(ratings, np.float64)
    n, k = data.shape
    if n < 2:
        return float("nan")
    grand = data.mean()
    ss_rows = k * ((data.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(0) - grand) ** 2).sum()
    ss_err = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denom) if denom else float("nan")


def lins_ccc(x, y) -> float:
    x, y, _ = _pairs(x, y)
    if len(x) < 2:
        return float("nan")
    sxy = ((x - x.mean()) * (y - y.mean())).mean()
    denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * sxy / denom) if denom else float("nan")


def pearson_r(x, y) -> float:
    x, y, _ = _pairs(x, y)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def agreement(pred, true) -> dict[str, float]:
    """All four, for predicted vs true values."""
    return {**{f"bland_altman_{k}": v for k, v in bland_altman(pred, true).items()},
            "icc_a1": icc_a1(pred, true), "lins_ccc": lins_ccc(pred, true), "pearson_r": pearson_r(pred, true)}
