"""What the numbers say, in plain functions over typed values: our numbers beside the lab's, bias and
variance read off the curves, and which differences between experiments are real."""

from dataclasses import dataclass

import numpy as np

from mnistlab.evaluation.statistics import Difference, Summary, difference, holm, prediction_interval
from mnistlab.records import Epoch, Score

SIGNIFICANCE = 0.05


def within_rounding(published: float, ours: float, key: str) -> bool:
    """Whether `ours`, printed as the report prints it, would read as the published value."""
    if key == "accuracy":
        return round(ours * 100) == round(published * 100)  # whole percent
    return round(ours, 4) == round(published, 4)  # four decimals


def percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def cell(stat: Summary, key: str) -> str:
    """A table cell for an accuracy (or error) or a loss over seeds: the mean ± the half-width of its 95%
    interval, in points for percentages; the mean alone for one seed."""
    show = percent if key == "accuracy" else (lambda v: f"{v:.4f}")
    if stat.low is None:
        return show(stat.mean)
    half = (stat.high - stat.low) / 2
    return f"{show(stat.mean)} ± {show(half) if key == 'loss' else f'{half * 100:.2f}'}"


MIN_SEEDS = 3  # below this, a spread over seeds is too uncertain for a verdict


@dataclass(frozen=True)
class Comparison:
    """One published number beside ours."""

    split: str
    key: str  # accuracy or loss
    published: float
    ours: list[float]  # one per seed

    @property
    def mean(self) -> float:
        return float(np.mean(self.ours))

    @property
    def difference(self) -> float:
        return self.mean - self.published

    @property
    def within_rounding(self) -> bool:
        return within_rounding(self.published, self.mean, self.key)

    @property
    def prediction_interval(self) -> tuple[float, float] | None:
        """Where one more of our runs would land, 95%: what one published run is to be compared with."""
        return prediction_interval(self.ours) if len(self.ours) >= MIN_SEEDS else None

    @property
    def inside_interval(self) -> bool | None:
        """Whether the published run lies where one of ours would; None below MIN_SEEDS seeds."""
        interval = self.prediction_interval
        return None if interval is None else interval[0] <= self.published <= interval[1]


def compare(values: dict[tuple[str, str], list[float]], reference: dict) -> list[Comparison]:
    """Published vs ours, for every split and metric the report gives; values: (split, key) -> one per seed."""
    return [
        Comparison(split, key, reference[split][key], values[split, key])
        for split in ("train", "validation", "full", "test")
        for key in ("accuracy", "loss")
        if split in reference and key in reference[split]
    ]


def _mean_curve(histories: list[list[Epoch]], key: str) -> list[float]:
    length = min(len(h) for h in histories)
    return [sum(getattr(h[i], key) for h in histories) / len(histories) for i in range(length)]


def overfitting(histories: list[list[Epoch]]) -> str:
    """Where validation loss turns up while training loss still falls, from phase 1 (mean over seeds)."""
    val, train = _mean_curve(histories, "eval_loss"), _mean_curve(histories, "loss")
    best = min(range(len(val)), key=val.__getitem__)
    last = len(val) - 1
    if best < last and val[last] > 1.1 * val[best] and train[last] < train[best]:
        return (
            f"Validation loss bottoms out at epoch {best + 1} ({val[best]:.4f}) and ends at {val[last]:.4f} "
            f"(+{val[last] / val[best] - 1:.0%}) while training loss keeps falling ({train[best]:.4f} to "
            f"{train[last]:.4f}): it overfits from about epoch {best + 1}."
        )
    return (
        f"Validation loss is at or near its lowest ({val[best]:.4f}, epoch {best + 1}) when training ends: "
        f"no sign of overfitting in {last + 1} epochs."
    )


def verdict(train: Score, validation: Score, phase1: list[list[Epoch]], others_train_error: float | None) -> str:
    """Bias and variance in a sentence, from clean train and validation scores (means over seeds), the
    phase-1 histories (one per seed) and the lowest training error among the other experiments of the
    report (None when there are none). Bias is relative: what another model here fits better. A run
    alone is never set beside itself: its training error is given, with no bias verdict."""
    train_error = 1 - train.accuracy
    gap = (train.accuracy - validation.accuracy) * 100
    variance = "high variance" if gap >= 1.5 else "moderate variance" if gap >= 0.5 else "low variance"
    numbers = (
        f"validation error {gap:+.2f} points from training error, validation loss "
        f"{validation.loss / train.loss:.1f}x training loss ({validation.loss:.4f} vs {train.loss:.4f}). "
    )
    if others_train_error is None:
        return (
            f"{variance.capitalize()}: training error {train_error:.2%}, with no other experiment here to judge its "
            f"bias by; {numbers}" + overfitting(phase1)
        )
    excess = (train_error - others_train_error) * 100
    bias = "high bias" if excess >= 1 else "some bias" if excess >= 0.3 else "low bias"
    against = (
        f"below every other experiment's (the best of them {others_train_error:.2%})"
        if excess < 0
        else f"against the best other experiment's {others_train_error:.2%}"
    )
    return f"{bias.capitalize()} and {variance}: training error {train_error:.2%} {against}; {numbers}" + overfitting(
        phase1
    )


@dataclass(frozen=True)
class Pair:
    """Experiment a minus experiment b in mean test accuracy over seeds, tested and corrected."""

    a: str
    b: str
    seeds: int  # the fewer of the two
    difference: Difference | None  # None below 2 seeds each
    adjusted_p: float | None  # Holm's, over every pair of the report

    @property
    def verdict(self) -> str:
        if self.difference is None or self.seeds < MIN_SEEDS:
            return f"too few seeds ({self.seeds}) for a verdict"
        return "real" if self.adjusted_p < SIGNIFICANCE else "within seed noise"


def pairs(accuracies: dict[str, dict[int, float]]) -> list[Pair]:
    """Every pair of experiments (name -> seed -> test accuracy), each difference tested (paired where the
    seeds match, see `statistics.difference`) and the p-values adjusted together with Holm's method."""
    names = list(accuracies)
    found = [
        (a, b, min(len(accuracies[a]), len(accuracies[b])), difference(accuracies[a], accuracies[b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    tested = [d.p for *_, d in found if d is not None]
    adjusted = iter(holm(tested)) if tested else iter(())
    return [Pair(a, b, seeds, d, None if d is None else next(adjusted)) for a, b, seeds, d in found]
