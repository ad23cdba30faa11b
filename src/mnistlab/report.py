"""The study report: one self-contained HTML file, and a Markdown twin, over any set of run folders.

It sets every number beside the lab report's published one (`reference.toml`), says where the
report's text contradicts its numbers, reads bias and variance off each run, tells real differences
from seed noise when runs have several seeds, and shows each run's figures and error analysis.

The report is built from the run folders alone, so it can be rebuilt at any time, for any mix of
single-seed and multi-seed runs, without training anything.
"""

import json
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mnistlab import __version__, evaluation, figures, runs
from mnistlab.document import Bullets, Heading, Image, Paragraph, Preformatted, Table, to_html, to_markdown
from mnistlab.errors import MnistlabError
from mnistlab.files import write_atomic

# The lab report's order of sections, for the order of runs in ours.
REPORT_ORDER = (
    "provided",
    "powerful",
    "l2",
    "l2-strong",
    "l1",
    "dropout",
    "early-stopping",
    "final",
    "final-as-written",
)
SPLIT_NAMES = {"train": "train (50k)", "validation": "validation", "full": "60k", "test": "test"}
SIGNIFICANCE = 0.05


# --- the runs -------------------------------------------------------------------------------------


@dataclass
class Group:
    """The runs of one experiment: one folder, or the seed-K folders below a common one."""

    folder: Path
    runs: list[Path]
    metrics: list[dict] = field(init=False)
    histories: list[list[dict]] = field(init=False)

    def __post_init__(self):
        self.metrics = [runs.read_metrics(f) for f in self.runs]
        self.histories = [runs.read_history(f) for f in self.runs]

    label: str = field(init=False, default="")  # the preset, and the folder where two groups share one

    @property
    def name(self) -> str:
        return self.metrics[0]["preset"]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def values(self, split: str, key: str) -> list[float]:
        return [m[split][key] for m in self.metrics]

    def stat(self, split: str, key: str) -> dict:
        return evaluation.summarise(self.values(split, key))

    def means(self) -> dict:
        return {split: {k: self.stat(split, k)["mean"] for k in ("accuracy", "loss")} for split in SPLIT_NAMES}

    def phase(self, phase: int) -> list[dict[str, list[float]]]:
        return [runs.phase_columns(h, phase) for h in self.histories]


