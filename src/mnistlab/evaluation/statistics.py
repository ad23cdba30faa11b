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


def difference_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that two groups of seeds share a mean; None below 2 seeds each."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
