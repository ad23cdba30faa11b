"""Experiments as typed values: an architecture, the hyperparameters of one model, and what ties them
to a data set and a batch size.

The split matters for speed: models that share everything but their `Hyperparameters` can train side
by side as members of one lockstep stack (`Experiment.lockstep_key`), each with its own numbers.
A new hyperparameter is a field of `Hyperparameters` (with its default), a TOML rule in `config`,
and the training code that uses it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mnistlab.errors import ConfigError

ACTIVATIONS = ("relu", "sigmoid", "tanh")
# What early stopping may monitor, by Keras' name -> the field of a run's per-epoch record that holds it
# (`records.Epoch`): the clean validation numbers, or the running training ones.
MONITORS = {"val_loss": "eval_loss", "val_accuracy": "eval_accuracy", "loss": "loss", "accuracy": "accuracy"}
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Architecture:
    """What the members of a stack share: layer widths, the hidden activation, and the border of the
    (square) input image that the first Dense layer never sees."""

    inputs: int
    hidden: tuple[int, ...]
    classes: int = 10
    activation: str = "relu"
    crop: int = 0  # pixels cut from each side of the image: MNIST's border is nearly always blank

    @property
    def side(self) -> int:
        """The input image's side, in pixels."""
        return math.isqrt(self.inputs)

    @property
    def window(self) -> int:
        """The side of the image left after the crop, in pixels."""
        return self.side - 2 * self.crop

    @property
    def features(self) -> int:
        """Inputs of the first Dense layer: the pixels left after the crop."""
        return self.inputs if self.crop == 0 else self.window**2

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(inputs, outputs) of each Dense layer."""
        widths = [self.features, *self.hidden, self.classes]
        return list(zip(widths[:-1], widths[1:], strict=True))

    @property
    def num_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in self.shapes)

    @classmethod
    def from_dict(cls, found: dict) -> "Architecture":
        """An architecture from its JSON description (`dataclasses.asdict`), checked to be one mnistlab
        builds; ValueError (or KeyError, TypeError) otherwise."""
        if not isinstance(found, dict):
            raise ValueError("the architecture is not a JSON object")
        hidden, crop = found["hidden"], found.get("crop", 0)
        numbers = [found["inputs"], found["classes"], crop, *(hidden if isinstance(hidden, list) else [None])]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise ValueError("widths must be whole numbers")
        if found["activation"] not in ACTIVATIONS:
            raise ValueError(f"activation {found['activation']!r}; mnistlab's models use {', '.join(ACTIVATIONS)}")
        arch = cls(found["inputs"], tuple(hidden), found["classes"], found["activation"], crop)
        if arch.inputs < 1 or arch.classes < 2 or not all(hidden) or not 0 < len(hidden) <= 100:
            raise ValueError(
                f"no model of {arch.inputs} inputs, hidden layers {list(hidden)} and {arch.classes} classes"
            )
        if crop and (arch.side**2 != arch.inputs or arch.window < 1):
            raise ValueError(f"crop {crop} leaves nothing of {arch.inputs} pixels")
        return arch


@dataclass(frozen=True)
class EarlyStopping:
    """Keras' EarlyStopping, except that best weights are restored however the run ends."""

    monitor: str = "val_loss"
    patience: int = 0
    min_delta: float = 0.0
    restore_best_weights: bool = True


@dataclass(frozen=True)
class Augmentation:
    """Random distortions of every training image, drawn afresh at every step (Simard et al. 2003).

    Each image gets its own affine map (rotation, scale, shear, translation) and, where `elastic` is
    set, a smooth random displacement field; validation and test images are never distorted.
    """

    rotation: float = 0.0  # degrees, uniform in +-rotation
    scale: float = 0.0  # relative, uniform in 1 +- scale
    shear: float = 0.0  # uniform in +-shear (x shifts by shear * y)
    translation: float = 0.0  # pixels, uniform in +-translation along each axis
    elastic: float = 0.0  # pixels: largest displacement of the smooth random field


