"""Error analysis of a trained model on the test set, with scikit-learn's metrics, on numpy arrays: reading
an analysis back (a report, a digit reader) needs neither torch nor scikit-learn.

What the lab report looks at for each model: the misclassified images, the class pairs most often
confused, per-class precision, recall and F1, and the confusion matrix normalised per true class.
"""

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Misclassified:
    index: int  # in the test set
    true: int
    predicted: int
    confidence: float  # the predicted class's probability


@dataclass(frozen=True)
class TopLoss:
    """One of the test images the model is most wrong about, as fastai shows them, and the true class's
    probability beside the prediction's, which fastai does not show."""

    index: int
    true: int
    predicted: int
    loss: float  # -log p(true class)
    predicted_probability: float
    true_probability: float


@dataclass(frozen=True)
class ConfusedPair:
    true: int
    predicted: int
    count: int


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Analysis:
    classes: list[str]
    accuracy: float
    misclassified: list[Misclassified]  # in test-set order
    confused_pairs: list[ConfusedPair]  # most frequent first
    per_class: list[ClassScores]
    confusion: list[list[float]]  # rows: true class, normalised to sum to 1
    top_losses: list[TopLoss]  # highest loss first
    # The confidence (probability of the predicted class) that 99% of the test digits reach: a digit
    # reader calls a prediction below it uncertain (1% of real digits; see the README for scribbles).
    confidence_threshold: float

    def to_dict(self) -> dict:
        """As analysis.json holds it."""
        table = asdict(self)
        table["per_class"] = [{"class": row.pop("name"), **row} for row in table["per_class"]]
        return table

    @classmethod
    def from_dict(cls, table: dict) -> "Analysis":
        return cls(
            classes=list(table["classes"]),
            accuracy=float(table["accuracy"]),
            misclassified=[Misclassified(**row) for row in table["misclassified"]],
            confused_pairs=[ConfusedPair(**row) for row in table["confused_pairs"]],
            per_class=[
                ClassScores(name=row["class"], **{k: v for k, v in row.items() if k != "class"})
                for row in table["per_class"]
            ],
            confusion=[list(map(float, row)) for row in table["confusion"]],
            top_losses=[TopLoss(**row) for row in table["top_losses"]],
            confidence_threshold=float(table["confidence_threshold"]),
        )

    def counts(self) -> np.ndarray:
        """(classes, classes) how many test images of class i the model read as j, off the diagonal."""
        counts = np.zeros((len(self.classes), len(self.classes)), dtype=int)
        for item in self.misclassified:
            counts[item.true, item.predicted] += 1
        return counts


def analyse(
    probabilities: np.ndarray, labels: np.ndarray, classes: list[str], top_pairs: int = 10, top_losses: int = 16
) -> Analysis:
    """Everything the report shows about one model's errors, from its test-set probabilities (n, classes)
    and the true labels (n,)."""
    # Here, not at the top: reading an analysis back (a report, a digit reader) needs no scikit-learn.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    true_probability = probabilities[np.arange(len(labels)), labels]
    losses = -np.log(np.maximum(true_probability, np.finfo(np.float32).tiny))
    worst = np.argsort(-losses, kind="stable")[:top_losses]
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    wrong = np.flatnonzero(predicted != labels)
    everything = list(range(len(classes)))
    counts = confusion_matrix(labels, predicted, labels=everything)
    off_diagonal = [(counts[t, p], t, p) for t in everything for p in everything if t != p and counts[t, p]]
    off_diagonal.sort(key=lambda item: (-item[0], item[1], item[2]))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    normalised = confusion_matrix(labels, predicted, labels=everything, normalize="true")
    return Analysis(
        classes=list(classes),
        accuracy=float((predicted == labels).mean()),
        misclassified=[Misclassified(int(i), int(labels[i]), int(predicted[i]), float(confidence[i])) for i in wrong],
        confused_pairs=[ConfusedPair(int(t), int(p), int(c)) for c, t, p in off_diagonal[:top_pairs]],
        per_class=[
            ClassScores(classes[c], float(precision[c]), float(recall[c]), float(f1[c]), int(support[c]))
            for c in everything
        ],
        confusion=np.nan_to_num(normalised).tolist(),
        confidence_threshold=float(np.quantile(confidence, 0.01)),
        top_losses=[
            TopLoss(
                int(i),
                int(labels[i]),
                int(predicted[i]),
                float(losses[i]),
                float(confidence[i]),
                float(true_probability[i]),
            )
            for i in worst
        ],
    )


def error_images(analysis: Analysis, images: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The test images the report shows for one run (every misclassified one and the top losses) as uint8,
    with their indices: what a run folder keeps so that its report needs no data set. `images` are the
    test images as floats in [0, 1], (n, pixels)."""
    indices = sorted({m.index for m in analysis.misclassified} | {t.index for t in analysis.top_losses})
    chosen = np.asarray(images)[indices].reshape(len(indices), *shape)
    return {"indices": np.asarray(indices, dtype=np.int64), "images": np.round(chosen * 255).astype(np.uint8)}
