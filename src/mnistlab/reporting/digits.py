"""Which test digits the models get wrong: errors stable over seeds and errors that are seed noise, errors
shared between experiments, top losses, and a confusion matrix whose cells open the digits behind them.

Everything comes from the run folders: each keeps its analysis (analysis.json) and the test images
behind it (errors.safetensors), so the report needs no data set.
"""

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mnistlab.evaluation.analysis import Analysis
from mnistlab.evaluation.figures import digit_grid, digit_strip
from mnistlab.reporting.document import Heading, InlineImage, Link, Paragraph, Reveal, Table
from mnistlab.studies.folder import SeedRun

GRID = 24  # digits at most in one grid
STRIP = 30  # digits at most behind one confusion cell
SOUND = 0.9  # experiments below this test accuracy are left out of "what every experiment gets wrong"


@dataclass
class SeedErrors:
    """The test errors of one experiment's seeds."""

    label: str
    runs: list[SeedRun]

    @cached_property
    def analyses(self) -> list[Analysis]:
        return [r.analysis() for r in self.runs]

    @cached_property
    def images(self) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        for run in self.runs:
            found.update(run.folder.read_error_images())
        return found

    @cached_property
    def predictions(self) -> list[dict[int, int]]:
        """Per seed, test index -> predicted class, for the digits that seed gets wrong."""
        return [{m.index: m.predicted for m in a.misclassified} for a in self.analyses]

    @cached_property
    def truth(self) -> dict[int, int]:
        return {m.index: m.true for a in self.analyses for m in a.misclassified}

    @cached_property
    def stable(self) -> set[int]:
        """Wrong in every seed."""
        return set.intersection(*(set(p) for p in self.predictions))

    @cached_property
    def noisy(self) -> set[int]:
        """Wrong in some seeds, right in others."""
        return set.union(*(set(p) for p in self.predictions)) - self.stable

    def read_as(self, index: int) -> list[int]:
        """Each seed's prediction for a test digit (right where that seed does not list it as wrong)."""
        return [p.get(index, self.truth[index]) for p in self.predictions]

    def grid(self, indices: list[int], title: str) -> InlineImage:
        classes = self.analyses[0].classes
        shown = indices[:GRID]
        captions = [
            f"#{i} true {classes[self.truth[i]]}\nread {' '.join(classes[c] for c in self.read_as(i))}" for i in shown
        ]
        return InlineImage(digit_grid([self.images[i] for i in shown], captions, title), title)


def across_seeds(experiments: list[SeedErrors], accuracies: dict[str, float]) -> list:
    """The report's section on which errors are stable, which are noise, and which are shared; nothing
    when the report has neither several seeds nor several experiments to say it of."""
    blocks = []
    multi = [e for e in experiments if len(e.runs) > 1]
    if multi:
        blocks.append(
            Paragraph(
                "A digit that every seed of an experiment gets wrong is a stable error of the model: more training "
                "or another seed will not fix it. One that only some seeds get wrong is seed noise. Captions give "
                "the true class and what each seed read."
            )
        )
    for e in multi:
        blocks += [
            Heading(3, e.label),
            Paragraph(
                f"{len(e.stable)} test digits are wrong in all {len(e.runs)} seeds (stable errors); {len(e.noisy)} "
                f"more are wrong in some seeds only (seed noise)."
            ),
        ]
        if e.stable:
            blocks.append(e.grid(sorted(e.stable), f"{e.label}: wrong in every seed"))
        if e.noisy:
            blocks.append(e.grid(sorted(e.noisy), f"{e.label}: wrong in some seeds only"))
    blocks += _shared(experiments)
    sound = [e for e in experiments if accuracies[e.label] >= SOUND]
    if len(sound) > 1:
        common = sorted(set.intersection(*(e.stable for e in sound)))
        blocks += [
            Heading(3, "What every experiment gets wrong"),
            Paragraph(
                f"{len(common)} test digits are stable errors of all {len(sound)} experiments with at least "
                f"{SOUND:.0%} test accuracy. Most are ambiguous to people too, as the lab report says of its figure 3."
            ),
        ]
        if common:
            blocks.append(
                sound[0].grid(common, f"stable errors of every experiment (readings: {sound[0].label}'s seeds)")
            )
    return [Heading(2, "Which digits are wrong, and how surely"), *blocks] if blocks else []


def _shared(experiments: list[SeedErrors]) -> list:
    """How many stable errors each pair of experiments shares: the diagonal is each one's own count."""
    if len(experiments) < 2:
        return []
    rows = [[a.label, *(str(len(a.stable & b.stable)) for b in experiments)] for a in experiments]
    blocks = [
        Heading(3, "Errors two experiments share"),
        Paragraph(
            "Stable errors (every seed wrong; with one seed, its errors) that the row's and the column's experiment "
            "share; on the diagonal, each experiment's own."
        ),
        Table(["", *(e.label for e in experiments)], rows),
    ]
    by_label = {e.label: e for e in experiments}
    if "powerful" in by_label and "dropout" in by_label:
        before, after = by_label["powerful"].stable, by_label["dropout"].stable
        blocks.append(
            Paragraph(
                f"Dropout against the powerful model: of the powerful model's {len(before)} stable errors, dropout "
                f"fixes {len(before - after)} and keeps {len(before & after)}, and it makes {len(after - before)} "
                "stable errors of its own."
            )
        )
    return blocks


def top_losses(errors: SeedErrors) -> InlineImage:
    """The first seed's test digits of highest loss, with both probabilities."""
    analysis = errors.analyses[0]
    classes = analysis.classes
    captions = [
        f"{classes[t.predicted]} / {classes[t.true]}\nloss {t.loss:.2f}\n"
        f"p {t.predicted_probability:.2f} / {t.true_probability:.2f}"
        for t in analysis.top_losses
    ]
    images = [errors.images[t.index] for t in analysis.top_losses]
    title = f"{errors.label}: top losses (prediction / true class, loss, their probabilities)"
    return InlineImage(digit_grid(images, captions, title), title)


def confusion(errors: SeedErrors) -> list:
    """The first seed's confusion matrix, normalised per true class, with each off-diagonal cell a link to
    the digits of class i read as j."""
    analysis = errors.analyses[0]
    classes, counts = analysis.classes, analysis.counts()
    slug = re.sub(r"[^a-z0-9]+", "-", errors.label.lower()).strip("-")
    rows, reveals = [], []
    for i, row in enumerate(analysis.confusion):
        cells = []
        for j, rate in enumerate(row):
            if i == j:
                cells.append(f"{rate:.3f}")
            elif counts[i, j]:
                target = f"cm-{slug}-{i}-{j}"
                cells.append(Link(f"{rate:.3f} ({counts[i, j]})", target))
                digits = [m.index for m in analysis.misclassified if m.true == i and m.predicted == j]
                digit_word = "digit" if counts[i, j] == 1 else "digits"
                title = f"{errors.label}: {counts[i, j]} test {digit_word} of class {classes[i]} read as {classes[j]}"
                shown = [errors.images[k] for k in digits[:STRIP]]
                reveals.append(Reveal(target, [Paragraph(title), InlineImage(digit_strip(shown), title)]))
            else:
                cells.append("")
        rows.append([classes[i], *cells])
    return [
        Paragraph("Confusion matrix, normalised per true class (rows), with counts: follow a cell to its digits."),
        Table(["true \\ predicted", *classes], rows),
        *reveals,
    ]
