"""Carry out a plan: load each data set once, train every stack with the protocol, write every run folder,
and aggregate the seeds of multi-seed folders."""

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mnistlab import __version__, data
from mnistlab.study.folder import RunFolder
from mnistlab.study.plan import PlannedRun, stacks, twins
from mnistlab.study.write import write_aggregate, write_run
from mnistlab.train.engine import Engine
from mnistlab.train.progress import ProgressBars
from mnistlab.train.protocol import train_protocol


def execute(
    runs: list[PlannedRun],
    engine: Engine,
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
    datasets: dict[tuple, data.Dataset] = {}
    for stack in stacks([same[0] for same in served.values()], engine.device):
        first = stack[0].experiment
        source = (first.dataset, first.validation_size)
        if source not in datasets:
            datasets[source] = data.load(
                None if identify else first.dataset, data_dir, validation_size=first.validation_size, progress=progress
            )
        dataset = datasets[source]
        log(f"training {len(stack)} in lockstep on {dataset.name} ({engine.device}): {_names(stack)}")
        arch = first.architecture(inputs=dataset.train_images.shape[1], classes=len(dataset.classes))
        label = first.name if len(stack) == 1 else f"{len(stack)} models"
        started = time.time()
        results = train_protocol(
            arch,
            [r.experiment.hyperparameters for r in stack],
            dataset.on(engine.device),
            first.batch_size,
            engine,
            ProgressBars(label, enabled=progress),
        )
        for trained, result in zip(stack, results, strict=True):
            for run in served[trained.experiment.training_key()]:
                environment = _environment(engine, run.experiment.seed, result.seconds, started, len(stack))
                metrics = write_run(run.folder, run.experiment, result, arch, dataset, environment, len(stack))
                log(f"  {run.folder.path}: test accuracy {metrics.scores['test'].accuracy:.4f}")
    for parent in dict.fromkeys(RunFolder(r.folder.path.parent) for r in runs if r.folder.is_seed_run):
        write_aggregate(parent)


def _names(runs: list[PlannedRun]) -> str:
    return ", ".join(r.name for r in runs)


def _environment(engine: Engine, seed: int, seconds: float, started: float, stack_size: int) -> dict:
    device = engine.device
    return {
        "mnistlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": cpu_name(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "compiled": engine.compile,
        "precision": engine.precision,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(seconds, 3),
        "stack_size": stack_size,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
