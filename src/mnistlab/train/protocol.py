"""The lab report's two-phase protocol, for a stack of members at once.

Phase 1 trains on the `train` split and evaluates `validation` after every epoch (Keras'
`validation_split`). Phase 2 trains fresh models on the `full` training set for as many epochs as
phase 1 ran (its stopping epoch when early stopping ended it) and evaluates `test`. The numbers a run
reports are clean evaluations, as Keras' `evaluate` gives them: dropout off, penalty included. A member
that a search's pruner stopped in phase 1 has no phase 2: its validation score is all it reports.
"""

import math
import time
from dataclasses import replace

import torch

from mnistlab.data import SPLITS, Splits
from mnistlab.nn.mlp import Regularization, eval_chunk_rows, evaluate
from mnistlab.records import Fit, RunResult, Score
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.train.engine import Engine, check_memory
from mnistlab.train.fit import Judge, Streams, fit, full_batch_chunk_rows, seed_for
from mnistlab.train.progress import EpochCount, ProgressBars


def streams(member: Hyperparameters, phase: int) -> Streams:
    """A member's random streams in one phase: the same initial weights in both, fresh data order, masks
    and distortions."""
    return Streams(
        init=seed_for(member.seed, "init"),
        shuffle=seed_for(member.seed, f"shuffle-{phase}"),
        dropout=seed_for(member.seed, f"dropout-{phase}"),
        augment=seed_for(member.seed, f"augment-{phase}"),
    )


def planned_steps(members: list[Hyperparameters], sizes: tuple[int, int], batch_size: int | None) -> tuple[int, int]:
    """Calls of a stack's compiled step over both phases (on `sizes`: the train and full rows) if every
    member trains its whole budget, and the rows of each: a full batch calls it once per chunk, and the
    epoch's short last batch runs eagerly."""
    epochs = max(m.epochs for m in members)
    if batch_size is None:
        chunk = full_batch_chunk_rows(len(members))
        return epochs * sum(math.ceil(rows / chunk) for rows in sizes), chunk
    return epochs * sum(rows // batch_size for rows in sizes), batch_size


def train_protocol(
    arch: Architecture,
    members: list[Hyperparameters],
    splits: Splits,
    batch_size: int | None,
    engine: Engine,
    progress: ProgressBars | None = None,
    judge: Judge | None = None,
) -> list[RunResult]:
    """Both phases for a stack of members (see the module's docstring); `judge` may stop members in phase 1."""
    progress = progress or ProgressBars.OFF
    step_rows = min(batch_size, len(splits.full[1])) if batch_size else full_batch_chunk_rows(len(members))
    check_memory(arch, len(members), step_rows, eval_chunk_rows(arch, len(members)), engine.device)
    start = time.perf_counter()
    reg = Regularization.of(arch, members, engine.device)

    count = EpochCount([m.epochs for m in members], progress.report)

    def phase(number: int, members: list[Hyperparameters], train, evaluation, judge=None) -> list[Fit]:
        seeds = [streams(m, number) for m in members]
        bars = progress.within(f"phase {number}")
        return fit(arch, members, seeds, train, evaluation, batch_size, engine, bars, count, judge)

    phase1 = phase(1, members, splits.train, splits.validation, judge)
    going_on = [member for member, f in enumerate(phase1) if f.pruned is None]
    count.end_phase1([f.epochs for f in phase1], [phase1[member].epochs for member in going_on])
    retrain = [replace(members[i], epochs=phase1[i].epochs, early_stopping=None) for i in going_on]
    phase2 = dict(zip(going_on, phase(2, retrain, splits.full, splits.test) if retrain else [], strict=True))

    stack1 = torch.stack([f.params for f in phase1])
    clean = {split: evaluate(stack1, arch, reg, *getattr(splits, split)) for split in ("train", "validation")}
    if phase2:
        stack2 = torch.stack([f.params for f in phase2.values()])
        reg2 = Regularization.of(arch, retrain, engine.device)
        on_full = {split: evaluate(stack2, arch, reg2, *getattr(splits, split)) for split in ("full", "test")}
    seconds = time.perf_counter() - start
    results = []
    for member, first in enumerate(phase1):
        scores = {split: Score(clean[split][0][member].item(), clean[split][1][member].item()) for split in clean}
        if member in phase2:
            row = going_on.index(member)
            scores |= {
                split: Score(loss[row].item(), accuracy[row].item()) for split, (loss, accuracy) in on_full.items()
            }
        results.append(RunResult(first, phase2.get(member), {s: scores[s] for s in SPLITS if s in scores}, seconds))
    return results
