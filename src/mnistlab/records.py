"""What a run records, as typed values, and nothing that trains: per-epoch numbers, each phase's fit, the
clean scores, and a run folder's metrics.json and history.csv. Reading a run folder or building a report
needs only this module, never the training engine (it imports no torch).

metrics.json is a stable contract for scripts: for each split, `loss` and `accuracy` (fractions); the
epochs of each phase; `parameters`, `seed`, `wall_seconds`. `format` says which layout wrote it. A run
that a search's pruner stopped has pruned.json instead (`PrunedRun`).
"""

import csv
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from mnistlab.data.catalog import SPLITS
from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    import torch


@dataclass
class Epoch:
    epoch: int  # 1-based
    loss: float  # running mean over the epoch's batches, dropout on: what Keras prints
    accuracy: float
    eval_loss: float  # clean: dropout off, penalty included
    eval_accuracy: float
    seconds: float


@dataclass
class Fit:
    params: "torch.Tensor"  # (P,) the final weights: the best epoch's when early stopping restored them
    history: list[Epoch]
    best_epoch: int | None  # by the early-stopping monitor
    stopped_early: bool
    restored_best: bool = False  # params are the best epoch's, not the last one's
    diverged: bool = False  # its loss stopped being a finite number: it ended there, and means nothing
    pruned: str | None = None  # why a search's pruner stopped it after its last epoch, or None
    row_steps: int = 0  # steps its stack computed its row: a row stays until the stack sheds it

    @property
    def epochs(self) -> int:
        return len(self.history)


class EpochNumbers(NamedTuple):
    """Per member, an epoch's running training loss and accuracy, and its clean evaluation."""

    loss: list[float]
    accuracy: list[float]
    eval_loss: list[float]
    eval_accuracy: list[float]


@dataclass(frozen=True)
class Score:
    """A clean evaluation of one model on one split."""

    loss: float
    accuracy: float


@dataclass
class RunResult:
    """One member's run of the protocol."""

    phase1: Fit  # on the train split, evaluated on validation
    phase2: Fit | None  # fresh, on the full training set, evaluated on test; None where phase 1 was pruned
    scores: dict[str, Score]  # split -> clean score: train and validation after phase 1, full and test after 2
    seconds: float  # wall time of the stack this member trained in

    @property
    def pruned(self) -> bool:
        return self.phase1.pruned is not None

    @property
    def weights(self) -> "torch.Tensor":
        """(P,) the phase-2 model: the one a run folder keeps."""
        return self.phase2.params

    @property
    def diverged(self) -> str | None:
        """Where its loss stopped being a finite number ("epoch 3 of phase 1"), or None: a run that
        diverged means nothing, and is not written."""
        for number, phase in ((1, self.phase1), (2, self.phase2)):
            if phase is not None and phase.diverged:
                return f"epoch {phase.epochs} of phase {number}"
        if not all(math.isfinite(s.loss) and math.isfinite(s.accuracy) for s in self.scores.values()):
            return "its final evaluation"
        return None


FORMAT = 3  # of a run folder, written in metrics.json; 2 had no error images, 1 no split sizes


@dataclass(frozen=True)
class StoppingOutcome:
    """How early stopping ended phase 1, when the experiment had it."""

    stopped_early: bool
    best_epoch: int | None
    restored_best_weights: bool


@dataclass(frozen=True)
class Metrics:
    preset: str
    seed: int
    dataset: str
    parameters: int
    scores: dict[str, Score]  # split -> clean score
    split_sizes: dict[str, int]  # split -> images
    epochs: dict[str, int]  # phase1, phase2 -> epochs trained
    early_stopping: StoppingOutcome
    misclassified: int  # test images the phase-2 model gets wrong
    wall_seconds: float  # of the whole stack the run trained in
    stack_size: int  # models that stack trained: a run riding another's row (`spec.leaders`) is none

    @classmethod
    def of(
        cls,
        result: RunResult,
        *,
        preset: str,
        seed: int,
        dataset: str,
        parameters: int,
        split_sizes: dict[str, int],
        misclassified: int,
        stack_size: int,
    ) -> "Metrics":
        return cls(
            preset=preset,
            seed=seed,
            dataset=dataset,
            parameters=parameters,
            scores=dict(result.scores),
            split_sizes=dict(split_sizes),
            epochs={"phase1": result.phase1.epochs, "phase2": result.phase2.epochs},
            early_stopping=StoppingOutcome(
                result.phase1.stopped_early, result.phase1.best_epoch, result.phase1.restored_best
            ),
            misclassified=misclassified,
            wall_seconds=result.seconds,
            stack_size=stack_size,
        )

    def to_json(self) -> dict:
        scores = {split: {"loss": s.loss, "accuracy": s.accuracy} for split, s in self.scores.items()}
        scores["test"]["misclassified"] = self.misclassified
        return {
            "format": FORMAT,
            "preset": self.preset,
            "seed": self.seed,
            "dataset": self.dataset,
            "parameters": self.parameters,
            **scores,
            "split_sizes": self.split_sizes,
            "epochs": self.epochs,
            "early_stopping": {
                "stopped_early": self.early_stopping.stopped_early,
                "best_epoch": self.early_stopping.best_epoch,
                "restored_best_weights": self.early_stopping.restored_best_weights,
            },
            "wall_seconds": self.wall_seconds,
            "stack_size": self.stack_size,
        }

    @classmethod
    def from_json(cls, table: dict, origin: str) -> "Metrics":
        if not isinstance(table, dict):
            raise MnistlabError(f"{origin}: expected a JSON object")
        written = table.get("format", 1)
        if written != FORMAT:
            newer = isinstance(written, int) and written > FORMAT
            raise MnistlabError(
                f"{origin}: written by {'a newer' if newer else 'an older'} mnistlab (format {written}, this one reads "
                f"{FORMAT}); {'upgrade mnistlab' if newer else 'run it again'}"
            )
        try:
            stopping = table["early_stopping"]
            return cls(
                preset=_typed(table["preset"], str),
                seed=_typed(table["seed"], int),
                dataset=_typed(table["dataset"], str),
                parameters=_typed(table["parameters"], int),
                scores={
                    split: Score(_typed(table[split]["loss"], float), _typed(table[split]["accuracy"], float))
                    for split in SPLITS
                },
                split_sizes={split: _typed(table["split_sizes"][split], int) for split in SPLITS},
                epochs={phase: _typed(table["epochs"][phase], int) for phase in ("phase1", "phase2")},
                early_stopping=StoppingOutcome(
                    _typed(stopping["stopped_early"], bool),
                    stopping["best_epoch"] if stopping["best_epoch"] is None else _typed(stopping["best_epoch"], int),
                    _typed(stopping["restored_best_weights"], bool),
                ),
                misclassified=_typed(table["test"]["misclassified"], int),
                wall_seconds=_typed(table["wall_seconds"], float),
                stack_size=_typed(table["stack_size"], int),
            )
        except KeyError as exc:
            raise MnistlabError(f"{origin}: missing {exc}") from None
        except TypeError as exc:
            raise MnistlabError(f"{origin}: {exc}") from None


