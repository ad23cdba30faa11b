import io
import os
import re
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistlab.cli import main
from mnistlab.data import SPLITS
from mnistlab.evaluation import figures
from mnistlab.evaluation.analysis import ConfusedPair, Misclassified, analyse
from mnistlab.evaluation.statistics import summarise
from mnistlab.files import MARK
from mnistlab.records import Epoch, Score
from mnistlab.reporting import build, findings, lab
from mnistlab.reporting.experiments import discover
from mnistlab.spec import config

ARTIFACTS = Path(os.environ.get("MNISTLAB_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts"))


def test_analysis_on_hand_made_predictions():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = [0, 1, 1, 1, 2, 0]
    probabilities = torch.full((6, 3), 0.1)
    probabilities[torch.arange(6), predicted] = 0.8
    probabilities[1, 1] = 0.6
    analysis = analyse(probabilities, labels, ["a", "b", "c"])
    assert analysis.accuracy == pytest.approx(4 / 6)
    assert analysis.misclassified == [
        Misclassified(index=1, true=0, predicted=1, confidence=pytest.approx(0.6)),
        Misclassified(index=5, true=2, predicted=0, confidence=pytest.approx(0.8)),
    ]
    assert analysis.confused_pairs == [
        ConfusedPair(true=0, predicted=1, count=1),
        ConfusedPair(true=2, predicted=0, count=1),
    ]
    # class a: predicted at 0 and 5, right once; b: predicted at 1, 2, 3, right twice; c: predicted at 4, right
    expected = {"a": (1 / 2, 1 / 2), "b": (2 / 3, 1.0), "c": (1.0, 1 / 2)}
    for row in analysis.per_class:
        precision, recall = expected[row.name]
        assert row.precision == pytest.approx(precision) and row.recall == pytest.approx(recall)
        assert row.f1 == pytest.approx(2 * precision * recall / (precision + recall)) and row.support == 2
    assert analysis.confusion == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    # analysis.json keeps scikit-learn's "class" key, and reads back to the same analysis.
    assert analysis.to_dict()["per_class"][0]["class"] == "a"
    assert type(analysis).from_dict(analysis.to_dict()) == analysis


def _find(canvas: np.ndarray, tile: np.ndarray) -> tuple[int, int]:
    """Where `tile` lies in `canvas`, pixel for pixel."""
    rows = np.lib.stride_tricks.sliding_window_view(canvas, tile.shape[1], axis=1)
    for y, x in zip(*np.nonzero((rows == tile[0]).all(axis=2)), strict=True):
        if np.array_equal(canvas[y : y + tile.shape[0], x : x + tile.shape[1]], tile):
            return int(y), int(x)
    raise AssertionError("tile not in the grid")


def test_a_digit_grid_shows_each_digit_whole_in_order_under_its_caption():
    rng = np.random.default_rng(0)
    digits = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(5)]  # noise: each tile is unique
    png = figures.digit_grid(digits, [f"#{i} true 3\nread 5 5" for i in range(5)], "five tiles", columns=3, scale=2)
    image = Image.open(io.BytesIO(png))
    assert image.text["Software"] == MARK
    canvas = np.asarray(image.convert("L"))
    # Ink dark on white, as the data's digits are drawn everywhere else, each pixel a 2x2 block.
    places = [_find(canvas, np.kron(255 - d, np.ones((2, 2), np.uint8))) for d in digits]
    (y0, x0), (y1, x1), (y2, x2), (y3, x3), (y4, x4) = places
    assert y0 == y1 == y2 < y3 == y4 and x0 < x1 < x2 and (x3, x4) == (x0, x1)  # three across, then the rest
    for y, x in places:
        assert canvas[y - 20 : y, x : x + 56].min() < 100  # a caption's ink just above the digit


def test_seed_statistics():
    stat = summarise([0.90, 0.92, 0.94])
    assert stat.mean == pytest.approx(0.92) and stat.std == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / 3**0.5  # t(0.975, 2 degrees of freedom)
    assert (stat.low, stat.high) == (pytest.approx(0.92 - half), pytest.approx(0.92 + half))
    assert summarise([0.5]).low is None


@pytest.mark.parametrize(
    ("published", "ours", "key", "within"),
    [
        (0.98, 0.9754, "accuracy", True),
        (0.98, 0.9749, "accuracy", False),
        (1.00, 0.9951, "accuracy", True),
        (0.0783, 0.07834, "loss", True),
        (0.0783, 0.0786, "loss", False),
    ],
)
def test_rounding_rule(published, ours, key, within):
    assert findings.within_rounding(published, ours, key) is within


