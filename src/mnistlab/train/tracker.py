"""Per-member bookkeeping of a stack between epochs: histories, epoch budgets, Keras' early stopping,
best weights, and members whose loss stopped being a number."""

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
        for row in set(self.rows) - set(self.running_rows):
            active[row] = 0.0

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
            )
            for member, stopper in enumerate(self.stoppers)
        ]