PRUNED_FORMAT = 1  # of pruned.json
PRUNED_SPLITS = ("train", "validation")  # what a pruned run was evaluated on: it has no phase 2


@dataclass(frozen=True)
class PrunedRun:
    """A search's run that its pruner stopped in phase 1: pruned.json, in place of metrics.json. It has
    no phase 2, no test score and no model: only its phase-1 history and the validation score it had."""

    preset: str
    seed: int
    dataset: str
    epoch: int  # the last epoch it trained; it was stopped after it
    reason: str  # the pruner's rule, as it applied to this run
    pruner: str  # the search's pruner settings, as `pruning.describe` names them
    scores: dict[str, Score]  # train and validation: clean, after that epoch
    wall_seconds: float  # of the whole stack it trained in

    def to_json(self) -> dict:
        return {
            "format": PRUNED_FORMAT,
            "preset": self.preset,
            "seed": self.seed,
            "dataset": self.dataset,
            "pruned_after_epoch": self.epoch,
            "reason": self.reason,
            "pruner": self.pruner,
            **{split: {"loss": s.loss, "accuracy": s.accuracy} for split, s in self.scores.items()},
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, table: dict, origin: str) -> "PrunedRun":
        if not isinstance(table, dict) or table.get("format") != PRUNED_FORMAT:
            raise MnistlabError(f"{origin}: not a pruned run that this mnistlab wrote (format {PRUNED_FORMAT})")
        try:
            return cls(
                preset=_typed(table["preset"], str),
                seed=_typed(table["seed"], int),
                dataset=_typed(table["dataset"], str),
                epoch=_typed(table["pruned_after_epoch"], int),
                reason=_typed(table["reason"], str),
                pruner=_typed(table["pruner"], str),
                scores={
                    split: Score(_typed(table[split]["loss"], float), _typed(table[split]["accuracy"], float))
                    for split in PRUNED_SPLITS
                },
                wall_seconds=_typed(table["wall_seconds"], float),
            )
        except KeyError as exc:
            raise MnistlabError(f"{origin}: missing {exc}") from None
        except TypeError as exc:
            raise MnistlabError(f"{origin}: {exc}") from None


def _typed(value, kind: type):
    """`value` if it is a `kind` (an int passes for a float, a bool for nothing else); raises TypeError."""
    fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        fits, value = True, float(value)
    if not fits:
        raise TypeError(f"{value!r} where a {kind.__name__} belongs")
    return value


@dataclass(frozen=True)
class History:
    """Per epoch of each phase: running training loss and accuracy, clean loss and accuracy of the
    evaluated split (validation in phase 1, test in phase 2)."""

    phase1: list[Epoch]
    phase2: list[Epoch]

    COLUMNS = ("phase", "epoch", "loss", "accuracy", "eval_split", "eval_loss", "eval_accuracy", "seconds")
    EVALUATED = {1: "validation", 2: "test"}

    @classmethod
    def of(cls, result: RunResult) -> "History":
        return cls(result.phase1.history, result.phase2.history if result.phase2 else [])

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.COLUMNS)
        for phase, epochs in ((1, self.phase1), (2, self.phase2)):
            for e in epochs:
                writer.writerow(
                    (
                        phase,
                        e.epoch,
                        f"{e.loss:.6g}",
                        f"{e.accuracy:.6g}",
                        self.EVALUATED[phase],
                        f"{e.eval_loss:.6g}",
                        f"{e.eval_accuracy:.6g}",
                        f"{e.seconds:.4f}",
                    )
                )
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str, origin: str) -> "History":
        phases = {1: [], 2: []}
        try:
            for row in csv.DictReader(io.StringIO(text)):
                phases[int(row["phase"])].append(
                    Epoch(
                        int(row["epoch"]),
                        float(row["loss"]),
                        float(row["accuracy"]),
                        float(row["eval_loss"]),
                        float(row["eval_accuracy"]),
                        float(row["seconds"]),
                    )
                )
        except (KeyError, ValueError, TypeError) as exc:
            raise MnistlabError(f"{origin}: not a history written by mnistlab ({type(exc).__name__}: {exc})") from None
        return cls(phases[1], phases[2])