def _history(val_loss, train_loss):
    """One seed's phase 1, of which the verdicts read the losses."""
    return [[Epoch(i + 1, t, 0.0, v, 0.0, 1.0) for i, (v, t) in enumerate(zip(val_loss, train_loss, strict=True))]]


def test_verdicts():
    steady = _history([0.5, 0.3, 0.2, 0.19], [0.6, 0.4, 0.3, 0.25])
    biased = findings.verdict(Score(0.80, 0.95), Score(0.80, 0.95), steady, others_train_error=0.001)
    assert biased.startswith("High bias and low variance") and "no sign of overfitting in 4 epochs" in biased
    rising = _history([0.3, 0.1, 0.09, 0.12, 0.15], [0.5, 0.1, 0.05, 0.02, 0.01])
    overfit = findings.verdict(Score(0.003, 0.999), Score(0.15, 0.975), rising, others_train_error=0.001)
    assert overfit.startswith("Low bias and high variance")
    assert "50.0x training loss" in overfit
    assert "bottoms out at epoch 3 (0.0900) and ends at 0.1500 (+67%)" in overfit and "from about epoch 3" in overfit
    alone = findings.verdict(Score(0.25, 0.9279), Score(0.3, 0.92), steady, others_train_error=None)
    assert "training error 7.21%, with no other experiment here to judge its bias by" in alone
    assert "bias" not in alone.split(":")[0] and "best" not in alone


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist_dir):
    """Every preset for one epoch, the provided model with two seeds: a real, if short, study. The
    others train eagerly in batches of 1000, which the report's structure does not depend on."""
    out = tmp_path_factory.mktemp("study")
    common = ["--epochs", "1", "--out", str(out), "--quiet", "--data-dir", str(mnist_dir), "--dataset", "mnist"]
    assert main(["study", "--presets", "provided", "--seeds", "2", *common]) == 0
    others = [p for p in config.study_presets() if p != "provided"]
    assert main(["study", "--presets", *others, "--no-compile", "--set", "train.batch_size=1000", *common]) == 0
    return out


def test_report_tables_and_verdicts(study, capsys, monkeypatch):
    # One epoch is no run of the lab's protocol; as if it were, to see the verdicts the lab's numbers get.
    monkeypatch.setattr(lab, "protocol_difference", lambda experiment: None)
    assert main(["report", str(study), "--out", str(study / "again.html")]) == 0
    html = (study / "again.html").read_text()
    markdown = (study / "again.md").read_text()
    assert "<h2>Beside the lab report</h2>" in html and "## Beside the lab report" in markdown
    assert "<h2>Bias and variance</h2>" in html and "## Bias and variance" in markdown
    assert "<h3>Where the report&#x27;s text contradicts its numbers</h3>" in html
    assert "### Where the report's text contradicts its numbers" in markdown
    experiments = discover([study])
    assert [e.name for e in experiments] == config.study_presets() and experiments[0].seeds == 2
    # Per experiment: its curves, misclassified digits, per-class bars, confusion, top losses.
    for alt in ("validation curves", "retraining on 60k", "per-class precision", "normalised confusion", "top losses"):
        assert len(re.findall(rf'<img src="data:image/png;base64,[^"]+" alt="[^"]*{alt}', html)) == len(experiments)
    assert not re.search(r'(src|href)="(?!data:|#cm-)', html)  # self-contained: images embedded, links in-page
    # Every confusion cell links to digits that are in the page.
    targets = re.findall(r'<a href="#(cm-[^"]+)">', html)
    assert targets and all(f'<div class="reveal" id="{t}">' in html for t in targets)
    # Two seeds: differences and the lab's numbers get no verdict, and the errors section says what is stable.
    assert "too few seeds (2) for a verdict" in html or "Single runs cannot tell" in html
    assert "2 seeds: too few for a prediction interval" in html
    assert "test digits are wrong in all 2 seeds (stable errors)" in html
    values = {(split, key): experiments[1].values(split, key) for split in SPLITS for key in ("accuracy", "loss")}
    rows = findings.compare(values, config.lab_report()["powerful"])
    assert [(r.split, r.key) for r in rows][:2] == [("train", "accuracy"), ("train", "loss")]
    assert all(r.difference == pytest.approx(r.ours[0] - r.published) for r in rows)
    # Markdown links every figure by a relative path that exists.
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (study / link).is_file(), link


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path:
        return path
    message = "headless Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_report_renders_in_headless_chromium_and_a_confusion_cell_shows_its_digits(study, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(study)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync"]
    source = (study / "report.html").read_text()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/report.html")
            page.wait_for_load_state("load")
            found = page.evaluate(
                """() => ({
                    images: document.images.length,
                    decoded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
                    tables: document.querySelectorAll("table").length,
                    sections: [...document.querySelectorAll("h2")].map(h => h.textContent),
                })"""
            )
            # What the browser built is what the file holds, every image decoded.
            assert found["images"] == source.count("<img ") > 0 and found["decoded"] == found["images"]
            assert found["tables"] == source.count("<table>") > 0
            assert found["sections"] == re.findall(r"<h2>(.*?)</h2>", source)
            assert found["sections"][:6] == [
                "Results",
                "Beside the lab report",
                "Bias and variance",
                "Which differences are real",
                "Which digits are wrong, and how surely",
                "Runs",
            ]
            # Click a cell of a confusion matrix: the digits of class i read as j appear, decoded.
            link = page.locator('a[href^="#cm-"]').first
            target = link.get_attribute("href")[1:]
            digits = page.locator(f"#{target}")
            assert not digits.is_visible()
            link.click()
            assert digits.is_visible()
            assert digits.locator("img").evaluate("i => i.naturalWidth") > 0
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "confusion-cell.png"
            digits.screenshot(path=str(shot))
            page.screenshot(path=str(ARTIFACTS / "report-screenshot.png"))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert shot.stat().st_size > 2_000


