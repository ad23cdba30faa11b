"""Carry out a plan: load each data set once, train every stack on an executor (this process, local
worker processes or a Dask cluster), write every run folder as its stack comes back, and aggregate the
seeds of multi-seed folders."""

import platform
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistlab import data
from mnistlab.errors import Diverged
from mnistlab.spec import leaders
from mnistlab.studies import pruning
from mnistlab.studies.executors import StackOutcome, StackTask, executor
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.plan import PlannedRun, Stack, stacks, twins
from mnistlab.studies.progress import PlanProgress
from mnistlab.studies.pruning import RoundView
from mnistlab.studies.write import write_aggregate, write_pruned, write_run
from mnistlab.train import calibration
from mnistlab.train.calibration import Calibration
from mnistlab.train.choices import EngineOptions
from mnistlab.train.probes import PROBE_BATCH
from mnistlab.version import __version__


@dataclass(frozen=True)
class Placement:
    """Where and how a plan trains: the machine's calibration, the engine by name (each worker resolves it),
    and a Dask cluster's address or None. `workers` (None: the calibration's) local processes."""

    tuned: Calibration
    engine: EngineOptions = EngineOptions()
    cluster: str | None = None
    workers: int | None = None


def execute(
    runs: list[PlannedRun],
    placement: Placement,
    data_dir: Path | None = None,
    identify: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    pruning: RoundView | None = None,
) -> None:
    """Train every planned run, stacking those that can share a stack, and write their folders.

    `data_dir` is where the data sets are; with `identify` its files say which data set they are
    (see `data.load`), rather than the experiments' `dataset` key. `pruning`: the round of a pruned
    search that the runs are (their `trial`s are its), whose pruner stops trials between epochs.
    """
    served = twins(runs)
    for same in served.values():
        if len(same) > 1:
            log(f"{_names(same[1:])}: the same training as {_names(same[:1])}, trained once")
    tuned = placement.tuned
    unique = [same[0] for same in served.values()]
    workers = placement.workers or tuned.workers
    # A pruned round's stacks start as many times larger as its pruner keeps 1 in: after the first rung
    # they have shed to about the rows that pay, rather than to a few.
    rows = tuned.stack_rows * (max(2, pruning.search.reduction_factor) if pruning else 1)
    plan = stacks(unique, rows, workers)
    if not placement.cluster:
        # No more local workers than stacks: a plan of one stack trains in this process, on every core
        # that pays for a stack alone, rather than in one single-threaded worker beside an idle one.
        workers = min(workers, len(plan))
    with executor(placement.cluster, workers, progress, log, tuned.threads_alone) as where:
        if where.workers != workers:  # a cluster of another size, or no Dask to give the workers
            plan = stacks(unique, rows, where.workers)
        datasets = _datasets(plan, data_dir, identify, progress)
        threads, token = where.threads(len(plan)), secrets.token_hex(8)
        tasks = [
            _task(key, token, stack, datasets[_source(stack)], placement, threads, pruning)
            for key, stack in enumerate(plan)
        ]
        for stack in plan:
            log(stack.describe())
        planned = {task.key: 2 * sum(member.epochs for member in task.members) for task in tasks}
        bar = PlanProgress(planned, sum(not run.replay for run in runs), progress)
        writer = _Writer(runs, served, bar.around(log))
        reached = []
        try:
            for task, outcome in where.run(tasks, datasets, bar.stack):
                bar.ran(writer.write(plan[task.key], task, outcome, datasets[task.source]))
                reached += [] if placement.cluster else _reached(task, outcome, datasets[task.source], where.workers)
        finally:
            bar.close()
    calibration.record(torch.device("cpu"), reached)
    if writer.diverged:
        more = f" (and {len(writer.diverged) - 1} more)" if len(writer.diverged) > 1 else ""
        raise Diverged(f"{writer.diverged[0]}{more}; nothing was written for it: lower train.learning_rate")


