"""A sweep's section of the report: its validation curve (or, over two axes, a heat map of validation
error), and a sentence that tests the lab report's claim against the curve. A search over two or more
parameters gets their importance and its trials in parallel coordinates instead (`evaluation.search`),
and a pruned search counts its pruned trials and draws them apart.

Reading the curve. The best point has the lowest mean validation loss (never the test set's). Seed noise
is each point's 95% interval of mean validation loss: points whose interval overlaps the best's are
"within seed noise" of it. A point has high bias where its training loss is more than a quarter above
the best point's validation loss (it fits the training set clearly worse than the best model
generalises), and high variance where
its validation loss exceeds its training loss, by more than twice the best point's gap, and lies above
the best's interval.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from mnistlab.evaluation import figures, search
from mnistlab.evaluation.statistics import Summary, summarise
from mnistlab.reporting.document import Heading, Image, Paragraph, Table
from mnistlab.studies import ownership
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.sweep_folder import RECORD, read_rows


def is_sweep(folder: Path) -> bool:
    found = ownership.read_marker(folder) if (folder / RECORD).is_file() else None
    return found is not None and found["kind"] == "sweep"


@dataclass(frozen=True)
class PointSummary:
    """A point of the sweep over its seeds."""

    label: str  # its folder
    settings: dict  # config key -> value
    seeds: int
    train_loss: Summary
    validation_loss: Summary
    train_error: Summary
    validation_error: Summary

    @property
    def gap(self) -> float:
        return self.validation_loss.mean - self.train_loss.mean

    def interval(self) -> tuple[float, float]:
        loss = self.validation_loss
        return (loss.low, loss.high) if loss.low is not None else (loss.mean, loss.mean)


@dataclass(frozen=True)
class PrunedPoint:
    """A point whose runs its search's pruner stopped: the mean of its seeds' last validation loss."""

    label: str
    settings: dict
    epoch: int  # the epoch its runs were stopped after
    validation_loss: float


@dataclass(frozen=True)
class SweepSummary:
    """A sweep folder, read: its record, its points with finished runs, the pruned ones, and the points
    with neither (not trained yet, or their folders gone)."""

    record: dict
    points: list[PointSummary]
    pruned: list[PrunedPoint]
    missing: list[str]

    @property
    def is_search(self) -> bool:
        return self.record.get("search", {}).get("method", "grid") != "grid"

    def trials(self) -> list[search.SearchTrial]:
        """Every trained point as a trial of a search, in the record's order."""
        trained = [(p.settings, p.validation_loss.mean, False) for p in self.points]
        trained += [(p.settings, p.validation_loss, True) for p in self.pruned]
        return [search.SearchTrial(*trial) for trial in trained]

    def varying(self) -> list[search.Parameter]:
        drawn = self.record.get("search", {}).get("log_uniform")
        return search.varying(self.trials(), drawn) if self.points or self.pruned else []


@dataclass(frozen=True)
class Reading:
    best: PointSummary
    within_noise: list[PointSummary]
    high_bias: list[PointSummary]
    high_variance: list[PointSummary]


def datasets(folder: Path) -> set[str]:
    """The data sets the sweep's finished runs trained on."""
    return {row.dataset for row in read_rows(folder)[1]}


def summarise_points(folder: Path) -> SweepSummary:
    """The sweep's record, a summary per point trained and per point pruned, in the record's order, and
    the points that have no finished run."""
    record, rows = read_rows(folder)
    points, pruned, missing = [], [], []
    for entry in record["points"]:
        mine = [r for r in rows if r.point == entry["folder"]]
        if not mine:
            missing.append(entry["folder"])
            continue
        if any(r.pruned for r in mine):
            loss = sum(r.scores["validation"][0] for r in mine) / len(mine)
            pruned.append(PrunedPoint(entry["folder"], mine[0].settings, min(r.epochs for r in mine), loss))
            continue

        def over_seeds(split: str, error: bool, mine=mine) -> Summary:
            return summarise([1 - r.scores[split][1] if error else r.scores[split][0] for r in mine])

        points.append(
            PointSummary(
                entry["folder"],
                mine[0].settings,
                len(mine),
                over_seeds("train", False),
                over_seeds("validation", False),
                over_seeds("train", True),
                over_seeds("validation", True),
            )
        )
    return SweepSummary(record, points, pruned, missing)


