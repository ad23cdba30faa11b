"""The lab report's figures, for any run: PNG files drawn headless with matplotlib, and grids of digits
pasted with Pillow.

Curves take one history (a list of `Epoch`) per seed: one seed draws a line, several draw their mean
with a band of one standard deviation around it. Figures are built on `matplotlib.figure.Figure` rather than
pyplot, and never choose a backend: nothing global is touched (a notebook's backend stays its own), and
nothing needs closing.
"""

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, FuncFormatter, MaxNLocator, NullLocator
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mnistlab.evaluation.analysis import ClassScores, Misclassified
from mnistlab.evaluation.statistics import Summary
from mnistlab.files import MARK, write_atomic
from mnistlab.records import Epoch

TRAIN_COLOUR, EVAL_COLOUR = "#1f77b4", "#d62728"
METRICS = (("loss", "loss"), ("accuracy", "accuracy"))


def _sparse_log_label(value: float, _position) -> str:
    """Minor ticks of a log axis labelled at 2 and 5 times a power of ten only, so labels do not collide."""
    leading = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(leading) in (2, 5) else ""


def _epoch_axes(fig: Figure, title: str):
    """Two panels, loss (log scale) and accuracy, over whole epochs."""
    axes = fig.subplots(1, 2)
    for ax, (_, name) in zip(axes, METRICS, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(FuncFormatter(_sparse_log_label))
    fig.suptitle(title)
    return axes


def save(fig: Figure, path: Path) -> None:
    """The figure as a PNG file, marked as mnistlab's."""
    write_atomic(path, png(fig))


def _seed_band(histories: list[list[Epoch]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and standard deviation over seeds of one number; seeds may have run different lengths."""
    longest = max(len(h) for h in histories)
    table = np.full((len(histories), longest), np.nan)
    for row, history in enumerate(histories):
        table[row, : len(history)] = [getattr(e, key) for e in history]
    counts = np.sum(~np.isnan(table), axis=0)
    mean = np.nanmean(table, axis=0)
    std = np.where(counts > 1, np.nanstd(table, axis=0, ddof=1 if len(histories) > 1 else 0), np.nan)
    return np.arange(1, longest + 1), mean, std


MARKED_EPOCHS = 30  # curves of at most this many epochs show a marker at each: a lone point is no line


def _curve(ax, histories: list[list[Epoch]], key: str, label: str, colour: str, style: str = "-") -> None:
    epochs, mean, std = _seed_band(histories, key)
    marker = "o" if len(epochs) <= MARKED_EPOCHS else None
    label = label if len(histories) == 1 else f"{label} (mean of {len(histories)})"
    ax.plot(epochs, mean, style, color=colour, label=label, marker=marker, markersize=4)
    if len(histories) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    if len(epochs) < 5:  # whole epochs only, with room on either side of a run of one
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.set_xticks(range(1, len(epochs) + 1))


def validation_curves(histories: list[list[Epoch]], title: str, marks: dict[str, float] | None = None) -> Figure:
    """Loss and accuracy per epoch, training (running) vs validation (clean), report figures 1, 6, 10, 11
    and 12; one history per seed. marks: label -> epoch, drawn as vertical lines.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, (key, name) in zip(_epoch_axes(fig, title), METRICS, strict=True):
        _curve(ax, histories, key, f"training {name}", TRAIN_COLOUR)
        _curve(ax, histories, f"eval_{key}", f"validation {name}", EVAL_COLOUR)
        for (label, epoch), style in zip((marks or {}).items(), (":", "--", "-."), strict=False):
            ax.axvline(epoch, color="0.3", linestyle=style, linewidth=1, label=f"{label} (epoch {epoch:g})")
        ax.legend(fontsize=8)
    return fig


def retraining_curve(histories: list[list[Epoch]], title: str) -> Figure:
    """Training loss and accuracy per epoch when retraining on all 60k (report figures 2 and 7)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, (key, name) in zip(_epoch_axes(fig, title), METRICS, strict=True):
        _curve(ax, histories, key, f"training {name} (60k)", TRAIN_COLOUR)
        ax.legend(fontsize=8)
    return fig


def misclassified_grid(
    images: dict[int, np.ndarray], misclassified: list[Misclassified], classes: list[str], title: str
) -> bytes:
    """The first 9 misclassified test images with true label, prediction and confidence (figure 3).
    images: test index -> uint8 image, as a run folder keeps them (`analysis.error_images`)."""
    shown = misclassified[:9]
    digits = [images[m.index] for m in shown]
    captions = [
        f"#{m.index}: true {classes[m.true]}\npredicted {classes[m.predicted]} ({m.confidence:.0%})" for m in shown
    ]
    return digit_grid(digits, captions, title, columns=3, scale=6)


def per_class_bars(per_class: list[ClassScores], title: str) -> Figure:
    """Precision, recall and F1 per class as grouped bars (figures 4 and 8)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(per_class))
    for offset, (key, colour) in zip(
        (-0.27, 0, 0.27), (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c")), strict=True
    ):
        ax.bar(x + offset, [getattr(row, key) for row in per_class], width=0.27, label=key, color=colour)
    lowest = min(min(row.precision, row.recall, row.f1) for row in per_class)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_xticks(x, [row.name for row in per_class], rotation=30 if max(len(r.name) for r in per_class) > 2 else 0)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title(title)
    return fig


def confusion_heatmap(confusion: list[list[float]], classes: list[str], title: str) -> Figure:
    """The confusion matrix normalised per true class, annotated (figures 5 and 9)."""
    matrix = np.asarray(confusion)
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8)
    for (row, col), value in np.ndenumerate(matrix):
        if value >= 0.0005:
            ax.text(
                col,
                row,
                f"{value:.3f}"[1:] if value < 1 else "1",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.5 else "black",
            )
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return fig


@dataclass(frozen=True)
class AccuracyRow:
    name: str
    accuracy: Summary  # over seeds
    published: float | None  # the lab report's


def accuracy_comparison(rows: list[AccuracyRow], title: str) -> Figure:
    """Test error per experiment with its 95% interval, beside the report's published value.

    Error on a log scale: 1.7% and 2.0% are far apart in what they mean, 47% is off the chart otherwise.
    """
    # Room for the title, the axis label and the legend below it, whatever the number of rows.
    fig = Figure(figsize=(11, 2.2 + 0.4 * len(rows)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    errors = np.array([(1 - r.accuracy.mean) * 100 for r in rows])
    low = np.array([(1 - (r.accuracy.high if r.accuracy.high is not None else r.accuracy.mean)) * 100 for r in rows])
    high = np.array([(1 - (r.accuracy.low if r.accuracy.low is not None else r.accuracy.mean)) * 100 for r in rows])
    ax.errorbar(
        errors,
        y,
        xerr=[errors - low, high - errors],
        fmt="o",
        color=TRAIN_COLOUR,
        capsize=3,
        label="mnistlab (95% interval over seeds)",
    )
    published = [((1 - r.published) * 100, yy) for r, yy in zip(rows, y, strict=True) if r.published]
    if published:
        ax.errorbar(
            [p for p, _ in published],
            [yy + 0.15 for _, yy in published],
            xerr=0.5,
            fmt="s",
            color=EVAL_COLOUR,
            capsize=3,
            alpha=0.8,
            label="lab report (whole percent, +-0.5)",
        )
    ax.set_xscale("log")
    shown = np.concatenate([low, high, [p - 0.5 for p, _ in published], [p + 0.5 for p, _ in published]])
    ticks = [
        t
        for t in (0.5, 1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 70, 100)
        if shown.min() * 0.9 <= t <= shown.max() * 1.1
    ]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(y, [r.name for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("test error (%, log scale): lower is better")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    ax.set_title(title)
    return fig


def png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, metadata={"Software": MARK})
    return out.getvalue()


def digit_grid(images: list[np.ndarray], captions: list[str], title: str, columns: int = 8, scale: int = 3) -> bytes:
    """Digits (uint8, dark ink as in the data) under a caption each, as PNG bytes.

    Pasted with Pillow rather than drawn as matplotlib axes: a report holds dozens of these grids, and 24
    axes under constrained layout take two seconds a grid where pasting takes milliseconds.
    """
    caption_font, title_font = _font(10), _font(14)
    shape = images[0].shape if images else (28, 28)
    tile_width, tile_height = shape[1] * scale, shape[0] * scale
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    caption_height = lines * (caption_font.size + 2)
    cell_width = max([tile_width, *(caption_font.getbbox(line)[2] for c in captions for line in c.split("\n"))]) + 16
    cell_height = caption_height + tile_height + 14
    across = max(1, min(columns, len(images)))
    down = max(1, -(-len(images) // columns))
    top = title_font.size + 14
    width = max(across * cell_width, int(title_font.getlength(title))) + 16
    canvas = PILImage.new("L", (width, top + down * cell_height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, 6), title, fill=0, font=title_font, anchor="ma")
    left = (width - across * cell_width) // 2
    for k, (image, caption) in enumerate(zip(images, captions, strict=True)):
        row, column = divmod(k, across)
        x, y = left + column * cell_width, top + row * cell_height
        draw.multiline_text((x + cell_width // 2, y), caption, fill=0, font=caption_font, anchor="ma", align="center")
        tile = PILImage.fromarray(255 - image).resize((tile_width, tile_height), PILImage.NEAREST)
        canvas.paste(tile, (x + (cell_width - tile_width) // 2, y + caption_height + 4))
    info = PngInfo()
    info.add_text("Software", MARK)
    out = io.BytesIO()
    canvas.save(out, "PNG", pnginfo=info)
    return out.getvalue()


@functools.cache
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    """matplotlib's own sans-serif, so pasted grids read like the drawn figures beside them."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), pixels)


def digit_strip(images: list[np.ndarray], scale: int = 2) -> bytes:
    """Digits side by side, ink dark on white, as a small PNG: cheap enough to draw hundreds of."""
    gap = np.full((images[0].shape[0], 2), 255, np.uint8)
    row = np.concatenate([part for image in images for part in (255 - image, gap)][:-1], axis=1)
    out = io.BytesIO()
    PILImage.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), PILImage.NEAREST).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class SweepCurve:
    """A one-axis sweep as its validation curve draws it: per point, (mean, low, high) over seeds."""

    name: str  # the swept key
    x: list  # the points' values: numbers, or labels such as "full"
    curves: dict[str, tuple[list, list]]  # "loss" / "error" -> (training, validation) bands
    best: int  # index of the point of lowest validation loss
    lab: list  # the values the lab report used
    regions: dict[str, list[int]]  # "high bias" / "high variance" -> indices of points
    pruned: list = field(default_factory=list)  # (value, validation loss when stopped) of pruned points


REGION_COLOURS = {"high bias": "#ff7f0e", "high variance": "#9467bd"}


def sweep_curve(curve: SweepCurve, title: str) -> Figure:
    """Training and validation loss and error against the swept value (log where it spans decades), seed
    means with their 95% band, the best point starred, the lab's values dashed, bias and variance shaded,
    as scikit-learn's ValidationCurveDisplay with the lab's protocol."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in curve.x)
    xs = np.asarray(curve.x, dtype=float) if numeric else np.arange(len(curve.x), dtype=float)
    log = numeric and xs.min() > 0 and xs.max() / xs.min() >= 20
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, (metric, (train, validation)) in zip(fig.subplots(1, 2), curve.curves.items(), strict=True):
        for band, label, colour in ((train, "training", TRAIN_COLOUR), (validation, "validation", EVAL_COLOUR)):
            mean = np.array([b[0] for b in band])
            ax.plot(xs, mean, "o-", color=colour, label=f"{label} {metric}", markersize=4)
            if all(b[1] is not None for b in band):
                ax.fill_between(xs, [b[1] for b in band], [b[2] for b in band], color=colour, alpha=0.2, linewidth=0)
        ax.plot(
            xs[curve.best], validation[curve.best][0], "*", color="k", markersize=14, label="best (validation loss)"
        )
        for index, value in enumerate(v for v in curve.lab if v in curve.x):
            label = "the lab's values" if index == 0 else None
            ax.axvline(xs[curve.x.index(value)], color="0.3", linestyle="--", linewidth=1, label=label)
        stopped = [
            (float(v) if numeric else curve.x.index(v), loss) for v, loss in curve.pruned if numeric or v in curve.x
        ]
        if metric == "loss" and stopped:
            ax.plot(*zip(*stopped, strict=True), "x", color="0.5", label="pruned (validation loss when stopped)")
        for region, indices in curve.regions.items():
            for i in indices:
                left, right = _between(xs, i - 1, i, log), _between(xs, i, i + 1, log)
                label = region if i == indices[0] else None
                ax.axvspan(left, right, color=REGION_COLOURS[region], alpha=0.12, linewidth=0, label=label)
        if all(b[0] > 0 for b in (*train, *validation)):
            ax.set_yscale("log")
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in curve.x])
        ax.set_xlabel(curve.name)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _between(xs: np.ndarray, a: int, b: int, log: bool) -> float:
    """Halfway between points a and b of the axis (in the logarithm on a log axis); at the ends, the end."""
    if a < 0:
        return xs[b]
    if b >= len(xs):
        return xs[a]
    return (xs[a] * xs[b]) ** 0.5 if log else (xs[a] + xs[b]) / 2


@dataclass(frozen=True)
class SweepGrid:
    """A two-axis sweep: validation error per (row, column) value, None where no run finished."""

    row_name: str
    column_name: str
    rows: list[str]
    columns: list[str]
    values: list[list[float | None]]


def sweep_heatmap(grid: SweepGrid, title: str) -> Figure:
    table = np.array([[np.nan if v is None else v for v in row] for row in grid.values], dtype=float)
    fig = Figure(figsize=(1.2 * len(grid.columns) + 3, 0.6 * len(grid.rows) + 2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(table, cmap="viridis_r", aspect="auto")
    for (r, c), value in np.ndenumerate(table):
        if not np.isnan(value):
            ax.text(c, r, f"{value:.2%}", ha="center", va="center", fontsize=8, color="w")
    ax.set_xticks(range(len(grid.columns)), grid.columns)
    ax.set_yticks(range(len(grid.rows)), grid.rows)
    ax.set_xlabel(grid.column_name)
    ax.set_ylabel(grid.row_name)
    fig.colorbar(image, ax=ax, label="validation error")
    ax.set_title(title)
    return fig
