"""Error analysis of a trained model on the test set, with scikit-learn's metrics.

What the lab report looks at for each model: the misclassified images, the class pairs most often
confused, per-class precision, recall and F1, and the confusion matrix normalised per true class.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnistlab import model


@dataclass
class Analysis:
    classes: list[str]
    accuracy: float
    misclassified: list[dict]  # {"index", "true", "predicted", "confidence"} in test-set order
    confused_pairs: list[dict]  # {"true", "predicted", "count"}, most frequent first
    per_class: list[dict]  # {"class", "precision", "recall", "f1", "support"}
    confusion: list[list[float]]  # rows: true class, normalised to sum to 1

    def to_dict(self) -> dict:
        return asdict(self)


def predict(params: torch.Tensor, arch: model.Architecture, x: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """(n, classes) softmax probabilities of one model, flat (P,) parameters, dropout off."""
    with torch.no_grad():
        parts = [model.logits(params.view(1, -1), arch, x[i : i + chunk])[0] for i in range(0, len(x), chunk)]
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
        misclassified=[
            {
                "index": int(i),
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "confidence": float(confidence[i]),
            }
            for i in wrong
        ],
        confused_pairs=[{"true": int(t), "predicted": int(p), "count": int(c)} for c, t, p in off_diagonal[:top_pairs]],
        per_class=[
            {
                "class": classes[c],
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in everything
        ],
        confusion=np.nan_to_num(normalised).tolist(),
    )


def summarise(values: list[float]) -> dict:
    """Mean, sample standard deviation and 95% t-interval of one metric over seeds."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def difference_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that two groups of seeds share a mean; None below 2 seeds each."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
