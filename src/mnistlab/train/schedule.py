"""Learning rates over a phase: each member's own warm-up and schedule, step by step."""

import numpy as np
import torch

from mnistlab.spec import Hyperparameters


class Schedule:
    """Each member's learning rate at each step of its phase: a linear warm-up over `warmup_epochs`,
    then constant or a cosine from the member's rate down to zero at its last step."""

    def __init__(self, members: list[Hyperparameters], steps_per_epoch: int):
        self.members, self.steps_per_epoch = members, steps_per_epoch
        self.on = any(m.schedule != "constant" or m.warmup_epochs for m in members)
        self.epoch = 0

    def rows(self, kept: list[int]) -> "Schedule":
        """The schedule of these members alone, where this one is now."""
        schedule = Schedule([self.members[i] for i in kept], self.steps_per_epoch)
        schedule.on, schedule.epoch = self.on, self.epoch
        return schedule

    def epoch_rates(self, base: torch.Tensor) -> torch.Tensor:
        """(steps, M) the rates of the next epoch's steps, on base's device."""
        steps = self.epoch * self.steps_per_epoch + np.arange(self.steps_per_epoch)
        self.epoch += 1
        factors = []
        for member in self.members:
            total = member.epochs * self.steps_per_epoch
            warmup = member.warmup_epochs * self.steps_per_epoch
            factor = np.minimum(1.0, (steps + 1) / warmup) if warmup else np.ones(len(steps))
            if member.schedule == "cosine":
                after = np.clip((steps - warmup) / max(1, total - warmup), 0, 1)
                factor = factor * 0.5 * (1 + np.cos(np.pi * after))
            factors.append(factor)
        return base * torch.tensor(np.stack(factors, 1), dtype=torch.float32, device=base.device)
