"""The PyTorch digit reader: the phase-2 model of a run folder, or the vote of every seed of a multi-seed
folder (their probabilities averaged)."""

import numpy as np
import torch

from mnistlab.errors import MnistlabError
from mnistlab.files import parse_json, read_limited
from mnistlab.nn.mlp import logits
from mnistlab.serving.prediction import Reader
from mnistlab.spec import Architecture
from mnistlab.studies.folder import RunFolder

FALLBACK_THRESHOLD = 0.5  # for run folders written before analysis.json carried one


class Predictor(Reader):
    def __init__(self, folder):
        folder = RunFolder(folder)
        if not folder.path.is_dir():
            raise MnistlabError(f"{folder.path}: no such run folder")
        runs = folder.seeds() or [folder]
        loaded = [_load(run) for run in runs]
        self.architecture = loaded[0][1]
        if any(arch != self.architecture for _, arch, _, _ in loaded):
            raise MnistlabError(f"{folder.path}: its seeds have different architectures; predict with one of them")
        self.classes = loaded[0][2]
        self.params = torch.stack([params for params, *_ in loaded])  # (seeds, P)
        self.threshold = float(np.mean([threshold for *_, threshold in loaded]))
        self.seeds = len(loaded)

    @torch.no_grad()
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(pixels, np.float32).reshape(len(pixels), -1))
        if x.shape[1] != self.architecture.inputs:
            raise MnistlabError(f"the model takes {self.architecture.inputs} pixels per image, not {x.shape[1]}")
        return torch.softmax(logits(self.params, self.architecture, x), -1).mean(0).numpy()


def _load(folder: RunFolder) -> tuple[torch.Tensor, Architecture, list[str], float]:
    """Weights, architecture, classes and threshold of one run folder, with model.json checked against the weights."""
    if not folder.file(RunFolder.WEIGHTS).is_file():
        raise MnistlabError(f"{folder.path}: no {RunFolder.WEIGHTS}: not a finished run folder")
    params, arch = folder.read_weights()
    described = folder.file(RunFolder.MODEL)
    try:
        model = parse_json(read_limited(described, 1 << 20))
        declared = Architecture.from_dict(model["architecture"])
        classes = [str(c) for c in model["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MnistlabError(f"{described}: not a model description written by mnistlab ({exc!r})") from None
    if declared != arch or len(classes) != arch.classes:
        raise MnistlabError(f"{described} does not match {RunFolder.WEIGHTS}: {declared} against {arch}")
    try:
        threshold = folder.read_analysis().confidence_threshold
    except MnistlabError:
        threshold = FALLBACK_THRESHOLD
    return params, arch, classes, threshold
