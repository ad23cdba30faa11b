"""Per-member bookkeeping of a stack between epochs: histories, epoch budgets, Keras' early stopping,
best weights, members whose loss stopped being a number, and members a search's pruner stopped."""

import math

import torch

from mnistlab.records import Epoch, EpochNumbers, Fit
from mnistlab.spec import MONITORS, EarlyStopping, Hyperparameters


class Stopper:
    """Early-stopping state of one member, with Keras' rules for improvement and patience."""

    def __init__(self, rule: EarlyStopping):
        self.rule = rule
        self.sign = -1.0 if rule.monitor.endswith("accuracy") else 1.0  # we minimise sign * value
        self.best = math.inf
        self.best_epoch = None
        self.wait = 0

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """(improved, stop) after `epoch` with the monitored `value`."""
        if self.sign * value < self.best - self.rule.min_delta:
            self.best, self.best_epoch, self.wait = self.sign * value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.wait >= self.rule.patience and epoch > 1


class Tracker:
    """Per-member bookkeeping between epochs: histories, epoch budgets, early stopping, best weights.

    Member i reads row `rows[i]` of the stack: its own, or the row of the member it is a prefix of. A row
    is frozen once every member reading it is done, and a member keeps its weights as it ends."""

    def __init__(self, members: list[Hyperparameters], rows: list[int], params: torch.Tensor):
        self.members, self.rows = members, rows
        self.stoppers = [Stopper(m.early_stopping) if m.early_stopping else None for m in members]
        self.restoring = [s is not None and s.rule.restore_best_weights for s in self.stoppers]
        self.best_params = params[rows] if any(self.restoring) else None  # indexing by a list copies
        self.final_params: list[torch.Tensor | None] = [None] * len(members)
        self.histories: list[list[Epoch]] = [[] for _ in members]
        self.stopped = [False] * len(members)
        self.diverged = [False] * len(members)
        self.pruned: list[str | None] = [None] * len(members)
        self.row_steps = [0] * len(members)
        self.running = list(range(len(members)))
        self.last_epoch = max(m.epochs for m in members)

    @property
    def running_rows(self) -> list[int]:
        """The rows that running members read, each once."""
        return sorted({self.rows[member] for member in self.running})

    def end_epoch(self, epoch: int, numbers: EpochNumbers, seconds: float, params, active) -> None:
        """Record the epoch for the running members; keep the weights of those that are done, and freeze
        the rows that no running member reads."""
        for member in list(self.running):
            row = self.rows[member]
            record = Epoch(epoch, *(column[row] for column in numbers), seconds)
            self.histories[member].append(record)
            done = epoch >= self.members[member].epochs
            if not (math.isfinite(record.loss) and math.isfinite(record.eval_loss)):
                self.diverged[member], done = True, True
            stopper = self.stoppers[member]
            if stopper and not self.diverged[member]:
                improved, stop = stopper.update(epoch, getattr(record, MONITORS[stopper.rule.monitor]))
                if improved and self.restoring[member]:
                    self.best_params[member] = params[row]
                self.stopped[member] = stop and not done
                done = done or stop
            if done:
                self.running.remove(member)
                kept = self.best_params[member] if self.restoring[member] else params[row]
                self.final_params[member] = kept.clone()
        self.freeze(active)

    def freeze(self, active) -> None:
        """Zero the updates of every row of the stack that no running member reads."""
        for row in set(self.rows) - set(self.running_rows) - {None}:
            active[row] = 0.0

    def prune(self, member: int, reason: str, params) -> None:
        """Stop a running member for good after the epoch just ended, keeping its weights as they are."""
        self.running.remove(member)
        self.pruned[member] = reason
        self.final_params[member] = params[self.rows[member]].clone()

    def computed(self, steps: int) -> None:
        """Count `steps` steps of every row the stack holds against the members that own one."""
        for member, row in enumerate(self.rows):
            if row is not None and self.rows.index(row) == member:
                self.row_steps[member] += steps

    def renumber(self, kept: list[int]) -> None:
        """The stack kept only these rows, in this order: members that read another row are done."""
        position = {row: index for index, row in enumerate(kept)}
        self.rows = [position.get(row) for row in self.rows]

    def counts(self) -> tuple[list[int], list[int]]:
        """Per member, the epochs trained so far, and those its budget has left (none once it is done)."""
        done = [len(history) for history in self.histories]
        running = set(self.running)
        left = [m.epochs - d if i in running else 0 for i, (m, d) in enumerate(zip(self.members, done, strict=True))]
        return done, left

    def fits(self) -> list[Fit]:
        return [
            Fit(
                params=self.final_params[member],
                history=self.histories[member],
                best_epoch=stopper and stopper.best_epoch,
                stopped_early=self.stopped[member],
                restored_best=self.restoring[member],
                diverged=self.diverged[member],
                pruned=self.pruned[member],
                row_steps=self.row_steps[member],
            )
            for member, stopper in enumerate(self.stoppers)
        ]