# --- right for any run ------------------------------------------------------------------------------------


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("rows", [1, 2, 5, 10])
def test_the_test_error_figure_stays_legible_from_1_to_10_experiments(rows):
    stat = summarise([0.97, 0.975, 0.98])
    fig = figures.accuracy_comparison(
        [figures.AccuracyRow(f"experiment-{i}", stat, 0.98 if i % 2 else None) for i in range(rows)], "test error"
    )
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    legend = fig.legends[0].get_window_extent(renderer)
    xlabel = ax.xaxis.label.get_window_extent(renderer)
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert not _boxes_overlap(legend, xlabel) and not any(_boxes_overlap(legend, t) for t in ticks)
    names = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(names) for b in names[i + 1 :])
    assert fig.get_size_inches()[1] * fig.dpi >= 200


@pytest.mark.parametrize("epochs", [1, 2, 30, 50])
def test_short_curves_show_a_marker_at_each_whole_epoch(epochs):
    history = [Epoch(i + 1, 0.5 / (i + 1), 0.9, 0.6 / (i + 1), 0.88, 1.0) for i in range(epochs)]
    fig = figures.validation_curves([history], "curves")
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == epochs]
        assert lines and all((line.get_marker() not in ("None", "", None)) == (epochs <= 30) for line in lines)
        if epochs < 5:
            assert [int(t) for t in ax.get_xticks()] == list(range(1, epochs + 1))
            assert ax.get_xlim() == (0.5, epochs + 0.5)


def test_the_report_of_a_one_epoch_run_in_chromium(tiny_run, tmp_path):
    """A newcomer's first report: no verdict against the lab's 20 epochs, no empty section, every figure
    decoded; screenshots kept as artifacts."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    html, _ = build.build([tiny_run], tmp_path / "first.html")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        found = page.evaluate(
            """() => {
                const headings = [...document.querySelectorAll("h1, h2, h3")];
                const empty = headings.filter(h => {
                    const next = h.nextElementSibling;
                    return !next || (/^H[1-6]$/.test(next.tagName) && next.tagName <= h.tagName);
                }).map(h => h.textContent);
                return {
                    text: document.body.innerText,
                    empty,
                    decoded: [...document.images].every(i => i.complete && i.naturalWidth > 0),
                    chart: [...document.images].find(i => i.alt.startsWith("test error")).naturalHeight,
                };
            }"""
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-one-epoch.png"), full_page=True)
        browser.close()
    assert "beyond rounding" not in found["text"] and found["text"].count("within rounding") == 1  # the rule, once
    assert "Not comparable: 1 epoch against the lab's 20" in found["text"]
    assert found["empty"] == [] and found["decoded"] and found["chart"] >= 200
    assert "Which digits are wrong" not in found["text"] and "Which differences are real" not in found["text"]
    assert "with no other experiment here to judge its bias by" in found["text"]
    contradictions = found["text"].split("Where the report's text contradicts its numbers", 1)[1].split("Bias", 1)[0]
    assert "provided" in contradictions and "final-as-written" not in contradictions
