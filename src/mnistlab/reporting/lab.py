"""Beside the lab report: each run's numbers set beside the published ones (`spec/lab.toml`), where the
run followed the lab's protocol for its preset, and the report's text where it contradicts its numbers."""

from pathlib import Path

from mnistlab.data import SPLITS
from mnistlab.reporting.document import Bullets, Flagged, Heading, Image, Paragraph, Table
from mnistlab.reporting.experiments import ExperimentRuns, split_labels
from mnistlab.reporting.findings import MIN_SEEDS, compare, percent
from mnistlab.spec import config


def section(experiments: list[ExperimentRuns], reference: dict, chart: Path) -> list:
    blocks = [
        Heading(2, "Beside the lab report"),
        Paragraph(
            "The lab report prints accuracies in whole percent and losses to four decimals. A difference is "
            "'within rounding' when our number, printed the same way, reads as the published one. The lab's "
            f"numbers are single runs, with seed noise of their own: with {MIN_SEEDS} seeds or more we say whether "
            "the published value lies inside the 95% prediction interval of one run of ours (mean ± "
            "t·s·√(1 + 1/n)), where one more run of ours would land 95 times in 100. Outside it, seed noise alone "
            "does not explain the gap. (The interval of our mean would be the wrong yardstick: it shrinks as seeds "
            "are added, until any single run falls outside it.)"
        ),
        Image(chart, "test error per experiment beside the lab report"),
    ]
    for e in experiments:
        entry = reference.get(e.name)
        if entry is None or "train" not in entry:
            continue
        labels = split_labels([e])
        figures_text = (
            f", figure{'s' if len(entry['figures']) > 1 else ''} {', '.join(map(str, entry['figures']))}"
            if entry["figures"]
            else ""
        )
        blocks.append(Heading(3, f"{e.label}: section {entry['section']}{figures_text}"))
        differs = protocol_difference(e)
        if differs:
            blocks.append(
                Paragraph(
                    f"Not comparable: {differs}. This run did not follow the lab's protocol for {e.name}, so its "
                    "numbers are shown beside the lab's without a verdict."
                )
            )
        rows = []
        values = {(split, key): e.values(split, key) for split in SPLITS for key in ("accuracy", "loss")}
        for row in compare(values, entry):
            show = percent if row.key == "accuracy" else (lambda v: f"{v:.4f}")
            if row.key == "accuracy":
                diff = f"{row.difference * 100:+.2f} pts"
            else:
                diff = f"{row.difference:+.4f} ({row.difference / row.published:+.0%})"
            note = "within rounding" if row.within_rounding else "beyond rounding"
            if differs:
                rows.append([labels[row.split], row.key, show(row.published), show(row.mean), diff, "not comparable"])
                continue
            if row.inside_interval is not None:
                low, high = row.prediction_interval
                where = "inside" if row.inside_interval else "outside"
                note += f"; {where} the prediction interval of one run ({show(low)}-{show(high)})"
            elif e.seeds > 1:
                note += f"; {e.seeds} seeds: too few for a prediction interval"
            verdict_cell = note if row.within_rounding else Flagged(note)
            rows.append([labels[row.split], row.key, show(row.published), show(row.mean), diff, verdict_cell])
        ours_epochs = e.runs[0].metrics.epochs["phase1"]
        rows.append(["", "epochs", str(entry["epochs"]), f"{ours_epochs}", f"{ours_epochs - entry['epochs']:+d}", ""])
        blocks.append(Table(["split", "metric", "lab report", "mnistlab", "difference", "verdict"], rows))
    by_name = {e.name: e for e in experiments}
    items = []
    for item in reference.get("contradiction", []):
        if not set(item["presets"]) & set(by_name):
            continue  # about experiments this report does not hold
        measured = [
            f"{n} {percent(by_name[n].stat('test', 'accuracy').mean)} test accuracy, train loss "
            f"{by_name[n].stat('train', 'loss').mean:.4f}"
            for n in item["presets"]
            if n in by_name
        ]
        items.append(
            f"{item['claim']} {item['finding']}" + (f" Measured here: {'; '.join(measured)}." if measured else "")
        )
    if items:
        blocks += [Heading(3, "Where the report's text contradicts its numbers"), Bullets(items)]
    return blocks


def protocol_difference(experiment: ExperimentRuns) -> str | None:
    """How the experiment's runs differ from the lab's protocol for their preset (its shipped config, seed
    and description aside), in words; None where they followed it, or where the name is no preset."""
    if experiment.name not in config.preset_names():
        return None
    ours = _flat(experiment.runs[0].folder.read_config())
    lab = _flat(config.load(experiment.name).table)
    keys = [k for k in dict.fromkeys([*lab, *ours]) if k not in ("seed", "description") and ours.get(k) != lab.get(k)]
    if not keys:
        return None
    parts = []
    if "train.epochs" in keys:
        epochs = ours["train.epochs"]
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''} against the lab's {lab['train.epochs']}")
    others = [k for k in keys if k != "train.epochs"]
    parts += [f"{k} {_show(ours.get(k))} against the preset's {_show(lab.get(k))}" for k in others[:3]]
    return ", ".join(parts) + (" and more" if len(others) > 3 else "")


def _flat(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
