"""Writing run folders: every file of a run, built beside its folder and renamed into place whole, and the
aggregate of a multi-seed folder. `folder.RunFolder` names the files."""

import os
import shutil
from dataclasses import asdict
from pathlib import Path

from safetensors.numpy import save_file

from mnistlab.data import SPLITS, Dataset, size_label
from mnistlab.errors import MnistlabError
from mnistlab.evaluation import figures
from mnistlab.evaluation.analysis import Analysis, analyse, error_images
from mnistlab.evaluation.statistics import summarise
from mnistlab.files import json_text, temporary_sibling, write_atomic
from mnistlab.nn import weights
from mnistlab.nn.mlp import probabilities
from mnistlab.nn.summary import summary
from mnistlab.records import PRUNED_SPLITS, Fit, History, Metrics, PrunedRun, RunResult
from mnistlab.spec import Architecture, Experiment
from mnistlab.spec.config import to_toml
from mnistlab.studies import ownership
from mnistlab.studies.folder import RunFolder, SeedRun


def write_run(
    folder: RunFolder,
    experiment: Experiment,
    result: RunResult,
    arch: Architecture,
    dataset: Dataset,
    environment: dict,
    stack_size: int,
) -> Metrics:
    """Every file of one run, built beside `folder` and renamed into place whole: a full disk or an
    interrupt leaves the folder as it was, and no part of the new one."""

    def fill(building: RunFolder) -> Metrics:
        _described_run(building, experiment, result, arch, environment)
        described = {
            "preset": experiment.name,
            "seed": experiment.seed,
            "dataset": dataset.name,
            "classes": list(dataset.classes),
        }
        weights.save(building.file(RunFolder.WEIGHTS), result.weights, arch, described)
        model = {"architecture": asdict(arch), **described}
        building.file(RunFolder.MODEL).write_text(json_text(model))
        analysis = write_analysis(building, result, arch, dataset, f"{experiment.name} (seed {experiment.seed})")
        metrics = Metrics.of(
            result,
            preset=experiment.name,
            seed=experiment.seed,
            dataset=dataset.name,
            parameters=arch.num_params,
            split_sizes=dataset.split_sizes(),
            misclassified=len(analysis.misclassified),
            stack_size=stack_size,
        )
        building.file(RunFolder.METRICS).write_text(json_text(metrics.to_json()))
        return metrics

    return _built(folder, fill)


def write_pruned(
    folder: RunFolder,
    experiment: Experiment,
    result: RunResult,
    arch: Architecture,
    dataset: Dataset,
    environment: dict,
    pruner: str,
) -> PrunedRun:
    """The folder of a run that a search's pruner stopped: what it trained, and why it stopped."""
    pruned = PrunedRun(
        preset=experiment.name,
        seed=experiment.seed,
        dataset=dataset.name,
        epoch=result.phase1.epochs,
        reason=result.phase1.pruned or "",
        pruner=pruner,
        scores={split: result.scores[split] for split in PRUNED_SPLITS},
        wall_seconds=result.seconds,
    )

    def fill(building: RunFolder) -> PrunedRun:
        _described_run(building, experiment, result, arch, environment)
        building.file(RunFolder.PRUNED).write_text(json_text(pruned.to_json()))
        return pruned

    return _built(folder, fill)


def _described_run(building: RunFolder, experiment: Experiment, result: RunResult, arch, environment) -> None:
    """The files every run folder has: whose it is, its config, history, model summary and environment."""
    config = to_toml(experiment)
    building.file(RunFolder.MARKER).write_text(ownership.marker("run", config))
    building.file(RunFolder.CONFIG).write_text(config)
    building.file(RunFolder.HISTORY).write_text(History.of(result).to_csv())
    building.file(RunFolder.SUMMARY).write_text(summary(arch, experiment.hyperparameters))
    building.file(RunFolder.ENVIRONMENT).write_text(json_text(environment))


def _built(folder: RunFolder, fill):
    """`fill(building)` on a fresh folder beside `folder`, renamed into place when it returns."""
    try:
        folder.path.parent.mkdir(parents=True, exist_ok=True)
        building = RunFolder(temporary_sibling(folder.path, "building"))
        building.path.mkdir()
        try:
            written = fill(building)
            _swap_into_place(building.path, folder.path)
        finally:
            shutil.rmtree(building.path, ignore_errors=True)
        return written
    except OSError as exc:
        raise MnistlabError(f"{folder.path}: could not write the run ({exc.strerror or exc})") from None
    except ValueError as exc:  # a number that is not finite: no file that cannot be read back
        raise MnistlabError(f"{folder.path}: not written: {exc}") from None