def read_curve(points: list[PointSummary]) -> Reading:
    best = min(points, key=lambda p: p.validation_loss.mean)
    low, high = best.interval()
    within = [p for p in points if p.interval()[0] <= high and p.interval()[1] >= low]
    bias = [p for p in points if p.train_loss.mean > 1.25 * best.validation_loss.mean]
    # A point below its training loss on validation (short runs, dropout) is no case of high variance,
    # however the best point's gap compares.
    variance = [p for p in points if p.gap > max(0.0, 2 * best.gap) and p.interval()[0] > high and p not in bias]
    return Reading(best, within, bias, variance)


def x_value(value):
    """A setting as a number on the curve's axis: a one-width `hidden` is its width."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def sentence(record: dict, points: list[PointSummary], reading: Reading) -> str:
    """What the curve says, in the terms of the lab's claim."""
    key = record["axes"][0][0]
    name = key.rpartition(".")[2]

    def values(group: list[PointSummary]) -> str:
        shown = [_show(x_value(p.settings[key])) for p in group]
        return shown[0] if len(shown) == 1 else f"{shown[0]} to {shown[-1]}"

    best = reading.best
    parts = [
        f"The lowest validation loss is at {name} = {_show(x_value(best.settings[key]))} "
        f"({best.validation_loss.mean:.4f}, validation error {best.validation_error.mean:.2%})"
    ]
    if best.seeds < 2:
        parts.append("with one seed, seed noise is unknown: run with --seeds 3 or more to tell points apart")
    elif len(reading.within_noise) > 1:
        parts.append(f"{name} from {values(reading.within_noise)} is within seed noise of it")
    if reading.high_bias:
        parts.append(
            f"at {values(reading.high_bias)} training loss is well above that best validation loss and close to "
            "its own validation loss: high bias"
        )
    if reading.high_variance:
        parts.append(
            f"at {values(reading.high_variance)} validation loss exceeds training loss by more than twice the "
            "best point's gap: high variance"
        )
    text = "; ".join(parts) + "."
    lab = record["lab"].get(key) or next(iter(record["lab"].values()), None)
    if lab:
        verdicts = []
        for value in lab:
            point = next((p for p in points if x_value(p.settings[key]) == value), None)
            if point is not None:
                verdicts.append(f"{_show(value)}: {_where(point, reading)}")
        if verdicts:
            text += " The report's values: " + "; ".join(verdicts) + "."
    return text


def _where(point: PointSummary, reading: Reading) -> str:
    if point is reading.best:
        return "the best point"
    if point in reading.high_bias:
        return "high bias"
    if point in reading.high_variance:
        return "high variance"
    if point in reading.within_noise and point.seeds > 1:
        return "within seed noise of the best"
    return f"validation loss {point.validation_loss.mean:.4f}, above the best"


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def section(folder: Path, figure_path: Path) -> list:
    """The report's blocks for the sweep in `folder`; its figure is drawn to `figure_path`."""
    summary = summarise_points(folder)
    record, points, missing = summary.record, summary.points, summary.missing
    title = f"Sweep: {record['name']}"
    if missing:
        warnings.warn(
            f"{folder}: {len(missing)} of {len(record['points'])} points have no finished run ({_listed(missing)})",
            stacklevel=3,
        )
    if not points:
        return [Heading(2, title), Paragraph(f"{folder}: no point has finished yet."), *_pruned_blocks(summary)]
    blocks = [Heading(2, title), Paragraph(record["description"])]
    if missing:
        blocks.append(
            Paragraph(
                f"{len(missing)} of the sweep's {len(record['points'])} points have no finished run in {folder} "
                f"({_listed(missing)}): they are left out of the curve and the table below. Run the sweep again "
                "to train them."
            )
        )
    if record["claim"]:
        blocks.append(Paragraph(f"The lab report: \u201c{record['claim']}\u201d"))
    blocks += _pruned_blocks(summary)
    keys = [key for axis in record["axes"] for key in axis]
    figures.save(figure(summary), figure_path)
    if summary.is_search and len(summary.varying()) >= 2:
        blocks += _search_blocks(folder, summary, figure_path)
    elif len(record["axes"]) == 2:
        best = min(points, key=lambda p: p.validation_loss.mean)
        settings = ", ".join(f"{k.rpartition('.')[2]} = {_show(x_value(best.settings[k]))}" for k in keys)
        found = f"The lowest validation loss is at {settings} ({best.validation_loss.mean:.4f})."
        blocks += [Image(figure_path, f"heat map of validation error, {record['name']}"), Paragraph(found)]
    else:
        blocks += [
            Image(figure_path, f"validation curve, {record['name']}"),
            Paragraph(sentence(record, points, read_curve(points))),
        ]
    header = [*(k.rpartition(".")[2] for k in keys), "seeds", "train loss", "validation loss", "validation error"]
    shown = sorted(points, key=lambda p: p.validation_loss.mean)[:SEARCH_ROWS] if summary.is_search else points
    rows = [[*(_show(x_value(p.settings[k])) for k in keys), *_numbers(p)] for p in shown]
    if len(shown) < len(points):
        blocks.append(Paragraph(f"The best {len(shown)} of {len(points)} completed points, by validation loss:"))
    return [*blocks, Table(header, rows), Paragraph(f"Every run: {folder / 'sweep.csv'}.")]


