"""The statistics behind `compare`'s seed groups, against closed forms, printed tables and a numeric integral."""

from __future__ import annotations

import math

import pytest

from reviveformer.stats import mean_sd, paired_interval, t_cdf, t_quantile, welch_interval


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_closed_forms(p):
    # df = 1 is the Cauchy distribution; df = 2 has t = (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(1 - p, 5) == pytest.approx(-t_quantile(p, 5), rel=1e-12)


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        # two-sided 95% critical values as printed in standard t tables
        (3, 3.182446305),
        (4, 2.776445105),
        (10, 2.228138852),
        (30, 2.042272456),
    ],
)
def test_t_quantile_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-9)
    # towards the normal quantile as df grows (the gap is about (z^3 + z) / (4 df) = 2.4e-7 here)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963985, abs=5e-7)


@pytest.mark.parametrize(("t", "df"), [(0.7, 2.5), (2.1, 3.7), (-1.3, 7.2)])
def test_t_cdf_equals_the_integral_of_the_density(t, df):
    def pdf(x):
        return (
            math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2))
            / math.sqrt(df * math.pi)
            * (1 + x * x / df) ** (-(df + 1) / 2)
        )

    n, lo = 20000, 0.0
    h = (t - lo) / n  # Simpson's rule from 0 to t; P(T <= 0) = 1/2
    area = h / 3 * sum((1 if k in (0, n) else 4 if k % 2 else 2) * pdf(lo + k * h) for k in range(n + 1))
    assert t_cdf(t, df) == pytest.approx(0.5 + area, abs=1e-9)


def test_mean_sd():
    assert mean_sd([4.0]) == (4.0, None, 1)
    m, sd, n = mean_sd([1.0, 2.0, 4.0])
    assert (m, n) == (7 / 3, 3) and sd == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )


def test_welch_interval_by_hand():
    a, b = [4.10, 4.12, 4.08], [4.00, 4.05, 4.01, 4.02]
    # by hand: means 4.10 and 4.02; variances 0.0004 and 0.00046667
    va, vb = 0.0004 / 3, (0.0004 + 0.0009 + 0.0001 + 0.0) / 3 / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    d = welch_interval(a, b)
    assert (
        d.diff == pytest.approx(0.08)
        and d.se == pytest.approx(math.sqrt(va + vb))
        and d.df == pytest.approx(df)
    )
    assert (d.high - d.low) / 2 == pytest.approx(t_quantile(0.975, df) * math.sqrt(va + vb))
    assert d.low > 0  # this difference is an effect at 95%
    assert welch_interval([1.0], [1.0, 2.0]) is None
    same = welch_interval([1.0, 1.0], [1.0, 1.0])
    assert (same.low, same.high) == (0.0, 0.0)


def test_paired_interval_by_hand():
    # per-pair differences -0.1, 0.0, +0.1: mean 0, sd 0.1, se 0.1 / sqrt(3); t 97.5% at 2 df from printed tables
    d = paired_interval([4.0, 4.1, 4.3], [4.1, 4.1, 4.2])
    half = 4.302652730 * 0.1 / math.sqrt(3)
    assert d.diff == pytest.approx(0.0, abs=1e-12) and d.df == 2.0
    assert (d.low, d.high) == (pytest.approx(-half), pytest.approx(half))
    # the same numbers unpaired: Welch's interval is wider here, as the pairs share most of their spread
    shifted = paired_interval([5.0, 6.1, 7.3], [5.1, 6.1, 7.2])
    assert shifted.high - shifted.low == pytest.approx(2 * half)
    assert welch_interval([5.0, 6.1, 7.3], [5.1, 6.1, 7.2]).high - welch_interval(
        [5.0, 6.1, 7.3], [5.1, 6.1, 7.2]
    ).low > 10 * (2 * half)
    assert paired_interval([1.0], [2.0]) is None
    with pytest.raises(ValueError):
        paired_interval([1.0, 2.0], [1.0])
