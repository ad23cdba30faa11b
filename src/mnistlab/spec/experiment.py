"""Experiments as typed values: an architecture, the hyperparameters of one model, and what ties them
to a data set and a batch size.

The split matters for speed: models that share everything but their `Hyperparameters` can train side
by side as members of one lockstep stack (`Experiment.lockstep_key`), each with its own numbers.
A new hyperparameter is a field of `Hyperparameters` (with its default), a TOML rule in `config`,
and the training code that uses it.
"""

from dataclasses import dataclass, replace

ACTIVATIONS = ("relu", "sigmoid", "tanh")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")


@dataclass(frozen=True)
class Architecture:
    """What the members of a stack share: layer widths and the hidden activation."""

    inputs: int
    hidden: tuple[int, ...]
    classes: int = 10
    activation: str = "relu"

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(inputs, outputs) of each Dense layer."""
        widths = [self.inputs, *self.hidden, self.classes]
        return list(zip(widths[:-1], widths[1:], strict=True))

    @property
    def num_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in self.shapes)


@dataclass(frozen=True)
class EarlyStopping:
    """Keras' EarlyStopping, except that best weights are restored however the run ends."""

    monitor: str = "val_loss"
    patience: int = 0
    min_delta: float = 0.0
    restore_best_weights: bool = True


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


@dataclass(frozen=True)
class Experiment:
    """A resolved, checked config: everything a run needs but the data and the engine."""

    name: str
    description: str
    dataset: str
    validation_size: int
    hidden: tuple[int, ...]
    activation: str
    batch_size: int | None  # None: the whole training set
    hyperparameters: Hyperparameters
    table: dict  # the resolved TOML tables, for writing the config back out

    @property
    def seed(self) -> int:
        return self.hyperparameters.seed

    def architecture(self, inputs: int, classes: int = 10) -> Architecture:
        return Architecture(inputs, self.hidden, classes, self.activation)

    def with_seed(self, seed: int) -> "Experiment":
        return replace(
            self, hyperparameters=replace(self.hyperparameters, seed=seed), table={**self.table, "seed": seed}
        )

    def lockstep_key(self) -> tuple:
        """Experiments with equal keys can train as members of one stack."""
        return (self.dataset, self.validation_size, self.hidden, self.activation, self.batch_size)

    def training_key(self) -> tuple:
        """Experiments with equal keys train to the same result, bit for bit: one training serves them all."""
        return (*self.lockstep_key(), self.hyperparameters)
