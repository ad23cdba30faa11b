"""What run, study and sweep give back, for a person at a notebook: trained experiments read from their
folders, with their numbers as attributes, their histories as tables, their figures, a card that
displays itself, and a digit reader.

    run = mnistlab.load_run("runs/final")
    run.test_accuracy, run.val_loss          # means over the seeds
    run.history                              # a pandas DataFrame, a row per seed, phase and epoch
    run.plot(); run.confusion(); run.errors()
    run.predict(["digit.png", array])        # as `mnistlab predict` reads them

Figures are matplotlib Figures, drawn without pyplot: a notebook shows them, `fig.savefig` writes them,
and nothing global (the backend) is touched.
"""

import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mnistlab.data import SPLITS
from mnistlab.errors import MnistlabError
from mnistlab.evaluation import figures
from mnistlab.extras import require
from mnistlab.reporting import lab, sweep_section
from mnistlab.reporting.experiments import ExperimentRuns, discover
from mnistlab.reporting.findings import cell, percent, verdict
from mnistlab.serving.images import read, to_mnist
from mnistlab.serving.prediction import Prediction
from mnistlab.spec import config

GRID_COLUMNS = 8  # digits across in `Run.errors`


def _mean(split: str, key: str):
    return property(lambda self: self.experiment.stat(split, key).mean, doc=f"mean {key} on {split} over seeds")