def write_analysis(folder: RunFolder, result: RunResult, arch: Architecture, dataset: Dataset, title: str) -> Analysis:
    """The error analysis of the phase-2 model and the report's figures for one run."""
    test_x, test_y = dataset.split("test")
    sizes = dataset.split_sizes()
    read = probabilities(result.weights.cpu(), arch, test_x).numpy()
    analysis = analyse(read, test_y.numpy(), list(dataset.classes))
    folder.file(RunFolder.ANALYSIS).write_text(json_text(analysis.to_dict(), indent=1))
    errors = error_images(analysis, test_x.numpy(), dataset.image_shape)
    save_file(errors, folder.file(RunFolder.ERROR_IMAGES))
    figures.save(
        figures.validation_curves(
            [result.phase1.history], f"{title}: training on {size_label(sizes['train'])}", curve_marks(result.phase1)
        ),
        folder.file(RunFolder.VALIDATION_CURVES),
    )
    figures.save(
        figures.retraining_curve([result.phase2.history], f"{title}: retraining on {size_label(sizes['full'])}"),
        folder.file(RunFolder.RETRAINING_CURVE),
    )
    grid = figures.misclassified_grid(
        dict(zip(errors["indices"].tolist(), errors["images"], strict=True)),
        analysis.misclassified,
        analysis.classes,
        f"{title}: the first 9 misclassified test images",
    )
    folder.file(RunFolder.MISCLASSIFIED).write_bytes(grid)
    figures.save(
        figures.per_class_bars(analysis.per_class, f"{title}: per-class scores on the test set"),
        folder.file(RunFolder.PER_CLASS),
    )
    figures.save(
        figures.confusion_heatmap(
            analysis.confusion, analysis.classes, f"{title}: confusion matrix, normalised per true class"
        ),
        folder.file(RunFolder.CONFUSION),
    )
    return analysis


def curve_marks(phase1: Fit) -> dict[str, float]:
    """The epochs the validation curves mark: lowest validation loss, restored weights, early stop."""
    losses = [e.eval_loss for e in phase1.history]
    marks = {"lowest validation loss": 1 + losses.index(min(losses))}
    if phase1.restored_best:
        marks["restored best epoch"] = phase1.best_epoch
    if phase1.stopped_early:
        marks["early stop"] = phase1.epochs
    return marks


def _swap_into_place(building: Path, target: Path) -> None:
    old = temporary_sibling(target, "old")
    if target.exists():
        os.replace(target, old)
    os.replace(building, target)
    shutil.rmtree(old, ignore_errors=True)


def write_aggregate(parent: RunFolder) -> dict:
    """aggregate.json and banded curves for the seeds in `parent`: mean, std and 95% interval of every metric."""
    runs = [SeedRun.load(f) for f in parent.seeds()]
    first = runs[0].metrics
    aggregate = {
        "preset": first.preset,
        "dataset": first.dataset,
        "parameters": first.parameters,
        "seeds": [r.seed for r in runs],
        **{
            split: {
                key: asdict(summarise([getattr(r.metrics.scores[split], key) for r in runs]))
                for key in ("loss", "accuracy")
            }
            for split in SPLITS
        },
        "epochs": {phase: asdict(summarise([r.metrics.epochs[phase] for r in runs])) for phase in ("phase1", "phase2")},
        "wall_seconds": asdict(summarise([r.metrics.wall_seconds for r in runs])),
    }
    name = f"{first.preset} ({len(runs)} seeds)"
    curves = (
        (figures.validation_curves, "phase1", RunFolder.VALIDATION_CURVES, "training on", "train"),
        (figures.retraining_curve, "phase2", RunFolder.RETRAINING_CURVE, "retraining on", "full"),
    )
    for draw, phase, file, doing, split in curves:
        title = f"{name}: {doing} {size_label(first.split_sizes[split])}, mean and one standard deviation"
        figures.save(draw([getattr(r.history, phase) for r in runs], title), parent.file(file))
    write_atomic(parent.file(RunFolder.AGGREGATE), json_text(aggregate))
    return aggregate
