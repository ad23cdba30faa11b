"""Run folders: train a plan of (experiment, folder) entries and write what each run produced.

Entries that can share a stack (same data, architecture and batch size; see
`Experiment.lockstep_key`) train together in lockstep, and entries that differ only in name (the
report's final model is its dropout model) train once. Each run folder holds:

    config.toml       the resolved config; `mnistlab run config.toml` runs it again
    history.csv       per epoch of both phases: running training loss/accuracy, clean eval loss/accuracy
    metrics.json      clean loss and accuracy for train, validation, full and test; epochs; a stable contract
    model.safetensors the phase-2 model, with model.json describing it
    summary.txt       the model as Keras' model.summary() shows it
    environment.json  versions, device, threads, seed, wall time
    analysis.json     the phase-2 model's errors on the test set: misclassified images, confused pairs,
                      per-class precision/recall/F1, normalised confusion matrix
    *.png             validation_curves, retraining_curve, misclassified, per_class, confusion

Runs of several seeds of one experiment live in seed-K folders below a common folder, which also
gets aggregate.json (every metric's mean, standard deviation and 95% interval over the seeds) and the
curves drawn as a mean with a band.

A folder is built beside its target and renamed into place when complete, so a folder with a
metrics.json is a finished run and an interrupted one leaves nothing behind.
"""

import csv
import io
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mnistlab import __version__, data, evaluation, figures, model
from mnistlab.config import Experiment, to_toml
from mnistlab.engine import Engine
from mnistlab.files import temporary_sibling, write_atomic
from mnistlab.train import Result, train_protocol

METRICS = "metrics.json"
AGGREGATE = "aggregate.json"
SEED_PREFIX = "seed-"


@dataclass(frozen=True)
class Entry:
    experiment: Experiment  # its seed is the run's seed
    folder: Path


def is_finished(folder: Path) -> bool:
    return (Path(folder) / METRICS).is_file()


def execute(
    entries: list[Entry], engine: Engine, data_dir: Path | None = None, identify: bool = False, log=print
) -> None:
    """Train every entry, stacking those that can share a stack, and write their folders.

    `data_dir` is where the data sets are; with `identify` its files say which data set they are
    (see `data.load`), rather than the experiments' `dataset` key.
    """
    twins: dict[tuple, list[Entry]] = {}  # training key -> the entries that one training serves
    for entry in entries:
        twins.setdefault(entry.experiment.training_key(), []).append(entry)
    for same in twins.values():
        if len(same) > 1:
            log(f"{_names(same[1:])}: the same training as {_names(same[:1])}, trained once")
    datasets: dict[tuple, data.Dataset] = {}
    for group in stacks([same[0] for same in twins.values()], engine.device):
        first = group[0].experiment
        source = (first.dataset, first.validation_size)
        if source not in datasets:
            datasets[source] = data.load(
                None if identify else first.dataset,
                data_dir,
                validation_size=first.validation_size,
                progress=engine.progress,
            )
        dataset = datasets[source]
        log(f"training {len(group)} in lockstep on {dataset.name} ({engine.device}): {_names(group)}")
        arch = first.architecture(inputs=dataset.train_images.shape[1])
        members = [e.experiment.member() for e in group]
        label = first.name if len(group) == 1 else f"{len(group)} models"
        started = time.time()
        results = train_protocol(arch, members, dataset, first.batch_size, replace(engine, label=label))
        for trained, result in zip(group, results, strict=True):
            for entry in twins[trained.experiment.training_key()]:
                write_run(entry, result, arch, dataset, engine, started, len(group))
                log(f"  {entry.folder}: test accuracy {result.metrics['test']['accuracy']:.4f}")
    for parent in dict.fromkeys(e.folder.parent for e in entries if e.folder.name.startswith(SEED_PREFIX)):
        write_aggregate(parent)


def _names(entries: list[Entry]) -> str:
    return ", ".join(f"{e.experiment.name} (seed {e.experiment.seed})" for e in entries)