class Run:
    """One experiment, trained: a run folder of one seed, or a multi-seed folder of several."""

    def __init__(self, experiment: ExperimentRuns):
        self.experiment = experiment

    @classmethod
    def load(cls, folder: Path | str) -> "Run":
        found = discover([Path(folder)])
        if len(found) != 1:
            raise MnistlabError(f"{folder}: holds {len(found)} experiments; mnistlab.load_study reads them")
        return cls(found[0])

    name = property(lambda self: self.experiment.name, doc="the experiment (its preset or config file)")
    folder = property(lambda self: self.experiment.folder.path, doc="its run folder")
    seeds = property(lambda self: self.experiment.seeds, doc="how many seeds it trained")
    seed_runs = property(lambda self: self.experiment.runs, doc="each seed's run, with its metrics and history")
    train_accuracy, train_loss = _mean("train", "accuracy"), _mean("train", "loss")
    val_accuracy, val_loss = _mean("validation", "accuracy"), _mean("validation", "loss")
    full_accuracy, full_loss = _mean("full", "accuracy"), _mean("full", "loss")
    test_accuracy, test_loss = _mean("test", "accuracy"), _mean("test", "loss")

    @property
    def history(self):
        """Every epoch of both phases, a row per seed, phase and epoch (a pandas DataFrame): the running
        training loss and accuracy, and the clean loss and accuracy of the split evaluated (validation in
        phase 1, test in phase 2)."""
        require("Run.history", "pandas")
        import pandas as pd

        rows = [
            {"seed": run.seed, "phase": phase, **asdict(epoch), "eval_split": "validation" if phase == 1 else "test"}
            for run in self.seed_runs
            for phase, epochs in ((1, run.history.phase1), (2, run.history.phase2))
            for epoch in epochs
        ]
        return pd.DataFrame(rows)

    def plot(self) -> Figure:
        """The lab's validation curves: loss and accuracy per epoch of phase 1, training against validation
        (a mean with a band over several seeds)."""
        return figures.validation_curves([r.history.phase1 for r in self.seed_runs], f"{self.name}: validation curves")

    def confusion(self) -> Figure:
        """The first seed's confusion matrix on the test set, normalised per true class."""
        analysis = self.seed_runs[0].analysis()
        return figures.confusion_heatmap(analysis.confusion, analysis.classes, f"{self.name}: confusion matrix")

    def errors(self, count: int = 24) -> Figure:
        """The first seed's misclassified test digits (up to `count`), each with its true class, what the
        model read and how surely."""
        run = self.seed_runs[0]
        analysis, images = run.analysis(), run.folder.read_error_images()
        shown = analysis.misclassified[:count]
        rows = max(1, math.ceil(len(shown) / GRID_COLUMNS))
        fig = Figure(figsize=(GRID_COLUMNS * 1.3, 1.6 * rows), layout="constrained")
        for axis in fig.subplots(rows, GRID_COLUMNS, squeeze=False).flat:
            axis.axis("off")
        for axis, wrong in zip(fig.axes, shown, strict=False):
            axis.imshow(images[wrong.index], cmap="gray_r", vmin=0, vmax=255)
            true, read_as = analysis.classes[wrong.true], analysis.classes[wrong.predicted]
            axis.set_title(f"{true} read {read_as}\n{wrong.confidence:.0%}", fontsize=8)
        fig.suptitle(f"{self.name}: {len(analysis.misclassified)} misclassified test digits (seed {run.seed})")
        return fig

    def predict(self, images, top: int = 3) -> list[Prediction]:
        """Read digits, as `mnistlab predict` does: file paths, or arrays of any size (greyscale, floats in
        [0, 1] or uint8; a 3-D array is a batch), made into 28x28 digits as MNIST's were made. A multi-seed
        run's seeds vote."""
        prepared = [to_mnist(_grey(image)) for image in _each(images)]
        return self._reader.predict(prepared, top)

    @cached_property
    def _reader(self):
        from mnistlab.serving.predictor import Predictor  # torch, only when digits are read

        return Predictor(self.folder)

    def _repr_html_(self) -> str:
        e = self.experiment
        rows = "".join(
            f"<tr><td>{html.escape(split)}</td><td>{cell(e.stat(split, 'accuracy'), 'accuracy')}</td>"
            f"<td>{cell(e.stat(split, 'loss'), 'loss')}</td>{self._lab_cells(split)}</tr>"
            for split in SPLITS
        )
        reading = verdict(e.mean_score("train"), e.mean_score("validation"), [r.history.phase1 for r in e.runs], None)
        lab_head = "<th>the lab report</th>" if self._lab else ""
        return (
            f'<div class="mnistlab-run"><b>{html.escape(e.label)}</b>: {e.seeds} seed{"s" * (e.seeds > 1)}, '
            f"{e.parameters:,} parameters, {e.epochs('phase1'):g} + {e.epochs('phase2'):g} epochs, "
            f"{html.escape(str(self.folder))}<table><tr><th>split</th><th>accuracy</th><th>loss</th>{lab_head}</tr>"
            f"{rows}</table><p>{html.escape(reading)}</p>{self._lab_note()}</div>"
        )

    @cached_property
    def _lab(self) -> dict | None:
        """The lab report's numbers for this experiment, where it followed the lab's protocol."""
        entry = config.lab_report().get(self.name)
        mnist = self.experiment.runs[0].metrics.dataset == "mnist"
        return entry if mnist and entry and "train" in entry and not lab.protocol_difference(self.experiment) else None

    def _lab_cells(self, split: str) -> str:
        if not self._lab:
            return ""
        published = self._lab.get(split, {})
        shown = [
            percent(published["accuracy"]) if "accuracy" in published else "",
            f"{published['loss']:.4f}" if "loss" in published else "",
        ]
        return f"<td>{' / '.join(s for s in shown if s)}</td>"

    def _lab_note(self) -> str:
        differs = lab.protocol_difference(self.experiment) if self.name in config.study_presets() else None
        return f"<p>Not comparable with the lab report: {html.escape(differs)}.</p>" if differs else ""