SEARCH_ROWS = 10  # a search's table shows its best points; sweep.csv has every run


def _pruned_blocks(summary: SweepSummary) -> list:
    """How many of a pruned search's trials its pruner stopped, and after which epochs."""
    if not summary.pruned:
        return []
    after: dict[int, int] = {}
    for point in summary.pruned:
        after[point.epoch] = after.get(point.epoch, 0) + 1
    when = ", ".join(f"{count} after epoch {epoch}" for epoch, count in sorted(after.items()))
    pruner = summary.record.get("search", {}).get("pruner") or "its pruner"
    total = len(summary.points) + len(summary.pruned)
    return [
        Paragraph(
            f"The pruner, {pruner}, stopped {len(summary.pruned)} of the {total} points trained ({when}). A pruned "
            "point has no retraining, no test score and no model; it is drawn apart (grey, dashed) at the validation "
            "loss it was stopped with, and left out of the table and of the importance below. Why each was "
            "stopped: pruned.json in its folder."
        )
    ]


def _search_blocks(folder: Path, summary: SweepSummary, figure_path: Path) -> list:
    """A search's parallel coordinates and, with enough trials (`importance`), its parameters' importance."""
    name = summary.record["name"]
    blocks = [
        Image(figure_path, f"parallel coordinates, {name}"),
        Paragraph(
            "Each line is a point of the search, across one axis per parameter that varied (a log axis where its "
            f"values span a factor of {search.LOG_SPAN} or more) and its mean validation loss; the best tenth of "
            "the completed points is bold, coloured from the best (dark) on."
        ),
    ]
    found = importance(folder, summary)
    if found is None:
        return [
            *blocks,
            Paragraph(
                f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} completed points; this search has "
                f"{len(summary.points)}."
            ),
        ]
    fitted, early = "the completed points' validation loss (pruned points are left out)", ""
    if found.epoch is not None:
        fitted = f"every point's mean validation loss after epoch {found.epoch}, which all of them reached"
        early = (
            f"Only {len(summary.points)} points completed, too few for their final loss: this says what mattered "
            "early, which need not be what does best in the end. "
        )
    method = (
        "Parameter importance by fANOVA (Optuna's FanovaImportanceEvaluator, seed 0): a random forest fitted to "
        f"{fitted}, whose variance it splits among the parameters. {early}"
    )
    rows = [[key, f"{share:.0%}"] for key, share in found.shares]
    table = Table(["parameter", "share of the variance of validation loss"], rows)
    return [*blocks, Paragraph(method + search.CAVEATS.format(trials=found.trials)), table]


MIN_IMPORTANCE_TRIALS = 8


@dataclass(frozen=True)
class Importance:
    """Each parameter's share of the variance of validation loss, and what it was fitted to."""

    shares: list[tuple[str, float]]  # (config key, share), largest first
    trials: int
    epoch: int | None  # None: the completed points' final loss; else every point's loss after that epoch