def _reached(task: StackTask, outcome: StackOutcome, dataset: data.Dataset, processes: int) -> list:
    """What a stack of this machine reached, where it is comparable with the calibration's probes: float32
    steps at the probes' batch on the CPU, compiled as the probes' are."""
    engine = outcome.engine
    if (
        engine.device.type != "cpu"
        or not engine.compile
        or task.pruning is not None  # a stack that sheds rows changes shape mid-way
        or task.batch_size != PROBE_BATCH
        or engine.bf16_layers(task.arch.shapes, PROBE_BATCH)
    ):
        return []
    rows = sorted(set(leaders(list(task.members))))
    sizes = dataset.split_sizes()
    steps = sum(
        outcome.results[r].phase1.epochs * (sizes["train"] // PROBE_BATCH)
        + outcome.results[r].phase2.epochs * (sizes["full"] // PROBE_BATCH)
        for r in rows
    )
    seconds = outcome.results[0].seconds
    macs = calibration.macs_per_model_step(task.arch, PROBE_BATCH) * steps
    return [calibration.Achieved(processes, outcome.threads, len(rows), macs / seconds)] if seconds > 0 else []


def _datasets(plan: list[Stack], data_dir: Path | None, identify: bool, progress: bool) -> dict:
    """Each data set the plan's stacks train on, loaded once: (name, validation size) -> Dataset."""
    datasets = {}
    for stack in plan:
        name, validation_size = source = _source(stack)
        if source not in datasets:
            name = None if identify else name
            datasets[source] = data.load(name, data_dir, validation_size=validation_size, progress=progress)
    return datasets


class _Writer:
    """Writes the run folders of each stack as it comes back, and a multi-seed folder's aggregate when its
    last seed lands (not after the whole plan: while the last stacks train, a core is often free for it).
    Runs whose loss stopped being a number are not written: `diverged` says which."""

    def __init__(self, runs: list[PlannedRun], served: dict[tuple, list[PlannedRun]], log: Callable[[str], None]):
        self.served, self.log, self.started = served, log, time.time()
        self.unwritten: dict[RunFolder, set[RunFolder]] = {}
        for run in runs:
            if run.folder.is_seed_run and not run.replay:
                self.unwritten.setdefault(RunFolder(run.folder.path.parent), set()).add(run.folder)
        self.diverged: list[str] = []

    def write(self, stack: Stack, task: StackTask, outcome: StackOutcome, dataset: data.Dataset) -> int:
        """Every run the stack trained for; returns how many were written."""
        size, written = len(stack.rows), 0
        for trained, result in zip(stack, outcome.results, strict=True):
            served = self.served[trained.experiment.training_key()]
            if result.diverged:
                self.diverged.append(f"{_names(served)}: the loss stopped being a finite number at {result.diverged}")
                self.log(f"  {self.diverged[-1]}; not written")
                continue
            for run in served:
                if run.replay:
                    continue
                environment = _environment(outcome, run.experiment.seed, result.seconds, self.started, size)
                if result.pruned:
                    pruner = pruning.describe(task.pruning.view.search)
                    write_pruned(run.folder, run.experiment, result, task.arch, dataset, environment, pruner)
                    self.log(f"  {run.folder.path}: pruned, {result.phase1.pruned}")
                else:
                    metrics = write_run(run.folder, run.experiment, result, task.arch, dataset, environment, size)
                    self.log(f"  {run.folder.path}: test accuracy {metrics.scores['test'].accuracy:.4f}")
                written += 1
                if run.folder.is_seed_run:
                    parent = RunFolder(run.folder.path.parent)
                    self.unwritten[parent].discard(run.folder)
                    if not self.unwritten[parent] and parent.seeds():  # a pruned trial's seeds have no aggregate
                        write_aggregate(parent)
        return written


def _source(stack: Stack) -> tuple[str, int]:
    return stack[0].experiment.dataset, stack[0].experiment.validation_size


def _task(
    key: int,
    token: str,
    stack: Stack,
    dataset: data.Dataset,
    placement: Placement,
    threads: int,
    pruning: RoundView | None,
) -> StackTask:
    first, rows = stack[0].experiment, len(stack.rows)
    return StackTask(
        key=key,
        plan=token,
        arch=first.architecture(inputs=dataset.train_images.shape[1], classes=len(dataset.classes)),
        members=tuple(r.experiment.hyperparameters for r in stack),
        batch_size=first.batch_size,
        source=_source(stack),
        engine=placement.engine,
        threads=threads,
        label=first.name if rows == 1 else f"{rows} models",
        pruning=pruning.for_stack(tuple(r.trial for r in stack)) if pruning else None,
    )


def _names(runs: list[PlannedRun]) -> str:
    return ", ".join(r.name for r in runs)


def _environment(outcome: StackOutcome, seed: int, seconds: float, started: float, stack_size: int) -> dict:
    engine = outcome.engine
    return {
        "engine": outcome.trained_by,
        "mnistlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "host": outcome.host,
        "device": str(engine.device),
        "device_name": outcome.device_name,
        "threads": outcome.threads,
        "compiled": engine.compile,
        "precision": engine.precision,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(seconds, 3),
        "stack_size": stack_size,
    }
