"""What the numbers say, in plain functions over typed values: our numbers beside the lab's, bias and
variance read off the curves, and which differences between experiments are real."""

from dataclasses import dataclass

import numpy as np

from mnistlab.evaluation.statistics import Summary, difference_p_value
from mnistlab.train.fit import Epoch
from mnistlab.train.protocol import Score

SIGNIFICANCE = 0.05


def within_rounding(published: float, ours: float, key: str) -> bool:
    """Whether `ours`, printed as the report prints it, would read as the published value."""
    if key == "accuracy":
        return round(ours * 100) == round(published * 100)  # whole percent
    return round(ours, 4) == round(published, 4)  # four decimals


@dataclass(frozen=True)
class Comparison:
    """One published number beside ours."""

    split: str
    key: str  # accuracy or loss
    published: float
    ours: Summary  # over seeds

    @property
    def difference(self) -> float:
        return self.ours.mean - self.published

    @property
    def within_rounding(self) -> bool:
        return within_rounding(self.published, self.ours.mean, self.key)

    @property
    def inside_interval(self) -> bool | None:
        """Whether the published value lies inside our 95% interval; None below 2 seeds."""
        return None if self.ours.low is None else self.ours.low <= self.published <= self.ours.high


def compare(stats: dict[tuple[str, str], Summary], reference: dict) -> list[Comparison]:
    """Published vs ours, for every split and metric the report gives; stats: (split, key) -> Summary."""
    return [
        Comparison(split, key, reference[split][key], stats[split, key])
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


def verdict(train: Score, validation: Score, phase1: list[list[Epoch]], best_train_error: float) -> str:
    """Bias and variance in a sentence, from clean train and validation scores (means over seeds), the
    phase-1 histories (one per seed) and the lowest training error among the runs compared."""
    train_error = 1 - train.accuracy
    excess = (train_error - best_train_error) * 100
    bias = "high bias" if excess >= 1 else "some bias" if excess >= 0.3 else "low bias"
    gap = (train.accuracy - validation.accuracy) * 100
    variance = "high variance" if gap >= 1.5 else "moderate variance" if gap >= 0.5 else "low variance"
    return (
        f"{bias.capitalize()} and {variance}: training error {train_error:.2%} against the best run's "
        f"{best_train_error:.2%}; validation error {gap:+.2f} points from training error, validation loss "
        f"{validation.loss / train.loss:.1f}x training loss ({validation.loss:.4f} vs {train.loss:.4f}). "
        + overfitting(phase1)
    )


@dataclass(frozen=True)
class Difference:
    """Mean test accuracy of one experiment minus another's, and Welch's p-value."""

    difference: float
    p: float | None

    @property
    def real(self) -> bool:
        return self.p is not None and self.p < SIGNIFICANCE


def significance(accuracies: list[list[float]]) -> list[list[Difference | None]]:
    """Pairwise differences (row minus column) between experiments, each given by its seeds' accuracies."""
    return [
        [
            None if i == j else Difference(float(np.mean(a) - np.mean(b)), difference_p_value(a, b))
            for j, b in enumerate(accuracies)
        ]
        for i, a in enumerate(accuracies)
    ]
