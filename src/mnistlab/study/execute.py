"""Carry out a plan: load each data set once, train every stack on an executor (this process, local
worker processes or a Dask cluster), write every run folder as its stack comes back, and aggregate the
seeds of multi-seed folders."""

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistlab import data
from mnistlab.errors import MnistlabError
from mnistlab.spec import leaders
from mnistlab.study.executors import StackOutcome, StackTask, executor
from mnistlab.study.folder import RunFolder
from mnistlab.study.plan import PlannedRun, stacks, twins
from mnistlab.study.write import write_aggregate, write_run
from mnistlab.train.calibration import Calibration
from mnistlab.version import __version__


@dataclass(frozen=True)
class Placement:
    """Where and how a plan trains: the machine's calibration, the engine by name (each worker resolves it),
    and a Dask cluster's address or None. `workers` (None: the calibration's) local processes."""

    tuned: Calibration
    device: str = "auto"
    precision: str = "auto"
    compile: bool = True
    cluster: str | None = None
    workers: int | None = None


def execute(
    runs: list[PlannedRun],
    placement: Placement,
    data_dir: Path | None = None,
    identify: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> None:
    """Train every planned run, stacking those that can share a stack, and write their folders.

    `data_dir` is where the data sets are; with `identify` its files say which data set they are
    (see `data.load`), rather than the experiments' `dataset` key.
    """
    served = twins(runs)
    for same in served.values():
        if len(same) > 1:
            log(f"{_names(same[1:])}: the same training as {_names(same[:1])}, trained once")
    tuned = placement.tuned
    unique = [same[0] for same in served.values()]
    workers = placement.workers or tuned.workers
    if not placement.cluster:
        # No more local workers than stacks: a plan of one stack trains in this process, on every core
        # that pays for a stack alone, rather than in one single-threaded worker beside an idle one.
        workers = min(workers, len(stacks(unique, tuned.stack_rows, workers)))
    with executor(placement.cluster, workers, progress, log, tuned.threads_alone) as where:
        plan = stacks(unique, tuned.stack_rows, where.workers)
        datasets = {}
        for stack in plan:
            name, validation_size = source = _source(stack)
            if source not in datasets:
                name = None if identify else name
                datasets[source] = data.load(name, data_dir, validation_size=validation_size, progress=progress)
        threads = where.threads(len(plan))
        tasks = [_task(stack, datasets[_source(stack)], placement, threads) for stack in plan]
        stack_of = {id(task): stack for task, stack in zip(tasks, plan, strict=True)}
        for stack in plan:
            log(_describe(stack))
        # A multi-seed folder's aggregate is written when its last seed lands, not after the whole plan:
        # while the last stacks train, a core is often free for it.
        unwritten: dict[RunFolder, set[RunFolder]] = {}
        for run in runs:
            if run.folder.is_seed_run:
                unwritten.setdefault(RunFolder(run.folder.path.parent), set()).add(run.folder)
        started = time.time()
        diverged = []
        for task, outcome in where.run(tasks, datasets):
            stack = stack_of[id(task)]
            dataset = datasets[task.source]
            size = len(_rows(stack))
            for trained, result in zip(stack, outcome.results, strict=True):
                if result.diverged:
                    names = _names(served[trained.experiment.training_key()])
                    diverged.append(f"{names}: the loss stopped being a finite number at {result.diverged}")
                    log(f"  {diverged[-1]}; not written")
                    continue
                for run in served[trained.experiment.training_key()]:
                    environment = _environment(outcome, run.experiment.seed, result.seconds, started, size)
                    metrics = write_run(run.folder, run.experiment, result, task.arch, dataset, environment, size)
                    log(f"  {run.folder.path}: test accuracy {metrics.scores['test'].accuracy:.4f}")
                    if run.folder.is_seed_run:
                        parent = RunFolder(run.folder.path.parent)
                        unwritten[parent].discard(run.folder)
                        if not unwritten[parent]:
                            write_aggregate(parent)
    if diverged:
        more = f" (and {len(diverged) - 1} more)" if len(diverged) > 1 else ""
        raise MnistlabError(f"{diverged[0]}{more}; nothing was written for it: lower train.learning_rate")


def _source(stack: list[PlannedRun]) -> tuple[str, int]:
    return stack[0].experiment.dataset, stack[0].experiment.validation_size


def _task(stack: list[PlannedRun], dataset: data.Dataset, placement: Placement, threads: int) -> StackTask:
    first, rows = stack[0].experiment, len(_rows(stack))
    return StackTask(
        arch=first.architecture(inputs=dataset.train_images.shape[1], classes=len(dataset.classes)),
        members=tuple(r.experiment.hyperparameters for r in stack),
        batch_size=first.batch_size,
        source=_source(stack),
        device=placement.device,
        precision=placement.precision,
        compile=placement.compile,
        threads=threads,
        label=first.name if rows == 1 else f"{rows} models",
    )


def _rows(stack: list[PlannedRun]) -> list[PlannedRun]:
    """The runs of a stack that train a row of their own: the others ride one (`spec.leaders`)."""
    leader = leaders([r.experiment.hyperparameters for r in stack])
    return [run for index, run in enumerate(stack) if leader[index] == index]


def _describe(stack: list[PlannedRun]) -> str:
    """What a stack trains: its rows, and the runs that ride them."""
    rows = _rows(stack)
    leader = leaders([r.experiment.hyperparameters for r in stack])
    riders = [
        f"; {run.name} as the first epochs of {stack[leader[index]].name}"
        for index, run in enumerate(stack)
        if leader[index] != index
    ]
    return f"training {len(rows)} in lockstep: {_names(rows)}{''.join(riders)}"


def _names(runs: list[PlannedRun]) -> str:
    return ", ".join(r.name for r in runs)


def _environment(outcome: StackOutcome, seed: int, seconds: float, started: float, stack_size: int) -> dict:
    engine = outcome.engine
    return {
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