def importance(folder: Path, summary: SweepSummary) -> Importance | None:
    """fANOVA over the completed points, with MIN_IMPORTANCE_TRIALS of them; else, in a pruned search,
    over every point at the first epoch all of them reached (its pruner's first rung); else None."""
    parameters = summary.varying()
    if len(summary.points) >= MIN_IMPORTANCE_TRIALS:
        return Importance(search.importance(parameters, summary.trials()), len(summary.points), None)
    points = [*summary.points, *summary.pruned]
    if not summary.pruned or len(points) < MIN_IMPORTANCE_TRIALS:
        return None
    histories = [[run.read_history().phase1 for run in RunFolder(folder / p.label).trained_runs()] for p in points]
    epoch = min(len(history) for seeds in histories for history in seeds)
    trials = [
        search.SearchTrial(point.settings, fmean(history[epoch - 1].eval_loss for history in seeds), False)
        for point, seeds in zip(points, histories, strict=True)
    ]
    return Importance(search.importance(parameters, trials), len(trials), epoch)


def figure(summary: SweepSummary):
    """The sweep's figure: its validation curve, over two axes of a grid a heat map of validation error, and
    for a search over two or more parameters its parallel coordinates."""
    record, points = summary.record, summary.points
    if summary.is_search and len(summary.varying()) >= 2:
        return search.parallel_coordinates(summary.varying(), summary.trials(), f"{record['name']}: the search")
    if len(record["axes"]) == 2:
        return figures.sweep_heatmap(_grid(record, points), f"{record['name']}: validation error")
    reading = read_curve(points)
    return figures.sweep_curve(_curve(record, summary, reading), f"{record['name']}: validation curve")


def _listed(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _numbers(point: PointSummary) -> list[str]:
    """A point's row of the table, after its settings: seeds, train loss, validation loss and error."""
    loss, error = point.validation_loss, point.validation_error
    return [str(point.seeds), f"{point.train_loss.mean:.4f}", _with_interval(loss), f"{error.mean:.2%}"]


def _with_interval(summary: Summary) -> str:
    if summary.low is None:
        return f"{summary.mean:.4f}"
    return f"{summary.mean:.4f} ({summary.low:.4f}-{summary.high:.4f})"


def _curve(record: dict, summary: SweepSummary, reading: Reading) -> figures.SweepCurve:
    key = record["axes"][0][0]
    points = summary.points
    if all(isinstance(x_value(p.settings[key]), int | float) for p in points):  # a search draws in no order
        points = sorted(points, key=lambda p: x_value(p.settings[key]))
    return figures.SweepCurve(
        name=key.rpartition(".")[2],
        x=[x_value(p.settings[key]) for p in points],
        curves={
            "loss": (_band(p.train_loss for p in points), _band(p.validation_loss for p in points)),
            "error": (_band(p.train_error for p in points), _band(p.validation_error for p in points)),
        },
        best=points.index(reading.best),
        lab=[x_value(v) for v in record["lab"].get(key, next(iter(record["lab"].values()), []))],
        regions={region: [points.index(p) for p in found] for region, found in _regions(reading).items()},
        pruned=[(x_value(p.settings[key]), p.validation_loss) for p in summary.pruned],
    )


def _regions(reading: Reading) -> dict[str, list[PointSummary]]:
    return {"high bias": reading.high_bias, "high variance": reading.high_variance}


def _band(summaries) -> list[tuple[float, float | None, float | None]]:
    return [(s.mean, s.low, s.high) for s in summaries]


def _grid(record: dict, points: list[PointSummary]) -> figures.SweepGrid:
    first, second = record["axes"][0][0], record["axes"][1][0]
    rows = list(dict.fromkeys(json.dumps(p.settings[first]) for p in points))
    columns = list(dict.fromkeys(json.dumps(p.settings[second]) for p in points))
    values = [[None] * len(columns) for _ in rows]
    for p in points:
        row, column = rows.index(json.dumps(p.settings[first])), columns.index(json.dumps(p.settings[second]))
        values[row][column] = p.validation_error.mean
    labels = [[_show(x_value(json.loads(v))) for v in axis] for axis in (rows, columns)]
    return figures.SweepGrid(first.rpartition(".")[2], second.rpartition(".")[2], *labels, values)