def discover(paths: list[Path]) -> list[Group]:
    """Run groups in run folders, multi-seed folders, or folders of those (a study), in the report's order."""
    groups: list[Group] = []
    for path in map(Path, paths):
        if seeds := runs.seed_folders(path):  # a multi-seed run, even over an older single run's files
            groups.append(Group(path, seeds))
        elif runs.is_finished(path):
            groups.append(Group(path, [path]))
        elif path.is_dir() and (
            children := [c for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        ):
            found = discover(children) if any(runs.is_finished(c) or runs.seed_folders(c) for c in children) else []
            if not found:
                raise MnistlabError(f"{path}: no finished runs in it")
            groups += found
        else:
            raise MnistlabError(f"{path}: not a run folder (no {runs.METRICS}), nor a folder of runs")
    order = {name: i for i, name in enumerate(REPORT_ORDER)}
    groups.sort(key=lambda g: (order.get(g.name, len(order)), g.name, str(g.folder)))
    names = [g.name for g in groups]
    for g in groups:
        where = g.folder.name if g.folder.name != g.name else g.folder.parent.name
        g.label = g.name if names.count(g.name) == 1 else f"{g.name} ({where})"
    return groups


def load_reference() -> dict:
    return tomllib.loads((resources.files("mnistlab") / "reference.toml").read_text())


# --- what the numbers say -------------------------------------------------------------------------


def within_rounding(published: float, ours: float, key: str) -> bool:
    """Whether `ours`, printed as the report prints it, would read as the published value."""
    if key == "accuracy":
        return round(ours * 100) == round(published * 100)  # whole percent
    return round(ours, 4) == round(published, 4)  # four decimals


def compare(group: Group, reference: dict) -> list[dict]:
    """Published vs ours, for every split and metric the report gives for this experiment."""
    rows = []
    for split in ("train", "validation", "full", "test"):
        for key in ("accuracy", "loss"):
            if split not in reference or key not in reference[split]:
                continue
            published, stat = reference[split][key], group.stat(split, key)
            inside = None if stat["low"] is None else stat["low"] <= published <= stat["high"]
            rows.append(
                {
                    "split": split,
                    "key": key,
                    "published": published,
                    "ours": stat["mean"],
                    "difference": stat["mean"] - published,
                    "rounding": within_rounding(published, stat["mean"], key),
                    "inside_interval": inside,
                }
            )
    return rows


def overfitting(history: list[dict[str, list[float]]]) -> str:
    """Where validation loss turns up while training loss still falls, from phase 1 (mean over seeds)."""
    val, train = _mean_columns(history, "eval_loss"), _mean_columns(history, "loss")
    best = min(range(len(val)), key=val.__getitem__)
    last = len(val) - 1
    if best < last and val[last] > 1.1 * val[best] and train[last] < train[best]:
        return (
            f"Validation loss bottoms out at epoch {best + 1} ({val[best]:.4f}) and ends at {val[last]:.4f} "
            f"(+{val[last] / val[best] - 1:.0%}) while training loss keeps falling ({train[best]:.4f} to "
            f"{train[last]:.4f}): it overfits from about epoch {best + 1}."
        )
    return (
        f"Validation loss is at or near its lowest ({val[best]:.4f}, epoch {best + 1}) when training ends: "
        f"no sign of overfitting in {last + 1} epochs."
    )


def _mean_columns(history: list[dict[str, list[float]]], key: str) -> list[float]:
    length = min(len(h[key]) for h in history)
    return [sum(h[key][i] for h in history) / len(history) for i in range(length)]


def verdict(numbers: dict, phase1: list[dict[str, list[float]]], best_train_error: float) -> str:
    """Bias and variance in a sentence, from clean train/validation numbers ({split: {"accuracy", "loss"}}),
    the phase-1 histories (one per seed) and the lowest training error among the runs compared."""
    train, val = numbers["train"], numbers["validation"]
    train_error = 1 - train["accuracy"]
    excess = (train_error - best_train_error) * 100
    bias = "high bias" if excess >= 1 else "some bias" if excess >= 0.3 else "low bias"
    gap = (train["accuracy"] - val["accuracy"]) * 100
    variance = "high variance" if gap >= 1.5 else "moderate variance" if gap >= 0.5 else "low variance"
    return (
        f"{bias.capitalize()} and {variance}: training error {train_error:.2%} against the best run's "
        f"{best_train_error:.2%}; validation error {gap:+.2f} points from training error, validation loss "
        f"{val['loss'] / train['loss']:.1f}x training loss ({val['loss']:.4f} vs {train['loss']:.4f}). "
        + overfitting(phase1)
    )


def significance(groups: list[Group]) -> list[list[dict | None]]:
    """Pairwise difference in mean test accuracy (row minus column) and Welch's p-value."""
    table = []
    for a in groups:
        row = []
        for b in groups:
            if a is b:
                row.append(None)
                continue
            p = evaluation.difference_p_value(a.values("test", "accuracy"), b.values("test", "accuracy"))
            diff = a.stat("test", "accuracy")["mean"] - b.stat("test", "accuracy")["mean"]
            row.append({"difference": diff, "p": p})
        table.append(row)
    return table


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def _cell(stat: dict, key: str) -> str:
    show = _percent if key == "accuracy" else (lambda v: f"{v:.4f}")
    if stat["low"] is None:
        return show(stat["mean"])
    half = (stat["high"] - stat["low"]) / 2
    return f"{show(stat['mean'])} ± {show(half) if key == 'loss' else f'{half * 100:.2f}'}"


def _results(groups: list[Group]) -> list:
    header = [
        "experiment",
        "seeds",
        "parameters",
        "epochs",
        *(f"{SPLIT_NAMES[s]} {k}" for s in SPLIT_NAMES for k in ("acc", "loss")),
        "wall time",
    ]
    rows = []
    for g in groups:
        epochs = "/".join(
            f"{evaluation.summarise([m['epochs'][p] for m in g.metrics])['mean']:g}" for p in ("phase1", "phase2")
        )
        numbers = [_cell(g.stat(s, k), k) for s in SPLIT_NAMES for k in ("accuracy", "loss")]
        wall = sum(m["wall_seconds"] / m["lockstep_size"] for m in g.metrics)
        rows.append([g.label, str(g.seeds), f"{g.metrics[0]['parameters']:,}", epochs, *numbers, f"{wall:.0f} s"])
    return [
        Heading(2, "Results"),
        Paragraph(
            "Clean evaluations, as Keras' evaluate reports them: dropout off, L1/L2 penalty included in the loss. "
            "train is the 50k split after phase 1, validation the last 10k of the training file, 60k the whole "
            "training file after retraining (phase 2), test the 10k test images. With several seeds: mean ± the "
            "half-width of the 95% interval (t-distribution). Epochs: phase 1 / phase 2. Wall time: this run's "
            "share of the lockstep stack it trained in."
        ),
        Table(header, rows),
    ]


def _beside_the_report(groups: list[Group], reference: dict, chart: Path) -> list:
    blocks = [
        Heading(2, "Beside the lab report"),
        Paragraph(
            "The lab report prints accuracies in whole percent and losses to four decimals. A difference is "
            "'within rounding' when our number, printed the same way, reads as the published one. With several "
            "seeds we also say whether the published value lies inside our 95% interval: outside it, seed noise "
            "alone does not explain the gap."
        ),
        Image(chart, "test error per experiment beside the lab report"),
    ]
    for g in groups:
        entry = reference.get(g.name)
        if entry is None or "train" not in entry:
            continue
        figures_text = (
            f", figure{'s' if len(entry['figures']) > 1 else ''} {', '.join(map(str, entry['figures']))}"
            if entry["figures"]
            else ""
        )
        blocks.append(Heading(3, f"{g.label}: section {entry['section']}{figures_text}"))
        rows = []
        for row in compare(g, entry):
            show = _percent if row["key"] == "accuracy" else (lambda v: f"{v:.4f}")
            if row["key"] == "accuracy":
                diff = f"{row['difference'] * 100:+.2f} pts"
            else:
                diff = f"{row['difference']:+.4f} ({row['difference'] / row['published']:+.0%})"
            note = "within rounding" if row["rounding"] else "!beyond rounding"
            if row["inside_interval"] is not None:
                note += "; inside our 95% interval" if row["inside_interval"] else "; outside our 95% interval"
            rows.append([SPLIT_NAMES[row["split"]], row["key"], show(row["published"]), show(row["ours"]), diff, note])
        ours_epochs = g.metrics[0]["epochs"]["phase1"]
        rows.append(["", "epochs", str(entry["epochs"]), f"{ours_epochs}", f"{ours_epochs - entry['epochs']:+d}", ""])
        blocks.append(Table(["split", "metric", "lab report", "mnistlab", "difference", "verdict"], rows))
    blocks.append(Heading(3, "Where the report's text contradicts its numbers"))
    by_name = {g.name: g for g in groups}
    items = []
    for item in reference.get("contradiction", []):
        measured = [
            f"{n} {_percent(by_name[n].stat('test', 'accuracy')['mean'])} test accuracy, train loss "
            f"{by_name[n].stat('train', 'loss')['mean']:.4f}"
            for n in item["presets"]
            if n in by_name
        ]
        items.append(
            f"{item['claim']} {item['finding']}" + (f" Measured here: {'; '.join(measured)}." if measured else "")
        )
    blocks.append(Bullets(items))
    return blocks


def _significance_blocks(groups: list[Group]) -> list:
    blocks = [Heading(2, "Which differences are real")]
    multi = [g for g in groups if g.seeds >= 2]
    if len(multi) < 2:
        blocks.append(
            Paragraph(
                "Single runs cannot tell a 0.2-point difference from seed noise. Run the study with "
                "--seeds N (N >= 2) and this section compares every pair of experiments with Welch's t-test."
            )
        )
        return blocks
    blocks.append(
        Paragraph(
            f"Difference in mean test accuracy, row minus column, in points, with the two-sided p-value "
            f"of Welch's t-test over seeds. Bold: real at p < {SIGNIFICANCE} (the seeds of the two "
            f"experiments are unlikely to share a mean); the rest is within seed noise."
        )
    )
    rows = []
    for g, row in zip(multi, significance(multi), strict=True):
        cells = []
        for entry in row:
            if entry is None:
                cells.append("")
            else:
                text = f"{entry['difference'] * 100:+.2f} (p={entry['p']:.2g})"
                cells.append(("!" if entry["p"] < SIGNIFICANCE else "") + text)
        rows.append([g.label, *cells])
    blocks.append(Table(["", *(g.label for g in multi)], rows))
    return blocks


def _run_blocks(group: Group) -> list:
    first = group.runs[0]
    config = tomllib.loads((first / "config.toml").read_text())
    analysis = json.loads((first / "analysis.json").read_text())
    classes = analysis["classes"]
    name = group.label
    seeds_note = (
        f" {group.seeds} seeds; curves are the mean with one standard deviation; the error analysis is "
        f"seed {group.metrics[0]['seed']}'s."
        if group.seeds > 1
        else ""
    )
    blocks = [
        Heading(3, name),
        Paragraph(
            f"{config.get('description', '')}.{seeds_note} Test accuracy "
            f"{_cell(group.stat('test', 'accuracy'), 'accuracy')}, {group.metrics[0]['parameters']:,} parameters. "
            f"Folder: {group.folder}."
        ),
        Image(group.folder / "validation_curves.png", f"{name}: validation curves"),
        Image(group.folder / "retraining_curve.png", f"{name}: retraining on 60k"),
        Image(first / "misclassified.png", f"{name}: first 9 misclassified test images"),
        Paragraph("The class pairs most often confused on the test set:"),
        Table(
            ["true", "predicted", "count"],
            [[classes[p["true"]], classes[p["predicted"]], str(p["count"])] for p in analysis["confused_pairs"][:6]],
        ),
        Image(first / "per_class.png", f"{name}: per-class precision, recall, F1"),
        Paragraph("Per-class scores on the test set (scikit-learn):"),
        Table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])]
                for r in analysis["per_class"]
            ],
        ),
        Image(first / "confusion.png", f"{name}: normalised confusion matrix"),
        Preformatted((first / "summary.txt").read_text()),
    ]
    return blocks