@dataclass(frozen=True)
class Hyperparameters:
    """The numbers in which the models of one stack may differ: each member trains with its own."""

    seed: int
    learning_rate: float
    epochs: int
    input_dropout: float = 0.0  # before the first Dense layer
    dropout: float = 0.0  # after each hidden layer, before the next Dense layer
    l1: float = 0.0  # kernel penalties, Keras semantics
    l2: float = 0.0
    early_stopping: EarlyStopping | None = None
    label_smoothing: float = 0.0  # targets (1 - s) on the label and s / classes on every class
    schedule: str = "constant"  # of the learning rate over each phase: constant, or cosine to zero
    warmup_epochs: int = 0  # linear warm-up of the learning rate before the schedule
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and kept; 0: none
    augmentation: Augmentation | None = None

    def is_prefix_of(self, other: "Hyperparameters") -> bool:
        """Whether this member's training is the first epochs of `other`'s: the same numbers and seed but
        for a budget no longer, `other` training its whole budget, and learning rates that do not depend
        on the budget (no cosine). Its own early stopping then only says where along other's training it
        ends, so one training gives both (`leaders`)."""
        return (
            other.early_stopping is None
            and self.epochs <= other.epochs
            and self.schedule == "constant"
            and replace(self, epochs=other.epochs, early_stopping=None) == other
        )


@dataclass(frozen=True, order=True)
class StepWork:
    """The optional work of a training step: what any member of its stack asks of it. This one
    description, derived from the members, is the key a plan stacks runs by (a step pays for what any
    member asks, so runs of the same work stack together), the flags bound into the step, and so the
    key of the compiled step: what no member asks for is left out, and the lab's presets train exactly
    as they did before any of it existed. A new hyperparameter that changes the step is a field here."""

    dropout: bool = False  # masks before some Dense layer
    l1: bool = False  # kernel penalties
    l2: bool = False
    label_smoothing: bool = False
    ema: bool = False  # a moving average of the weights
    augmentation: bool = False  # distorted training images
    elastic: bool = False  # ... with a smooth random displacement field

    @classmethod
    def of(cls, members: Sequence[Hyperparameters]) -> "StepWork":
        return cls(
            dropout=any(m.dropout or m.input_dropout for m in members),
            l1=any(m.l1 for m in members),
            l2=any(m.l2 for m in members),
            label_smoothing=any(m.label_smoothing for m in members),
            ema=any(m.ema for m in members),
            augmentation=any(m.augmentation is not None for m in members),
            elastic=any(m.augmentation is not None and m.augmentation.elastic > 0 for m in members),
        )

    @property
    def penalty(self) -> bool:
        return self.l1 or self.l2


def leaders(members: Sequence[Hyperparameters], keys: Sequence | None = None) -> list[int]:
    """For each member, the member whose training also gives its own: the longest of those it is a prefix
    of (the first of equals), else itself. Where `keys` are given (random streams), only members with
    equal keys share. The study's early-stopping run is the first 27 epochs of its powerful run."""
    keys = keys if keys is not None else [None] * len(members)
    result = []
    for member, key in zip(members, keys, strict=True):
        candidates = [
            (-other.epochs, index)
            for index, (other, other_key) in enumerate(zip(members, keys, strict=True))
            if other_key == key and member.is_prefix_of(other)
        ]
        result.append(min(candidates)[1] if candidates else len(result))
    return result


@dataclass(frozen=True)
class Experiment:
    """A resolved, checked config: everything a run needs but the data and the engine."""

    name: str
    description: str
    dataset: str
    validation_size: int
    hidden: tuple[int, ...]
    activation: str
    crop: int
    batch_size: int | None  # None: the whole training set
    hyperparameters: Hyperparameters
    table: dict  # the resolved TOML tables, for writing the config back out

    @property
    def seed(self) -> int:
        return self.hyperparameters.seed

    def architecture(self, inputs: int, classes: int = 10) -> Architecture:
        arch = Architecture(inputs, self.hidden, classes, self.activation, self.crop)
        if self.crop and (arch.side**2 != inputs or arch.features < 1):
            raise ConfigError(f"{self.name}: model.crop = {self.crop} leaves nothing of images of {inputs} pixels")
        return arch

    def with_seed(self, seed: int) -> "Experiment":
        return replace(
            self, hyperparameters=replace(self.hyperparameters, seed=seed), table={**self.table, "seed": seed}
        )

    def lockstep_key(self) -> tuple:
        """Experiments with equal keys can train as members of one stack."""
        return (self.dataset, self.validation_size, self.hidden, self.activation, self.crop, self.batch_size)

    def training_key(self) -> tuple:
        """Experiments with equal keys train to the same result, bit for bit: one training serves them all."""
        return (*self.lockstep_key(), self.hyperparameters)
