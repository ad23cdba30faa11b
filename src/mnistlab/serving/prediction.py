"""Predictions as a digit reader gives them: a label, its probability, the top K, and whether to trust it.
Shared by the PyTorch and the ONNX predictor; no torch here."""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mnistlab.serving.images import Prepared, read, to_mnist


@dataclass(frozen=True)
class Prediction:
    label: str | None  # None: no digit (no ink)
    probability: float | None
    top: list[tuple[str, float]]  # the K most probable classes
    probabilities: list[float]  # every class's, in class order
    uncertain: bool  # the probability is below the threshold that 99% of test digits reach
    empty: bool
    image: list[list[float]] | None  # the 28x28 the model saw

    def to_json(self, with_image: bool = True) -> dict:
        """As JSON: the 28x28 image the model saw only `with_image` (784 numbers per picture)."""
        found = asdict(self)
        if not with_image:
            del found["image"]
        return found

    def describe(self) -> str:
        if self.empty:
            return "no digit"
        top = ", ".join(f"{label} {p:.1%}" for label, p in self.top)
        return f"{self.label} ({self.probability:.1%}{', uncertain' if self.uncertain else ''}); top: {top}"


class Reader:
    """What both predictors share: classes, the uncertainty threshold, and turning probabilities into
    predictions. Subclasses give `probabilities(pixels (n, 28, 28)) -> (n, classes)`."""

    classes: list[str]
    threshold: float

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, prepared: list[Prepared], top: int = 3) -> list[Prediction]:
        inked = [p.pixels for p in prepared if p.pixels is not None]
        found = iter(self.probabilities(np.stack(inked)) if inked else [])
        return [self._prediction(p, None if p.pixels is None else next(found), top) for p in prepared]

    def predict_files(self, paths: list[Path], top: int = 3) -> list[Prediction]:
        return self.predict([to_mnist(read(Path(p))) for p in paths], top)

    def _prediction(self, prepared: Prepared, probabilities: np.ndarray | None, top: int) -> Prediction:
        if probabilities is None:
            return Prediction(None, None, [], [], False, True, None)
        order = np.argsort(-probabilities, kind="stable")
        best = int(order[0])
        return Prediction(
            label=self.classes[best],
            probability=float(probabilities[best]),
            top=[(self.classes[int(c)], float(probabilities[c])) for c in order[:top]],
            probabilities=[float(p) for p in probabilities],
            uncertain=bool(probabilities[best] < self.threshold),
            empty=False,
            image=np.round(prepared.pixels, 4).tolist(),
        )