def build(paths: list[Path], out: Path) -> tuple[Path, Path]:
    """Write the HTML report to `out` and its Markdown twin beside it; returns both paths."""
    groups = discover(paths)
    reference = load_reference() if all(g.metrics[0]["dataset"] == "mnist" for g in groups) else {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart = out.with_name(out.stem + ".accuracy.png")
    figures.accuracy_comparison(
        [
            {
                "name": g.label,
                **g.stat("test", "accuracy"),
                "published": reference.get(g.name, {}).get("test", {}).get("accuracy"),
            }
            for g in groups
        ],
        chart,
        "Test error, mnistlab beside the lab report",
    )
    environment = json.loads((groups[0].runs[0] / "environment.json").read_text())
    datasets = sorted({g.metrics[0]["dataset"] for g in groups})
    best_train_error = min(1 - g.stat("train", "accuracy")["mean"] for g in groups)
    blocks = [
        Heading(1, "mnistlab report"),
        Paragraph(
            f"{sum(g.seeds for g in groups)} runs of {len(groups)} experiments on {', '.join(datasets)}, "
            f"built {time.strftime('%Y-%m-%d %H:%M')} by mnistlab {__version__}. Trained with torch "
            f"{environment['torch']} on {environment['device_name']} ({environment['device']}, "
            f"{environment['threads']} threads)."
        ),
        *_results(groups),
    ]
    if reference:
        blocks += _beside_the_report(groups, reference, chart)
    else:
        blocks += [
            Heading(2, "Test error, mnistlab beside the lab report"),
            Image(chart, "test accuracy per experiment"),
            Paragraph("The lab report's numbers are for MNIST; these runs are on another data set."),
        ]
    readings = [f"{g.label}: {verdict(g.means(), g.phase(1), best_train_error)}" for g in groups]
    blocks += [Heading(2, "Bias and variance"), Bullets(readings)]
    blocks += _significance_blocks(groups)
    blocks.append(Heading(2, "Runs"))
    for g in groups:
        blocks += _run_blocks(g)
    md = out.with_suffix(".md")
    write_atomic(out, to_html(blocks))
    write_atomic(md, to_markdown(blocks, md.parent))
    return out, md