class Study:
    """Every finished experiment of a study folder (or any folder of run folders)."""

    def __init__(self, folder: Path, experiments: list[ExperimentRuns]):
        self.folder, self.experiments = Path(folder), experiments

    @classmethod
    def load(cls, folder: Path | str) -> "Study":
        return cls(Path(folder), discover([Path(folder)]))

    @property
    def names(self) -> list[str]:
        return [e.label for e in self.experiments]

    def __getitem__(self, name: str) -> Run:
        found = [e for e in self.experiments if name in (e.label, e.name)]
        if len(found) != 1:
            raise KeyError(f"{name!r}: the experiments are {', '.join(self.names)}")
        return Run(found[0])

    def __iter__(self) -> Iterator[Run]:
        return (Run(e) for e in self.experiments)

    def __len__(self) -> int:
        return len(self.experiments)

    def table(self):
        """The report's results table as a pandas DataFrame, a row per experiment: seeds, parameters, epochs
        of each phase, the mean accuracy and loss of every split with the half-width of its 95% interval
        over seeds (NaN below two seeds), and the wall time."""
        require("Study.table", "pandas")
        import pandas as pd

        rows = []
        for e in self.experiments:
            row = {"experiment": e.label, "seeds": e.seeds, "parameters": e.parameters}
            row |= {"epochs_phase1": e.epochs("phase1"), "epochs_phase2": e.epochs("phase2")}
            for split in SPLITS:
                for key in ("accuracy", "loss"):
                    stat = e.stat(split, key)
                    row[f"{split}_{key}"] = stat.mean
                    row[f"{split}_{key}_half"] = (stat.high - stat.low) / 2 if stat.low is not None else np.nan
            rows.append(row | {"wall_seconds": e.wall_seconds})
        return pd.DataFrame(rows)

    def plot(self) -> Figure:
        """Test error per experiment with its 95% interval over seeds, beside the lab report's."""
        reference = config.lab_report()
        rows = [
            figures.AccuracyRow(
                e.label, e.stat("test", "accuracy"), Run(e)._lab and reference[e.name]["test"].get("accuracy")
            )
            for e in self.experiments
        ]
        return figures.accuracy_comparison(rows, "Test error per experiment")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(e.label)}</td><td>{e.seeds}</td>"
            + "".join(f"<td>{cell(e.stat(s, 'accuracy'), 'accuracy')}</td>" for s in SPLITS)
            + "</tr>"
            for e in self.experiments
        )
        head = "".join(f"<th>{s} accuracy</th>" for s in SPLITS)
        return (
            f'<div class="mnistlab-study"><b>{html.escape(str(self.folder))}</b>: {len(self)} experiments'
            f"<table><tr><th>experiment</th><th>seeds</th>{head}</tr>{rows}</table></div>"
        )


class SweepResults:
    """A sweep's folder: a run folder per point, and sweep.csv with a row per run."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        if not sweep_section.is_sweep(self.folder):
            raise MnistlabError(f"{self.folder}: not a sweep folder of mnistlab's")

    def table(self):
        """sweep.csv as a pandas DataFrame: a row per run, the axes' values, the seed, every split's loss
        and accuracy (train and validation only for a pruned run), the epochs, the wall time, and `pruned`."""
        require("SweepResults.table", "pandas")
        import pandas as pd

        return pd.read_csv(self.folder / "sweep.csv")

    def plot(self) -> Figure:
        """The sweep's validation curve (over two axes of a grid, a heat map of validation error; for a search
        over two or more parameters, its points in parallel coordinates)."""
        return sweep_section.figure(sweep_section.summarise_points(self.folder))

    def importance(self) -> list[tuple[str, float]]:
        """Each parameter that varied, with its share of the variance of validation loss, largest first, as
        the report computes it (fANOVA over the completed points; in a pruned search with too few of them,
        over every point's loss at the first epoch all reached)."""
        summary = sweep_section.summarise_points(self.folder)
        found = sweep_section.importance(self.folder, summary) if summary.varying() else None
        if found is None:
            raise MnistlabError(
                f"{self.folder}: importance needs a parameter that varied and "
                f"{sweep_section.MIN_IMPORTANCE_TRIALS} completed points (or points a pruner stopped)"
            )
        return found.shares

    def _repr_html_(self) -> str:
        summary = sweep_section.summarise_points(self.folder)
        record, points = summary.record, summary.points
        said = sweep_section.sentence(record, points, sweep_section.read_curve(points)) if points else "No point yet."
        pruned = f", {len(summary.pruned)} pruned" if summary.pruned else ""
        return f"<div><b>{html.escape(record['name'])}</b>: {len(points)} points{pruned}. {html.escape(said)}</div>"


def _each(images) -> list:
    """A picture, a path, a batch (a 3-D array) or a list of any of these, as a list of pictures or paths."""
    if isinstance(images, str | Path):
        return [images]
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        array = np.asarray(images)
        return [array] if array.ndim == 2 else list(array)
    if isinstance(images, Sequence):
        return [item for image in images for item in _each(image)]
    raise MnistlabError(f"cannot read digits from {type(images).__name__}: give paths or arrays")


def _grey(image) -> np.ndarray:
    """A path's picture, or an array, as greyscale floats in [0, 1]."""
    if isinstance(image, str | Path):
        return read(Path(image))
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise MnistlabError(f"a picture is a 2-D array of grey levels, not one of shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / 255.0
    if not np.isfinite(array).all():
        raise MnistlabError("a picture's grey levels must be finite numbers")
    return np.clip(array.astype(np.float32), 0, 1)
