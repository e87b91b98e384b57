"""Statistics over seeds: mean and sample standard deviation, the Student-t quantile, Welch's t interval for
the difference of two means, the paired t interval for runs matched by seed, and Fieller's interval for a
ratio of paired means; and over runs' metric series, the mean and sd per step of a seed band, and which tasks of
a sequence a plasticity number averages over.

Written here rather than taken from scipy (not a dependency): the t quantile is the inverse of the t CDF,
which is a regularised incomplete beta function, evaluated by its continued fraction (Numerical Recipes,
2nd ed., section 6.4, `betacf`) and inverted by bisection. Accurate to ~1e-10 for df >= 1, enough for an
interval printed with four digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reviveformer.run_files import series

WELCH_METHOD = "Welch t interval (two-sided, Welch-Satterthwaite degrees of freedom)"
PAIRED_METHOD = "paired t interval over the seeds both arms ran (two-sided, n - 1 degrees of freedom)"
FIELLER_METHOD = (
    "Fieller interval of a ratio of paired means: the fractions r for which the paired t interval of "
    "a - r b contains 0 (two-sided, n - 1 degrees of freedom)"
)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation with n - 1, n); the sd is None for fewer than 2 values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_sd needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)), n


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes `betacf`)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x={x} must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df={df} must be > 0")
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on `t_cdf` (monotone)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Difference:
    """mean(a) - mean(b) with its confidence interval."""

    diff: float
    low: float
    high: float
    se: float
    df: float
    confidence: float
    method: str = WELCH_METHOD


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference | None:
    """Welch's t interval for mean(a) - mean(b) (unequal variances); None when either side has fewer than 2
    values (no spread to estimate). Two identical-valued sides give a zero-width interval."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, sa, na = mean_sd(a)
    mb, sb, nb = mean_sd(b)
    va, vb = sa**2 / na, sb**2 / nb
    se = math.sqrt(va + vb)
    diff = ma - mb
    if se == 0:
        return Difference(diff, diff, diff, 0.0, float(na + nb - 2), confidence)
    # Welch-Satterthwaite; a side with no spread contributes nothing
    df = (va + vb) ** 2 / ((va**2 / (na - 1) if va else 0.0) + (vb**2 / (nb - 1) if vb else 0.0))
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Difference(diff, diff - half, diff + half, se, df, confidence)


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference | None:
    """The t interval of mean(a_i - b_i) over pairs (a_i, b_i), e.g. two arms run with the same seed (same
    initial weights and data order), which takes out what the seed does to both arms alike. None for fewer
    than 2 pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval needs pairs: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return None
    mean, sd, n = mean_sd([x - y for x, y in zip(a, b, strict=True)])
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * se if se else 0.0
    return Difference(mean, mean - half, mean + half, se, float(n - 1), confidence, PAIRED_METHOD)


def paired_ratio_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """Fieller's interval for mean(a) / mean(b) from pairs (a_i, b_i) (Fieller 1954, "Some problems in
    interval estimation", JRSS B 16): every r for which the paired t interval of a_i - r b_i contains 0, i.e. A r^2 - 2 B r + C <= 0 with q = t^2 / n,
    A = mean(b)^2 - q s_bb, B = mean(a) mean(b) - q s_ab, C = mean(a)^2 - q s_aa (s: sample covariances).
    None for fewer than 2 pairs, or when that set is not a bounded interval (A <= 0: mean(b) is not told apart
    from 0 at this level, so the ratio may be anything)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ratio_interval needs pairs: {len(a)} values against {len(b)}")
    n = len(a)
    if n < 2:
        return None
    ma, mb = math.fsum(a) / n, math.fsum(b) / n

    def cov(x: Sequence[float], mx: float, y: Sequence[float], my: float) -> float:
        return math.fsum((u - mx) * (v - my) for u, v in zip(x, y, strict=True)) / (n - 1)

    q = t_quantile(0.5 + confidence / 2.0, n - 1) ** 2 / n
    big_a = mb * mb - q * cov(b, mb, b, mb)
    big_b = ma * mb - q * cov(a, ma, b, mb)
    big_c = ma * ma - q * cov(a, ma, a, ma)
    if big_a <= 0:
        return None
    # >= 0 whenever A > 0 (the quadratic is -q var(a - r b) <= 0 at r = mean(a) / mean(b)); max() for rounding
    half = math.sqrt(max(big_b * big_b - big_a * big_c, 0.0))
    return (big_b - half) / big_a, (big_b + half) / big_a


# ---------------------------------------------------------------------------------------------- series


def seed_band(runs: Sequence[Sequence[Mapping[str, Any]]], key: str) -> dict[str, np.ndarray]:
    """Mean and spread over seeds of one metric: at each step logged by any run, the mean, the sample standard
    deviation (NaN where fewer than 2 runs have the step) and n, the number of runs with a value there."""
    return band([dict(series(rows, key, finite=False)) for rows in runs])


def band(per_run: Sequence[Mapping[int, float]]) -> dict[str, np.ndarray]:
    """`seed_band` of series already read: one {x: value} per run ("step" holds the x values); a non-finite
    value counts as missing."""
    steps = sorted({s for values in per_run for s in values})
    mean, sd, n = [], [], []
    for step in steps:
        values = [run[step] for run in per_run if step in run and math.isfinite(run[step])]
        n.append(len(values))
        mean.append(float(np.mean(values)) if values else np.nan)
        sd.append(float(np.std(values, ddof=1)) if len(values) > 1 else np.nan)
    return {
        "step": np.array(steps, dtype=np.int64),
        "mean": np.array(mean),
        "sd": np.array(sd),
        "n": np.array(n, dtype=np.int64),
    }


def last_half(n_tasks: int) -> range:
    """The tasks a plasticity number averages over: the last half, k >= n_tasks // 2 (of 5 tasks: 2, 3, 4)."""
    return range(n_tasks // 2, n_tasks)
