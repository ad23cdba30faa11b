"""A plan of runs, and how they group into lockstep stacks.

A planned run is an experiment (its seed is the run's seed) and the folder it writes. Runs that differ
only in name (the report's final model is its dropout model) train once: `twins`. Runs that share a
data set, an architecture and a batch size (`Experiment.lockstep_key`) train together as the members
of one stack: `stacks`.
"""

from dataclasses import dataclass

import torch

from mnistlab.errors import ConfigError
from mnistlab.spec import Experiment
from mnistlab.study.folder import RunFolder


@dataclass(frozen=True)
class PlannedRun:
    experiment: Experiment  # its seed is the run's seed
    folder: RunFolder

    @property
    def name(self) -> str:
        return f"{self.experiment.name} (seed {self.experiment.seed})"


def seed_runs(experiment: Experiment, folder: RunFolder, seeds: int = 1) -> list[PlannedRun]:
    """One run in `folder`, or `seeds` runs (the experiment's seed and the next ones) in its seed-K folders."""
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    if seeds == 1:
        return [PlannedRun(experiment, folder)]
    first = experiment.seed
    return [PlannedRun(experiment.with_seed(s), folder.seed(s)) for s in range(first, first + seeds)]


def twins(runs: list[PlannedRun]) -> dict[tuple, list[PlannedRun]]:
    """Training key -> the runs one training serves, the first of them trained."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.experiment.training_key(), []).append(run)
    return groups


# How many rows one lockstep step should process, members x batch size. Stacking amortises the per-step
# cost of small batches; past the point where the stack's weights and Adam state leave the CPU's cache,
# it costs more than it saves, and where that is depends on the CPU. Seconds per model-epoch of the final
# model at batch 32 on 2 cores, by stack size:
#   AMD EPYC:              1: 0.45, 2: 0.32, 4: 0.26, 7: 0.26, 10: 0.30, 14: 0.31, 35: 0.32
#   Intel Xeon (AMX), now: 1: 0.59, 2: 0.48, 4: 0.38, 7: 0.37, 12: 0.32, 16: 0.31, 30: 0.37
# 512 rows (16 members at batch 32) is what the machine this is tuned on wants. A GPU wants far more.
STACK_ROWS = {"cpu": 512, "cuda": 8192}


def stacks(runs: list[PlannedRun], device: torch.device) -> list[list[PlannedRun]]:
    """Runs grouped into lockstep stacks: same lockstep key, balanced sizes within the row budget, by seed."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.experiment.lockstep_key(), []).append(run)
    result = []
    for group in groups.values():
        group.sort(key=lambda r: r.experiment.seed)  # stable: a stack holds whole seeds of the study
        batch = group[0].experiment.batch_size
        limit = max(1, STACK_ROWS[device.type] // batch) if batch else 1  # a full batch needs no stacking
        count = -(-len(group) // limit)
        size = -(-len(group) // count)
        result += [group[i : i + size] for i in range(0, len(group), size)]
    return result
