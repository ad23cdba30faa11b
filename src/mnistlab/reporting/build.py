"""The study report: one self-contained HTML file, and a Markdown twin, over any set of run folders.

It sets every number beside the lab report's published one (`spec/lab.toml`), says where the
report's text contradicts its numbers, reads bias and variance off each run, tells real differences
from seed noise when runs have several seeds, and shows each run's figures and error analysis.

The report is built from the run folders alone, so it can be rebuilt at any time, for any mix of
single-seed and multi-seed runs, without training anything.
"""

import time
import warnings
from pathlib import Path

from mnistlab.data import SPLITS, size_label
from mnistlab.errors import MnistlabError
from mnistlab.evaluation import figures
from mnistlab.evaluation.statistics import PAIRED
from mnistlab.files import check_output, is_ours, write_atomic
from mnistlab.reporting import agreement, beyond, digits, lab, sweep_section
from mnistlab.reporting.document import (
    Bullets,
    Flagged,
    Heading,
    Image,
    Paragraph,
    Preformatted,
    Table,
    to_html,
    to_markdown,
)
from mnistlab.reporting.experiments import ExperimentRuns, discover, split_labels
from mnistlab.reporting.findings import MIN_SEEDS, SIGNIFICANCE, cell, pairs, verdict
from mnistlab.spec import config
from mnistlab.studies.folder import RunFolder
from mnistlab.version import __version__


def _splits_sentence(experiments: list[ExperimentRuns]) -> str:
    def one(sizes: dict[str, int]) -> str:
        s = {split: size_label(n) for split, n in sizes.items()}
        return (
            f"train is the first {s['train']} training images after phase 1, validation the last {s['validation']}, "
            f"{s['full']} ('full') the whole training file after retraining (phase 2), test the {s['test']} test images"
        )

    distinct = {tuple(e.split_sizes.items()): e for e in experiments}
    if len(distinct) == 1:
        return one(experiments[0].split_sizes).capitalize() + "."
    return " ".join(f"{e.label}: {one(e.split_sizes)}." for e in experiments)


def _results(experiments: list[ExperimentRuns]) -> list:
    labels = split_labels(experiments)
    header = [
        "experiment",
        "seeds",
        "parameters",
        "epochs",
        *(f"{labels[s]} {k}" for s in SPLITS for k in ("acc", "loss")),
        "wall time",
    ]
    rows = []
    for e in experiments:
        epochs = "/".join(f"{e.epochs(phase):g}" for phase in ("phase1", "phase2"))
        numbers = [cell(e.stat(s, k), k) for s in SPLITS for k in ("accuracy", "loss")]
        rows.append([e.label, str(e.seeds), f"{e.parameters:,}", epochs, *numbers, f"{e.wall_seconds:.0f} s"])
    return [
        Heading(2, "Results"),
        Paragraph(
            "Clean evaluations, as Keras' evaluate reports them: dropout off, L1/L2 penalty included in the loss. "
            + _splits_sentence(experiments)
            + " With several seeds: mean ± the half-width of the 95% interval (t-distribution). Epochs: phase 1 / "
            "phase 2. Wall time: this run's share of the lockstep stack it trained in."
        ),
        Table(header, rows),
    ]


def _significance_blocks(experiments: list[ExperimentRuns]) -> list:
    if len(experiments) < 2:
        return []  # one experiment: no difference to test
    blocks = [Heading(2, "Which differences are real")]
    multi = [e for e in experiments if e.seeds >= 2]
    if len(multi) < 2:
        blocks.append(
            Paragraph(
                "Single runs cannot tell a 0.2-point difference from seed noise. Run the study with "
                f"--seeds N (N >= {MIN_SEEDS}) and this section tests the difference of every pair of experiments."
            )
        )
        return blocks
    test_size = multi[0].split_sizes["test"]
    blocks.append(
        Paragraph(
            "Difference in mean test accuracy, first minus second, in points and in test errors (out of "
            f"{test_size:,}), each with its 95% interval. Runs of one seed share their random streams (initial "
            "weights, data order, dropout masks) whatever the experiment, so where two experiments have the same "
            "seeds their runs are compared seed by seed: a paired t-test, which sees through the noise the seeds "
            "share; otherwise Welch's t-test. With many pairs, some would come out below p = 0.05 by chance "
            f"alone, so the p-values are adjusted together with Holm's method, which keeps the chance of any "
            f"false 'real' at {SIGNIFICANCE:.0%} over the whole table; 'real' means an adjusted p below "
            f"{SIGNIFICANCE}. Fewer than {MIN_SEEDS} seeds give no verdict."
        )
    )
    rows = []
    for pair in pairs({e.label: e.by_seed("test", "accuracy") for e in multi}):
        d = pair.difference
        if d is None:
            rows.append([pair.a, pair.b, "", "", "", "", "", pair.verdict])
            continue
        points = f"{d.difference * 100:+.2f} ({d.low * 100:+.2f} to {d.high * 100:+.2f})"
        errors = f"{-d.difference * test_size:+.1f} ({-d.high * test_size:+.1f} to {-d.low * test_size:+.1f})"
        verdict_cell = Flagged(pair.verdict) if pair.verdict == "real" else pair.verdict
        test = "paired" if d.test == PAIRED else "Welch"
        rows.append([pair.a, pair.b, points, errors, test, f"{d.p:.2g}", f"{pair.adjusted_p:.2g}", verdict_cell])
    header = ["first", "second", "accuracy, points", "test errors", "test", "p", "p (Holm)", "verdict"]
    blocks.append(Table(header, rows))
    return blocks