# How many rows one lockstep step should process, members x batch size. Stacking amortises the per-step
# cost of small batches; past the point where the stack's weights and Adam state leave the CPU's cache,
# it costs more than it saves, and where that is depends on the CPU. Seconds per model-epoch of the final
# model at batch 32 on 2 cores, by stack size:
#   AMD EPYC:              1: 0.45, 2: 0.32, 4: 0.26, 7: 0.26, 10: 0.30, 14: 0.31, 35: 0.32
#   Intel Xeon (AMX), now: 1: 0.59, 2: 0.48, 4: 0.38, 7: 0.37, 12: 0.32, 16: 0.31, 30: 0.37
# 512 rows (16 members at batch 32) is what the machine this is tuned on wants. A GPU wants far more.
STACK_ROWS = {"cpu": 512, "cuda": 8192}


def stacks(entries: list[Entry], device) -> list[list[Entry]]:
    """Entries grouped into lockstep stacks: same lockstep key, balanced sizes within the row budget."""
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.experiment.lockstep_key(), []).append(entry)
    result = []
    for group in groups.values():
        group.sort(key=lambda e: e.experiment.seed)  # stable: a stack holds whole seeds of the study
        batch = group[0].experiment.batch_size
        limit = max(1, STACK_ROWS[device.type] // batch) if batch else 1  # a full batch needs no stacking
        count = -(-len(group) // limit)
        size = -(-len(group) // count)
        result += [group[i : i + size] for i in range(0, len(group), size)]
    return result


def write_run(
    entry: Entry,
    result: Result,
    arch: model.Architecture,
    dataset: data.Dataset,
    engine: Engine,
    started: float,
    stack: int,
) -> None:
    experiment = entry.experiment
    target = Path(entry.folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = temporary_sibling(target, "building")
    building.mkdir()
    try:
        (building / "config.toml").write_text(to_toml(experiment))
        (building / "history.csv").write_text(history_csv(result))
        (building / "summary.txt").write_text(model.summary(arch, experiment.input_dropout, experiment.dropout))
        described = {
            "preset": experiment.name,
            "seed": experiment.seed,
            "dataset": dataset.name,
            "classes": list(dataset.classes),
        }
        model.save(building / "model.safetensors", result.phase2.params, arch, described)
        (building / "model.json").write_text(json.dumps({"architecture": vars(arch), **described}, indent=2) + "\n")
        environment = _environment(engine, experiment.seed, result.seconds, started, stack)
        (building / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
        metrics = {
            "preset": experiment.name,
            "seed": experiment.seed,
            "dataset": dataset.name,
            "parameters": arch.num_params,
            **result.metrics,
            "wall_seconds": result.seconds,
            "lockstep_size": stack,
        }
        analysis = write_analysis(building, result, arch, dataset, f"{experiment.name} (seed {experiment.seed})")
        metrics["test"]["misclassified"] = len(analysis.misclassified)
        (building / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        _swap_into_place(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def write_analysis(folder: Path, result: Result, arch: model.Architecture, dataset: data.Dataset, title: str):
    """The error analysis of the phase-2 model and the report's figures for one run."""
    test_x, test_y = dataset.split("test")
    probabilities = evaluation.predict(result.phase2.params.cpu(), arch, test_x)
    analysis = evaluation.analyse(probabilities, test_y, list(dataset.classes))
    (folder / "analysis.json").write_text(json.dumps(analysis.to_dict(), indent=1) + "\n")
    history = read_history(folder)  # the curves are drawn from the file, as for several seeds
    figures.validation_curves(
        [phase_columns(history, 1)], folder / "validation_curves.png", f"{title}: training on 50k", curve_marks(result)
    )
    figures.retraining_curve(
        [phase_columns(history, 2)], folder / "retraining_curve.png", f"{title}: retraining on 60k"
    )
    figures.misclassified_grid(
        test_x.numpy(),
        analysis.misclassified,
        analysis.classes,
        folder / "misclassified.png",
        f"{title}: the first 9 misclassified test images",
    )
    figures.per_class_bars(analysis.per_class, folder / "per_class.png", f"{title}: per-class scores on the test set")
    figures.confusion_heatmap(
        analysis.confusion,
        analysis.classes,
        folder / "confusion.png",
        f"{title}: confusion matrix, normalised per true class",
    )
    return analysis


def curve_marks(result: Result) -> dict[str, float]:
    """The epochs the validation curves mark: lowest validation loss, restored weights, early stop."""
    losses = [e.eval_loss for e in result.phase1.history]
    marks = {"lowest validation loss": 1 + losses.index(min(losses))}
    stopping = result.metrics["early_stopping"]
    if stopping["restored_best_weights"]:
        marks["restored best epoch"] = stopping["best_epoch"]
    if stopping["stopped_early"]:
        marks["early stop"] = result.phase1.epochs
    return marks


def _swap_into_place(building: Path, target: Path) -> None:
    old = temporary_sibling(target, "old")
    if target.exists():
        os.replace(target, old)
    os.replace(building, target)
    shutil.rmtree(old, ignore_errors=True)


HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "eval_split", "eval_loss", "eval_accuracy", "seconds")


def history_csv(result: Result) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for phase, fit, split in ((1, result.phase1, "validation"), (2, result.phase2, "test")):
        for e in fit.history:
            writer.writerow(
                (
                    phase,
                    e.epoch,
                    f"{e.loss:.6g}",
                    f"{e.accuracy:.6g}",
                    split,
                    f"{e.eval_loss:.6g}",
                    f"{e.eval_accuracy:.6g}",
                    f"{e.seconds:.4f}",
                )
            )
    return out.getvalue()


def read_history(folder: Path) -> list[dict]:
    with open(Path(folder) / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    numeric = set(HISTORY_COLUMNS) - {"eval_split"}
    return [{k: (float(v) if k in numeric else v) for k, v in row.items()} for row in rows]


def read_metrics(folder: Path) -> dict:
    return json.loads((Path(folder) / METRICS).read_text())


def seed_folders(parent: Path) -> list[Path]:
    """The finished seed-K runs below a multi-seed folder, by seed."""
    found = [p for p in Path(parent).glob(f"{SEED_PREFIX}*") if is_finished(p)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(SEED_PREFIX)))


def write_aggregate(parent: Path) -> dict:
    """aggregate.json and banded curves for the seeds in `parent`: mean, std and 95% interval of every metric."""
    folders = seed_folders(parent)
    metrics = [read_metrics(f) for f in folders]
    aggregate = {
        "preset": metrics[0]["preset"],
        "dataset": metrics[0]["dataset"],
        "parameters": metrics[0]["parameters"],
        "seeds": [m["seed"] for m in metrics],
        **{
            split: {key: evaluation.summarise([m[split][key] for m in metrics]) for key in ("loss", "accuracy")}
            for split in data.SPLITS
        },
        "epochs": {
            phase: evaluation.summarise([m["epochs"][phase] for m in metrics]) for phase in ("phase1", "phase2")
        },
        "wall_seconds": evaluation.summarise([m["wall_seconds"] for m in metrics]),
    }
    histories = [read_history(f) for f in folders]
    name = f"{aggregate['preset']} ({len(folders)} seeds)"
    figures.validation_curves(
        [phase_columns(h, 1) for h in histories],
        parent / "validation_curves.png",
        f"{name}: training on 50k, mean and one standard deviation",
    )
    figures.retraining_curve(
        [phase_columns(h, 2) for h in histories],
        parent / "retraining_curve.png",
        f"{name}: retraining on 60k, mean and one standard deviation",
    )
    write_atomic(parent / AGGREGATE, json.dumps(aggregate, indent=2) + "\n")
    return aggregate


def phase_columns(history: list[dict], phase: int) -> dict[str, list[float]]:
    """One phase of a history read from history.csv, as lists per column, as the figures take it."""
    rows = [row for row in history if row["phase"] == phase]
    return {key: [row[key] for row in rows] for key in ("loss", "accuracy", "eval_loss", "eval_accuracy")}


def _environment(engine: Engine, seed: int, seconds: float, started: float, stack: int) -> dict:
    device = engine.device
    return {
        "mnistlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "compiled": engine.compile,
        "precision": engine.precision,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(seconds, 3),
        "lockstep_size": stack,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
