"""A plan of runs, and how they group into lockstep stacks.

A planned run is an experiment (its seed is the run's seed) and the folder it writes. Runs that differ
only in name (the report's final model is its dropout model) train once: `twins`. Runs that share a
data set, an architecture and a batch size (`Experiment.lockstep_key`) train together as the members
of one stack: `stacks`.
"""

import math
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

from mnistlab.errors import ConfigError
from mnistlab.spec import Experiment, StepWork, leaders
from mnistlab.spec.config import MAX_SEED
from mnistlab.studies.folder import RunFolder

MAX_RUNS = 10_000  # in one plan: a plan is made whole, and its folders claimed, before anything trains


@dataclass(frozen=True)
class PlannedRun:
    experiment: Experiment  # its seed is the run's seed
    folder: RunFolder
    label: str = ""  # what the log calls it, where its experiment's name does not tell it (a sweep's point)
    trial: int | None = None  # the number of the pruned search's trial it trains, whose seeds stack together
    # Written already, by a search interrupted mid-round: trained again, and not written, so that its
    # round's judges see what they saw the first time.
    replay: bool = False

    @property
    def name(self) -> str:
        return f"{self.label or self.experiment.name} (seed {self.experiment.seed})"


def check_size(runs: int, what: str) -> None:
    """Refuse a plan of more than MAX_RUNS runs before any of it is made (a typo of --seeds would
    otherwise fill the memory with plans before saying anything)."""
    if runs > MAX_RUNS:
        raise ConfigError(f"{what}: {runs:,} runs, over the limit of {MAX_RUNS:,} in one plan")


def seed_runs(experiment: Experiment, folder: RunFolder, seeds: int = 1, label: str = "") -> list[PlannedRun]:
    """One run in `folder`, or `seeds` runs (the experiment's seed and the next ones) in its seed-K folders."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds must be a whole number, at least 1, got {seeds!r}")
    check_size(seeds, f"{experiment.name}, {seeds:,} seeds")
    if experiment.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"{experiment.name}: seeds {experiment.seed} to {experiment.seed + seeds - 1} go past {MAX_SEED}"
        )
    if seeds == 1:
        return [PlannedRun(experiment, folder, label)]
    first = experiment.seed
    return [PlannedRun(experiment.with_seed(s), folder.seed(s), label) for s in range(first, first + seeds)]


def twins(runs: list[PlannedRun]) -> dict[tuple, list[PlannedRun]]:
    """Training key -> the runs one training serves, the first of them trained."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.experiment.training_key(), []).append(run)
    return groups


@dataclass(eq=True)
class Stack:
    """Runs that train together, and for each the index of the run whose row of the stack it reads: its
    own, or the row of the run whose first epochs its training is (`spec.leaders`)."""

    runs: list[PlannedRun]
    leaders: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.leaders = self.leaders or leaders([r.experiment.hyperparameters for r in self.runs])

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __getitem__(self, index: int) -> PlannedRun:
        return self.runs[index]

    @property
    def rows(self) -> list[PlannedRun]:
        """The runs that train a row of their own: the others ride one."""
        return [run for index, run in enumerate(self.runs) if self.leaders[index] == index]

    def describe(self) -> str:
        """What the stack trains: its rows, and the runs that ride them."""
        riders = [
            f"; {run.name} as the first epochs of {self.runs[leader].name}"
            for index, (run, leader) in enumerate(zip(self.runs, self.leaders, strict=True))
            if leader != index
        ]
        return f"training {len(self.rows)} in lockstep: {', '.join(r.name for r in self.rows)}{''.join(riders)}"


def stacks(runs: list[PlannedRun], rows: int, workers: int = 1) -> list[Stack]:
    """Runs grouped into lockstep stacks: same lockstep key, balanced sizes, by seed.

    A run whose training is the first epochs of another's (`spec.leaders`: the study's early-stopping
    run is its powerful run up to where Keras' rule stops it) rides in that run's stack as no row of its
    own, and costs nothing but its evaluations. The other rows: a stack holds at most `rows` rows per
    step (members x batch size; the calibration measures what pays), and a group splits into at least
    `workers` stacks where it has the runs, so that every worker has a stack to train. Runs that may stop
    early stack apart from those that train their whole budget: a stack trains until its last member is
    done, and a member that stopped is frozen, not removed, so it costs a step's share to the end (the
    study's early-stopping run, trained alone, stops at epoch 27 of 50).
    Within a group, runs whose steps do the same extra work (`spec.StepWork`) stack together: a step
    pays for what any member asks of it (benchmarks/README.md, "What the code's comments measured").
    The seeds of a pruned search's trial share a stack: the stack's judge weighs the trial on all of them.
    The largest stacks come first: they are the ones to start early."""
    riders = _riders(runs)
    riding = {rider.folder for stack_riders in riders.values() for rider in stack_riders}
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        if run.folder not in riding:
            groups.setdefault((run.experiment.lockstep_key(), _may_stop(run)), []).append(run)
    result = []
    for group in groups.values():
        group.sort(key=lambda r: (StepWork.of([r.experiment.hyperparameters]), r.experiment.seed))
        units = _units(group)
        batch = group[0].experiment.batch_size
        limit = max(1, rows // batch // len(units[0])) if batch else 1  # a full batch needs no stacking
        count = max(math.ceil(len(units) / limit), min(len(units), workers))
        small, larger = divmod(len(units), count)  # sizes differ by one at most: 25 in 7 is 4,4,4,4,3,3,3
        edges = accumulate((small + (i < larger) for i in range(count)), initial=0)
        result += [[run for unit in units[start:end] for run in unit] for start, end in pairwise(edges)]
    # Of two stacks with the same budget, the one that may stop early goes later: it likely costs less.
    result.sort(key=lambda stack: (cost(stack), not _may_stop(stack[0])), reverse=True)
    return [Stack([*stack, *(rider for run in stack for rider in riders.get(run.folder, []))]) for stack in result]


def _riders(runs: list[PlannedRun]) -> dict[RunFolder, list[PlannedRun]]:
    """A leading run's folder -> the runs whose training its own gives (`spec.leaders`), among runs of one
    lockstep key."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.experiment.lockstep_key(), []).append(run)
    riders: dict[RunFolder, list[PlannedRun]] = {}
    for group in groups.values():
        for run, leader in zip(group, leaders([r.experiment.hyperparameters for r in group]), strict=True):
            if group[leader] is not run:
                riders.setdefault(group[leader].folder, []).append(run)
    return riders


def _units(group: list[PlannedRun]) -> list[list[PlannedRun]]:
    """What a group's stacks are made of: the runs of one pruned search's trial together, else one run each."""
    if group[0].trial is None:
        return [[run] for run in group]
    trials: dict[int, list[PlannedRun]] = {}
    for run in group:
        trials.setdefault(run.trial, []).append(run)
    return list(trials.values())


def _may_stop(run: PlannedRun) -> bool:
    return run.experiment.hyperparameters.early_stopping is not None


def cost(stack: list[PlannedRun]) -> int:
    """A stack's training work, in parameter-epochs: enough to order stacks by."""
    return sum(r.experiment.hyperparameters.epochs * (sum(r.experiment.hidden) + 1) for r in stack)
