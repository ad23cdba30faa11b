"""Statistics over the seeds of one experiment, and between experiments."""

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """One metric over seeds: mean, sample standard deviation and 95% t-interval of the mean."""

    n: int
    mean: float
    std: float | None  # None below 2 seeds, as are low and high
    low: float | None
    high: float | None


def summarise(values: list[float]) -> Summary:
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return Summary(n, mean, std, mean - half, mean + half)


def prediction_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Where one new run would land with probability `level`: mean ± t·s·sqrt(1 + 1/n). This, not the
    interval of the mean, is what a single published run is to be compared with: the published run has
    seed noise of its own, and the interval of the mean shrinks towards nothing as seeds are added.
    None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std * np.sqrt(1 + 1 / n))
    return mean - half, mean + half


PAIRED, WELCH = "paired t-test over seeds", "Welch's t-test"


@dataclass(frozen=True)
class Difference:
    """Mean of one experiment minus another's over seeds, with its 95% interval and a two-sided p-value."""

    difference: float
    low: float
    high: float
    p: float
    test: str  # PAIRED or WELCH


def difference(a: dict[int, float], b: dict[int, float]) -> Difference | None:
    """a - b, each given per seed. Runs of one seed share their random streams (initial weights, data order,
    dropout masks) whatever the experiment, so where both have the same seeds the pairs are compared: a
    paired t-test on the differences seed by seed. Otherwise Welch's. None below 2 seeds each."""
    if len(a) < 2 or len(b) < 2:
        return None
    paired = sorted(a) == sorted(b)
    x = np.array([a[s] for s in sorted(a)])
    y = np.array([b[s] for s in sorted(b)])
    mean = float(x.mean() - y.mean())
    spread = (x - y) if paired else np.concatenate([x - x.mean(), y - y.mean()])
    if np.ptp(spread) == 0:
        # No variance at all: the difference is what it is, exactly.
        return Difference(mean, mean, mean, 1.0 if mean == 0 else 0.0, PAIRED if paired else WELCH)
    result = stats.ttest_rel(x, y) if paired else stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(0.95)
    return Difference(
        mean, float(interval.low), float(interval.high), float(result.pvalue), PAIRED if paired else WELCH
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: adjusted p-values whose threshold keeps the chance of any false
    'real difference' among all the comparisons at that threshold, where unadjusted p-values of many
    pairs would find some by chance alone."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Equivalence:
    """Whether two samples' means agree within ±margin: two one-sided Welch t-tests (TOST)."""

    difference: float  # mean of a minus mean of b
    low: float  # the 90% interval of the difference: inside (-margin, margin) means equivalent at 5%
    high: float
    p_equivalent: float  # TOST's p: the larger of the two one-sided p-values
    p_different: float  # Welch's two-sided p
    verdict: str  # "equivalent", "different", "undecided" or "too few seeds"


def equivalence(a: list[float], b: list[float], margin: float, alpha: float = 0.05, least: int = 3) -> Equivalence:
    """Test that mean(a) and mean(b) differ by less than `margin` (equivalent), besides testing that they
    differ at all (different): a difference test alone cannot show agreement, since few seeds give no
    significance either way. Below `least` values each, no verdict."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
    if len(x) < least or len(y) < least:
        return Equivalence(difference, float("nan"), float("nan"), float("nan"), float("nan"), "too few seeds")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = float(np.sqrt(va + vb))
    if se == 0:
        inside = abs(difference) < margin
        verdict = "equivalent" if inside else "different"
        return Equivalence(difference, difference, difference, 0.0 if inside else 1.0, float(not difference), verdict)
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    p_lower = float(stats.t.sf((difference + margin) / se, df))  # H0: difference <= -margin
    p_upper = float(stats.t.cdf((difference - margin) / se, df))  # H0: difference >= margin
    p_equivalent = max(p_lower, p_upper)
    p_different = float(2 * stats.t.sf(abs(difference) / se, df))
    half = float(stats.t.ppf(1 - alpha, df) * se)
    if p_equivalent < alpha:
        verdict = "equivalent"
    elif p_different < alpha:
        verdict = "different"
    else:
        verdict = "undecided"
    return Equivalence(difference, difference - half, difference + half, p_equivalent, p_different, verdict)
