"""The plain description of an experiment: what to train, never how. Nothing here imports torch, so a
spec can be read, checked and planned anywhere (the CLI, a sweep planner, a cluster's driver)."""

from mnistlab.spec.experiment import (
    ACTIVATIONS,
    MONITORS,
    SCHEDULES,
    Architecture,
    Augmentation,
    EarlyStopping,
    Experiment,
    Hyperparameters,
    StepWork,
    leaders,
)

__all__ = [
    "ACTIVATIONS",
    "MONITORS",
    "SCHEDULES",
    "Architecture",
    "Augmentation",
    "EarlyStopping",
    "Experiment",
    "Hyperparameters",
    "StepWork",
    "leaders",
]
