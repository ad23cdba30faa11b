"""Run folders: the one place that names a run folder's files, for writing them and reading them back.

    config.toml        the resolved config; `mnistlab run config.toml` runs it again
    metrics.json       clean loss and accuracy of every split, split sizes, epochs (see `records`)
    history.csv        per epoch of both phases: running training loss/accuracy, clean eval loss/accuracy
    model.safetensors  the phase-2 model, with model.json describing it
    summary.txt        the model as Keras' model.summary() shows it
    environment.json   versions, device, threads, seed, wall time
    analysis.json      the phase-2 model's errors on the test set: misclassified images, confused pairs,
                       per-class precision/recall/F1, normalised confusion matrix
    *.png              validation curves, retraining curve, misclassified, per class, confusion

A run that a search's pruner stopped in phase 1 has pruned.json instead of metrics.json (the epoch it
was stopped after, why, and its train and validation scores then), with its config, its phase-1
history, summary and environment: no model, no phase 2, no test score.

Runs of several seeds of one experiment live in seed-K folders below a common folder, which also gets
aggregate.json (every metric's mean, standard deviation and 95% interval over the seeds) and the
curves drawn as a mean with a band.

A run folder is built beside its target and renamed into place when complete (`write`), so a folder
with a metrics.json is a finished run and an interrupted one leaves nothing behind. Reading a run
needs none of what writing it does (figures, scikit-learn): a digit reader loads fast.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

from mnistlab.errors import MnistlabError
from mnistlab.evaluation.analysis import Analysis
from mnistlab.files import parse_json, parse_toml, read_limited, regular_file
from mnistlab.records import History, Metrics, PrunedRun

if TYPE_CHECKING:
    import torch
from mnistlab.spec import Architecture, Experiment
from mnistlab.studies import ownership

TEXT_BYTES = 64 << 20  # of any text file of a run folder: analysis.json of a poor model is about 1 MB
_SEED_NAME = re.compile(r"seed-(0|[1-9][0-9]{0,9})")


class RunFolder:
    """A run folder, a multi-seed folder above seed-K run folders, or a folder of either (a study)."""

    MARKER = ownership.MARKER
    CONFIG = "config.toml"
    METRICS = "metrics.json"
    PRUNED = "pruned.json"
    HISTORY = "history.csv"
    WEIGHTS = "model.safetensors"
    MODEL = "model.json"
    SUMMARY = "summary.txt"
    ENVIRONMENT = "environment.json"
    ANALYSIS = "analysis.json"
    ERROR_IMAGES = "errors.safetensors"  # the test images behind analysis.json, so a report needs no data set
    AGGREGATE = "aggregate.json"
    VALIDATION_CURVES = "validation_curves.png"
    RETRAINING_CURVE = "retraining_curve.png"
    MISCLASSIFIED = "misclassified.png"
    PER_CLASS = "per_class.png"
    CONFUSION = "confusion.png"
    SEED_PREFIX = "seed-"

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def is_finished(self) -> bool:
        return self.file(self.METRICS).is_file()

    @property
    def is_pruned(self) -> bool:
        return self.file(self.PRUNED).is_file() and not self.is_finished

    def seed(self, seed: int) -> "RunFolder":
        """The folder of one seed's run below a multi-seed folder."""
        return RunFolder(self.path / f"{self.SEED_PREFIX}{seed}")

    @property
    def is_seed_run(self) -> bool:
        return self.path.name.startswith(self.SEED_PREFIX)

    def seeds(self, pruned: bool = False) -> list["RunFolder"]:
        """The finished seed-K runs below a multi-seed folder (and the pruned ones, if asked), by seed. Only
        `seed-` and a seed as mnistlab writes it (`seed-7`, never `seed-07` or `seed-x`) name a seed's
        folder; other folders are not its."""
        found = [
            RunFolder(p)
            for p in self.path.glob(f"{self.SEED_PREFIX}*")
            if _SEED_NAME.fullmatch(p.name) and (RunFolder(p).is_finished or (pruned and RunFolder(p).is_pruned))
        ]
        return sorted(found, key=lambda f: int(f.path.name.removeprefix(self.SEED_PREFIX)))

    def trained_runs(self) -> list["RunFolder"]:
        """The runs this folder holds, finished or pruned: its seed-K runs, else itself if it is one."""
        return self.seeds(pruned=True) or ([self] if self.is_finished or self.is_pruned else [])

    def read_metrics(self) -> Metrics:
        return Metrics.from_json(self._read_json(self.METRICS), str(self.file(self.METRICS)))

    def read_pruned(self) -> PrunedRun:
        return PrunedRun.from_json(self._read_json(self.PRUNED), str(self.file(self.PRUNED)))

    def read_marker(self) -> dict | None:
        return ownership.read_marker(self.path)

    def read_history(self) -> History:
        return History.from_csv(self._read_text(self.HISTORY), str(self.file(self.HISTORY)))

    def read_analysis(self) -> Analysis:
        try:
            return Analysis.from_dict(self._read_json(self.ANALYSIS))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MnistlabError(f"{self.file(self.ANALYSIS)}: not an analysis written by mnistlab ({exc!r})") from None

    def read_error_images(self) -> dict[int, np.ndarray]:
        """Test index -> (rows, cols) uint8 image, for the images analysis.json names."""
        path = self.file(self.ERROR_IMAGES)
        try:
            if not regular_file(path):
                raise OSError("not a regular file")
            with safe_open(path, framework="numpy") as f:
                indices, images = f.get_tensor("indices"), f.get_tensor("images")
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise MnistlabError(f"{path}: not error images written by mnistlab ({exc})") from None
        if images.dtype != np.uint8 or images.ndim != 3 or len(indices) != len(images):
            raise MnistlabError(f"{path}: not error images written by mnistlab")
        return dict(zip(indices.tolist(), images, strict=True))

    def read_environment(self) -> dict:
        return self._read_json(self.ENVIRONMENT)

    def read_config(self) -> dict:
        try:
            return parse_toml(self._read_text(self.CONFIG))
        except ValueError as exc:
            raise MnistlabError(f"{self.file(self.CONFIG)}: invalid TOML ({exc})") from None

    def read_experiment(self) -> Experiment:
        """The run's experiment, typed, from its resolved config.toml."""
        from mnistlab.spec import config

        try:
            return config.load(str(self.file(self.CONFIG)))
        except MnistlabError as exc:
            raise MnistlabError(f"{self.file(self.CONFIG)}: not a config of mnistlab's ({exc})") from None

    def read_architecture(self) -> Architecture:
        """The model's architecture, from model.json."""
        try:
            return Architecture.from_dict(self._read_json(self.MODEL)["architecture"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MnistlabError(f"{self.file(self.MODEL)}: not a model description of mnistlab's ({exc})") from None

    def read_summary(self) -> str:
        return self._read_text(self.SUMMARY)

    def read_weights(self) -> tuple["torch.Tensor", Architecture]:
        from mnistlab.nn import weights  # torch, only for the weights: reading the rest of a run needs none

        return weights.load(self.file(self.WEIGHTS))

    def _read_text(self, name: str) -> str:
        try:
            return read_limited(self.file(name), TEXT_BYTES).decode("utf-8")
        except OSError as exc:
            raise MnistlabError(f"{self.file(name)}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise MnistlabError(f"{self.file(name)}: not UTF-8 text") from None

    def _read_json(self, name: str) -> dict:
        try:
            found = parse_json(self._read_text(name))
        except ValueError as exc:
            raise MnistlabError(f"{self.file(name)}: not valid JSON ({exc})") from None
        if not isinstance(found, dict):
            raise MnistlabError(f"{self.file(name)}: expected a JSON object, found {type(found).__name__}")
        return found


@dataclass
class SeedRun:
    """One seed's finished run, read back from its folder (a run folder, or a seed-K folder below a
    multi-seed one)."""

    folder: RunFolder
    metrics: Metrics
    history: History

    @classmethod
    def load(cls, folder: RunFolder | Path | str) -> "SeedRun":
        folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
        if not folder.is_finished:
            raise MnistlabError(f"{folder.path}: not a finished run folder (no {RunFolder.METRICS})")
        metrics, history = folder.read_metrics(), folder.read_history()
        for phase, epochs in (("phase1", history.phase1), ("phase2", history.phase2)):
            if [e.epoch for e in epochs] != list(range(1, metrics.epochs[phase] + 1)):
                raise MnistlabError(
                    f"{folder.file(RunFolder.HISTORY)}: {len(epochs)} epochs of {phase}, where metrics.json says "
                    f"{metrics.epochs[phase]}"
                )
        return cls(folder, metrics, history)

    @property
    def name(self) -> str:
        return self.metrics.preset

    @property
    def seed(self) -> int:
        return self.metrics.seed

    def analysis(self) -> Analysis:
        return self.folder.read_analysis()
