"""The report's statistics, checked by simulation where the right answer is known."""

from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from mnistlab.evaluation.statistics import PAIRED, WELCH, difference, holm, prediction_interval, summarise


def test_a_prediction_interval_covers_95_percent_of_fresh_runs_where_the_mean_interval_does_not():
    rng = np.random.default_rng(0)
    runs = 20_000
    samples, fresh = rng.normal(0.98, 0.001, (runs, 5)), rng.normal(0.98, 0.001, runs)
    inside_prediction = inside_mean = 0
    for sample, new in zip(samples, fresh, strict=True):
        low, high = prediction_interval(list(sample))
        inside_prediction += low <= new <= high
        mean = summarise(list(sample))
        inside_mean += mean.low <= new <= mean.high
    print(
        f"a fresh run inside the prediction interval {inside_prediction / runs:.3f}, "
        f"the mean's {inside_mean / runs:.3f}"
    )
    assert inside_prediction / runs == pytest.approx(0.95, abs=0.006)
    assert inside_mean / runs < 0.75  # the interval of the mean is the wrong tool for one new run
    assert prediction_interval([0.5]) is None


def test_holm_keeps_the_chance_of_any_false_difference_among_36_null_pairs_near_5_percent():
    rng = np.random.default_rng(1)
    studies = 4_000
    groups = rng.normal(0.98, 0.002, (studies, 9, 5))  # nine experiments, five seeds each, no real differences
    pairs = list(combinations(range(9), 2))
    p = np.stack([stats.ttest_ind(groups[:, i], groups[:, j], axis=1, equal_var=False).pvalue for i, j in pairs], 1)
    assert p.shape == (studies, 36)
    raw_any = int((p.min(1) < 0.05).sum())
    holm_any = sum(min(holm(list(row))) < 0.05 for row in p)
    print(
        f"36 null comparisons: any p < 0.05 in {raw_any / studies:.3f} of studies, after Holm {holm_any / studies:.3f}"
    )
    assert raw_any / studies > 0.4
    assert holm_any / studies <= 0.06


def test_holm_matches_its_definition_on_a_worked_example():
    # sorted p: 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(., 3*0.03), max(., 2*0.04), max(., 0.5)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_a_paired_test_finds_a_shift_that_welch_misses_on_correlated_pairs():
    rng = np.random.default_rng(2)
    studies, paired_found, welch_found = 2_000, 0, 0
    for _ in range(studies):
        seed_effect = rng.normal(0, 0.002, 5)  # what a seed's streams do to both experiments alike
        a = 0.9800 + seed_effect + rng.normal(0, 0.0002, 5)
        b = 0.9794 + seed_effect + rng.normal(0, 0.0002, 5)  # a real 0.06-point shift
        same_seeds = difference(dict(enumerate(a)), dict(enumerate(b)))
        assert same_seeds.test == PAIRED
        paired_found += same_seeds.p < 0.05
        welch_found += stats.ttest_ind(a, b, equal_var=False).pvalue < 0.05
    print(
        f"a 0.06-point shift on correlated pairs: paired test finds it in {paired_found / studies:.3f}, "
        f"Welch {welch_found / studies:.3f}"
    )
    assert paired_found / studies > 0.8 and welch_found / studies < 0.2


def test_differences_with_their_intervals():
    paired = difference({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.89, 1: 0.905, 2: 0.915})
    diffs = np.array([0.01, 0.005, 0.005])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert paired.test == PAIRED and paired.difference == pytest.approx(diffs.mean())
    assert (paired.low, paired.high) == (pytest.approx(diffs.mean() - half), pytest.approx(diffs.mean() + half))
    assert paired.p == pytest.approx(stats.ttest_rel([0.90, 0.91, 0.92], [0.89, 0.905, 0.915]).pvalue)
    unpaired = difference({0: 0.90, 1: 0.91}, {5: 0.95, 6: 0.97, 7: 0.96})
    assert unpaired.test == WELCH and unpaired.difference == pytest.approx(-0.055)
    assert unpaired.low < unpaired.difference < unpaired.high
    same = difference({0: 0.9, 1: 0.9}, {0: 0.9, 1: 0.9})
    assert (same.difference, same.p) == (0.0, 1.0)
    assert difference({0: 0.9}, {0: 0.95, 1: 0.96}) is None