def _run_blocks(experiment: ExperimentRuns, seed_errors: digits.SeedErrors) -> list:
    first = experiment.runs[0]
    folder = first.folder
    analysis = first.analysis()
    classes = analysis.classes
    name = experiment.label
    seeds_note = (
        f" {experiment.seeds} seeds; curves are the mean with one standard deviation; the error analysis is "
        f"seed {first.seed}'s."
        if experiment.seeds > 1
        else ""
    )
    sizes = {split: size_label(n) for split, n in experiment.split_sizes.items()}
    return [
        Heading(3, name),
        Paragraph(
            f"{folder.read_config().get('description', '')}.{seeds_note} Test accuracy "
            f"{cell(experiment.stat('test', 'accuracy'), 'accuracy')}, {first.metrics.parameters:,} parameters. "
            f"Folder: {experiment.folder.path}."
        ),
        Image(_figure(experiment, RunFolder.VALIDATION_CURVES), f"{name}: validation curves"),
        Image(_figure(experiment, RunFolder.RETRAINING_CURVE), f"{name}: retraining on {sizes['full']}"),
        Image(folder.file(RunFolder.MISCLASSIFIED), f"{name}: first 9 misclassified test images"),
        Paragraph("The class pairs most often confused on the test set:"),
        Table(
            ["true", "predicted", "count"],
            [[classes[p.true], classes[p.predicted], str(p.count)] for p in analysis.confused_pairs[:6]],
        ),
        Image(folder.file(RunFolder.PER_CLASS), f"{name}: per-class precision, recall, F1"),
        Paragraph("Per-class scores on the test set (scikit-learn):"),
        Table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [r.name, f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.f1:.4f}", str(r.support)]
                for r in analysis.per_class
            ],
        ),
        Image(folder.file(RunFolder.CONFUSION), f"{name}: normalised confusion matrix"),
        *digits.confusion(seed_errors),
        digits.top_losses(seed_errors),
        Preformatted(folder.read_summary()),
    ]


def _figure(experiment: ExperimentRuns, name: str) -> Path:
    """A curve of the experiment: the seeds' banded one above them, or (where it is missing, as in a
    folder of seeds copied together by hand) the first seed's own."""
    banded = experiment.folder.file(name)
    return banded if banded.is_file() else experiment.runs[0].folder.file(name)


def build(paths: list[Path], out: Path) -> tuple[Path, Path]:
    """Write the HTML report to `out` and its Markdown twin beside it; returns both paths.

    Folders that cannot be read are left out, each named in a warning; the report over the others is
    written, then a MnistlabError says how many were left out.
    """
    problems: list[str] = []
    swept = [Path(p) for p in paths if sweep_section.is_sweep(Path(p))]
    experiments = discover([p for p in paths if Path(p) not in swept], problems)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    if not experiments and not swept:
        raise MnistlabError("no run could be read: nothing to report")
    _one_data_set(experiments, swept)
    html, md = report_paths(Path(out))
    chart = html.with_name(html.stem + ".accuracy.png")
    curves = [html.with_name(f"{html.stem}.sweep-{i}.png") for i in range(len(swept))]
    for path in (html, md, chart, *curves):
        check_output(path, folder=False)
        if (path.exists() or path.is_symlink()) and not is_ours(path):
            raise MnistlabError(f"{path}: exists and is not a report of mnistlab's; choose another --out")
    blocks = _experiment_blocks(experiments, chart) if experiments else [Heading(1, "mnistlab report")]
    for folder, curve in zip(swept, curves, strict=True):
        blocks += sweep_section.section(folder, curve)
    write_atomic(html, to_html(blocks))
    write_atomic(md, to_markdown(blocks, md.parent))
    if problems:
        raise MnistlabError(f"{len(problems)} folder(s) left out of {html}: see the warnings above")
    return html, md


