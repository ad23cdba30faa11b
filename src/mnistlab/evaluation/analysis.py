"""Error analysis of a trained model on the test set, with scikit-learn's metrics.

What the lab report looks at for each model: the misclassified images, the class pairs most often
confused, per-class precision, recall and F1, and the confusion matrix normalised per true class.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnistlab.nn.mlp import logits
from mnistlab.spec import Architecture


@dataclass(frozen=True)
class Misclassified:
    index: int  # in the test set
    true: int
    predicted: int
    confidence: float  # the predicted class's probability


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
        )


def predict(params: torch.Tensor, arch: Architecture, x: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """(n, classes) softmax probabilities of one model, flat (P,) parameters, dropout off."""
    with torch.no_grad():
        parts = [logits(params.view(1, -1), arch, x[i : i + chunk])[0] for i in range(0, len(x), chunk)]
    return torch.softmax(torch.cat(parts), dim=1)


def analyse(probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str], top_pairs: int = 10) -> Analysis:
    """Everything the report shows about one model's errors, from its test-set probabilities."""
    probabilities, labels = probabilities.cpu().numpy(), labels.cpu().numpy()
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
    )