def _one_data_set(experiments: list[ExperimentRuns], swept: list[Path]) -> None:
    """Refuse to set runs of different data sets side by side: their errors, bias and shared digits are
    not comparable (test digit #5 of MNIST is no digit of Fashion-MNIST)."""
    where: dict[str, list[str]] = {}
    for e in experiments:
        where.setdefault(e.runs[0].metrics.dataset, []).append(e.label)
    for folder in swept:
        for dataset in sweep_section.datasets(folder):
            where.setdefault(dataset, []).append(folder.name)
    if len(where) > 1:
        listed = "; ".join(
            f"{name}: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}" for name, labels in where.items()
        )
        raise MnistlabError(f"these runs are of {len(where)} data sets ({listed}); report each data set apart")


def report_paths(out: Path) -> tuple[Path, Path]:
    """The HTML report and its Markdown twin for `--out`: a `.md` name is the Markdown, with the HTML
    beside it; any other name is the HTML, with the Markdown beside it. Never one file for both."""
    if out.suffix.lower() == ".md":
        return out.with_suffix(".html"), out
    return out, out.with_name(out.name + ".md") if out.suffix.lower() not in (".html", ".htm") else out.with_suffix(
        ".md"
    )


def _experiment_blocks(experiments: list[ExperimentRuns], chart: Path) -> list:
    on_mnist = all(e.runs[0].metrics.dataset == "mnist" for e in experiments)
    reference = config.lab_report() if on_mnist else {}
    comparable = {e.label: reference.get(e.name) and lab.protocol_difference(e) is None for e in experiments}
    drawn = figures.accuracy_comparison(
        [
            figures.AccuracyRow(
                e.label,
                e.stat("test", "accuracy"),
                reference[e.name].get("test", {}).get("accuracy") if comparable[e.label] else None,
            )
            for e in experiments
        ],
        "Test error, mnistlab beside the lab report" if reference else "Test error per experiment",
    )
    figures.save(drawn, chart)
    environment = experiments[0].runs[0].folder.read_environment()
    datasets = sorted({e.runs[0].metrics.dataset for e in experiments})
    blocks = [
        Heading(1, "mnistlab report"),
        Paragraph(
            f"{sum(e.seeds for e in experiments)} runs of {len(experiments)} experiments on {', '.join(datasets)}, "
            f"built {time.strftime('%Y-%m-%d %H:%M')} by mnistlab {__version__}. Trained with torch "
            f"{environment['torch']} on {environment['device_name']} ({environment['device']}, "
            f"{environment['threads']} thread{'s' if environment['threads'] != 1 else ''} per stack)."
        ),
        *_results(experiments),
    ]
    if any(reference.get(e.name, {}).get("train") for e in experiments):
        blocks += lab.section(experiments, reference, chart)
    else:
        blocks += [
            Heading(2, "Test error per experiment"),
            Image(chart, "test accuracy per experiment"),
            Paragraph("The lab report's numbers are for MNIST; these runs are on another data set."),
        ]
    train_errors = {e.label: 1 - e.stat("train", "accuracy").mean for e in experiments}
    readings = []
    for e in experiments:
        others = [error for label, error in train_errors.items() if label != e.label]
        phase1 = [r.history.phase1 for r in e.runs]
        reading = verdict(e.mean_score("train"), e.mean_score("validation"), phase1, min(others, default=None))
        readings.append(f"{e.label}: {reading}")
    blocks += [Heading(2, "Bias and variance"), Bullets(readings)]
    blocks += _significance_blocks(experiments)
    seed_errors = [digits.SeedErrors(e.label, e.runs) for e in experiments]
    blocks += digits.across_seeds(seed_errors, {e.label: e.stat("test", "accuracy").mean for e in experiments})
    blocks += beyond.section(list(zip(experiments, seed_errors, strict=True)))
    blocks += agreement.section(experiments)
    blocks.append(Heading(2, "Runs"))
    for e, found in zip(experiments, seed_errors, strict=True):
        blocks += _run_blocks(e, found)
    return blocks
