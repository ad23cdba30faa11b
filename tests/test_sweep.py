"""Sweeps: the TOML form and its errors, a grid's runs, sweep.csv against the run folders, the report's
validation curve and heat map, and a reproducible Optuna search. Trained on real MNIST, small and eager."""

import base64
import csv
import io
import json
import re
import tomllib
from html import unescape
from pathlib import Path

import pytest
from PIL import Image

from mnistlab.cli import main
from mnistlab.spec import sweep as sweep_spec

FAST = ["--no-compile", "--quiet"]  # and the sweeps below train in batches of 1000: none tests the batch


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_sweep_loads_and_says_what_it_tests(capsys):
    names = sweep_spec.sweep_names()
    assert {"l2-sweep", "l1-sweep", "dropout-sweep", "lr-sweep", "batch-sweep", "width-sweep"} <= set(names)
    for name in names:
        sweep = sweep_spec.load(name)
        assert sweep.description and sweep.claim and sweep.size >= 4
    l2 = sweep_spec.load("l2-sweep")
    assert [p.settings[0][1] for p in l2.points()] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert main(["sweeps"]) == 0
    assert "l2-sweep" in capsys.readouterr().out


def test_a_grid_is_the_cross_product_and_paired_keys_move_together(tmp_path):
    path = _write(
        tmp_path,
        'base = "provided"\n[[axis]]\nkey = "model.l2"\nvalues = [0.0, 1e-4, 1e-3]\n'
        '[[axis]]\nkeys = ["train.batch_size", "train.epochs"]\nvalues = [[32, 2], [64, 3]]\n',
    )
    points = sweep_spec.load(str(path)).points()
    assert len(points) == 6
    assert points[1].label == "l2=0,batch_size=64,epochs=3"
    assert points[1].overrides() == ["model.l2=0.0", "train.batch_size=64", "train.epochs=3"]


BAD = {
    "unknown top key": (
        'base = "provided"\ncolour = 1\n[[axis]]\nkey = "model.l2"\nvalues = [0.1]\n',
        "unknown key 'colour'",
    ),
    "empty axis": (
        'base = "provided"\n[[axis]]\nkey = "model.l2"\nvalues = []\n',
        "values must be a list of one or more values",
    ),
    "no axis": ('base = "provided"\n', "missing 'axis'"),
    "seed axis": ('base = "provided"\n[[axis]]\nkey = "seed"\nvalues = [1, 2]\n', "cannot be swept"),
    "log of zero": ('base = "provided"\n[[axis]]\nkey = "model.l2"\nlog_range = [0, 1]\npoints = 3\n', "0 < lo < hi"),
    "one point": (
        'base = "provided"\n[[axis]]\nkey = "model.l2"\nlog_range = [1e-5, 1]\npoints = 1\n',
        "points = N, from 2 to 1,000, got 1",
    ),
    "drawn grid": ('base = "provided"\n[[axis]]\nkey = "model.l2"\nuniform = [0, 1]\n', "add [search]"),
    "pairs": ('base = "provided"\n[[axis]]\nkeys = ["model.l2", "model.l1"]\nvalues = [[1]]\n', "one value per key"),
    "bad method": (
        'base = "provided"\n[search]\nmethod = "grid2"\n[[axis]]\nkey = "model.l2"\nvalues = [1]\n',
        "method",
    ),
    "toml": ('base = "provided\n', "invalid TOML"),
    "pruned grid": (
        'base = "provided"\n[search]\npruner = "asha"\n[[axis]]\nkey = "model.l2"\nvalues = [1]\n',
        'search.pruner is for method = "optuna" only',
    ),
    "unknown pruner": (
        'base = "provided"\n[search]\nmethod = "optuna"\ntrials = 4\npruner = "asah"\n'
        '[[axis]]\nkey = "model.l2"\nuniform = [0, 1]\n',
        "search.pruner must be one of none, asha, hyperband, median, got 'asah'",
    ),
    "median's factor": (
        'base = "provided"\n[search]\nmethod = "optuna"\ntrials = 4\npruner = "median"\nreduction_factor = 3\n'
        '[[axis]]\nkey = "model.l2"\nuniform = [0, 1]\n',
        'search.reduction_factor is for pruner = "asha" or "hyperband" only',
    ),
    "no reduction": (
        'base = "provided"\n[search]\nmethod = "optuna"\ntrials = 4\npruner = "asha"\nreduction_factor = 1\n'
        '[[axis]]\nkey = "model.l2"\nuniform = [0, 1]\n',
        "search.reduction_factor must be an integer from 2 to 100, got 1",
    ),
    "no epochs before pruning": (
        'base = "provided"\n[search]\nmethod = "optuna"\ntrials = 4\npruner = "asha"\nmin_epochs = 0\n'
        '[[axis]]\nkey = "model.l2"\nuniform = [0, 1]\n',
        "search.min_epochs must be an integer from 1",
    ),
    "unknown config key": ('base = "provided"\n[[axis]]\nkey = "model.colour"\nvalues = [1]\n', "model.colour"),
    "bad value": ('base = "provided"\n[[axis]]\nkey = "model.dropout"\nvalues = [0.2, 1.5]\n', "model.dropout"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_files_are_one_line_and_create_nothing(tmp_path, capsys, case):
    text, expected = BAD[case]
    path = _write(tmp_path, text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnistlab: error: ") and "\n" not in err and expected in err, err
    assert not (tmp_path / "out").exists()


def _png_images(html: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_a_sweep_trains_its_points_writes_its_table_and_reports_its_curve(tmp_path, data_env, capsys):
    path = _write(
        tmp_path,
        'description = "L2 of the provided model"\nclaim = "A higher L2 gives more bias."\nbase = "provided"\n'
        'set = ["train.epochs=1", "train.batch_size=1000"]\nlab = { "model.l2" = [1e-3] }\n'
        '[[axis]]\nkey = "model.l2"\nlog_range = [1e-5, 1e-1]\npoints = 3\n',
    )
    out = tmp_path / "l2"
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(out), *FAST]) == 0
    runs = sorted(out.rglob("metrics.json"))
    assert len(runs) == 6  # 3 points x 2 seeds
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for row in rows:
        metrics = json.loads((out / row["point"] / f"seed-{row['seed']}" / "metrics.json").read_text())
        config = tomllib.loads((out / row["point"] / f"seed-{row['seed']}" / "config.toml").read_text())
        assert float(row["model.l2"]) == config["model"]["l2"]
        for split in ("train", "validation", "full", "test"):
            assert float(row[f"{split}_loss"]) == pytest.approx(metrics[split]["loss"], rel=1e-5)
            assert float(row[f"{split}_accuracy"]) == pytest.approx(metrics[split]["accuracy"], rel=1e-5)
        assert int(row["epochs"]) == metrics["epochs"]["phase1"] == 1
    assert sorted({float(r["model.l2"]) for r in rows}) == [1e-5, 1e-3, 1e-1]

    html = unescape((out / "report.html").read_text())
    assert "Sweep: s" in html and "A higher L2 gives more bias." in html
    assert "The lowest validation loss is at l2 = " in html and "The report's values: 0.001" in html
    curve = [image for image in _png_images(html) if image.width > 800]
    assert curve and curve[0].size[1] > 200  # the validation curve, decoded
    markdown = (out / "report.md").read_text()
    assert "Sweep: s" in markdown

    # Run again: nothing to train, the same table.
    before = (out / "sweep.csv").read_text()
    capsys.readouterr()
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(out), "--no-compile"]) == 0
    assert "6 of 6 runs already finished" in capsys.readouterr().out
    assert (out / "sweep.csv").read_text() == before


def test_a_two_axis_grid_makes_every_run_and_a_heat_map(tmp_path, data_env):
    path = _write(
        tmp_path,
        'base = "provided"\nset = ["train.epochs=1", "train.batch_size=1000"]\n'
        '[[axis]]\nkey = "model.l2"\nvalues = [0.0, 1e-3]\n'
        '[[axis]]\nkey = "train.learning_rate"\nvalues = [1e-3, 3e-3]\n',
    )
    out = tmp_path / "grid"
    assert main(["sweep", str(path), "--out", str(out), *FAST]) == 0
    assert len(list(out.rglob("metrics.json"))) == 4
    assert len((out / "sweep.csv").read_text().strip().splitlines()) == 1 + 4
    assert "heat map of validation error" in (out / "report.html").read_text()


def test_an_optuna_search_with_a_fixed_seed_is_reproducible(tmp_path, data_env):
    path = _write(
        tmp_path,
        'base = "provided"\nset = ["train.epochs=1", "train.batch_size=1000"]\n'
        '[search]\nmethod = "optuna"\ntrials = 3\nseed = 7\n'
        '[[axis]]\nkey = "model.l2"\nlog_uniform = [1e-6, 1e-2]\n'
        '[[axis]]\nkey = "model.dropout"\nvalues = [0.0, 0.2]\n',
    )
    tables = []
    for name in ("a", "b"):
        assert main(["sweep", str(path), "--out", str(tmp_path / name), *FAST]) == 0
        with open(tmp_path / name / "sweep.csv") as f:
            tables.append([{k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(f)])
    assert tables[0] == tables[1]
    assert len(tables[0]) == 3 and len({row["model.l2"] for row in tables[0]}) == 3


def _point(l2: float, train: list[float], validation: list[float]):
    from mnistlab.evaluation.statistics import summarise
    from mnistlab.reporting.sweep_section import PointSummary

    error = summarise([0.02] * len(train))
    return PointSummary(
        f"l2={l2:g}", {"model.l2": l2}, len(train), summarise(train), summarise(validation), error, error
    )


def test_the_curve_is_read_for_bias_variance_and_seed_noise():
    from mnistlab.reporting.sweep_section import read_curve, sentence

    points = [
        _point(1e-6, [0.003, 0.004, 0.003], [0.150, 0.160, 0.155]),  # far apart: high variance
        _point(1e-5, [0.010, 0.011, 0.012], [0.100, 0.104, 0.102]),
        _point(1e-4, [0.030, 0.031, 0.032], [0.090, 0.093, 0.091]),  # the best
        _point(1e-3, [0.060, 0.061, 0.059], [0.092, 0.090, 0.094]),  # within noise of it
        _point(1e-2, [0.790, 0.800, 0.795], [0.795, 0.805, 0.800]),  # train above the best validation: high bias
    ]
    reading = read_curve(points)
    assert reading.best is points[2]
    assert reading.within_noise == points[2:4]
    assert reading.high_bias == [points[4]] and reading.high_variance == [points[0]]
    record = {"axes": [["model.l2"]], "lab": {"model.l2": [1e-5, 1e-2]}}
    said = sentence(record, points, reading)
    assert "The lowest validation loss is at l2 = 0.0001" in said
    assert "l2 from 0.0001 to 0.001 is within seed noise of it" in said
    assert "at 0.01 training loss is well above" in said and "high bias" in said
    assert "at 1e-06 validation loss exceeds training loss" in said
    assert "The report's values: 1e-05: validation loss 0.1020, above the best; 0.01: high bias." in said


def test_a_curve_of_short_runs_whose_validation_is_below_training_has_no_high_variance():
    from mnistlab.reporting.sweep_section import read_curve

    # Two epochs of a sweep, one seed: validation loss a little under training loss at every point.
    points = [_point(1e-6, [0.190], [0.186]), _point(1e-5, [0.195], [0.189]), _point(1e-4, [0.240], [0.236])]
    reading = read_curve(points)
    assert reading.best is points[0] and reading.high_variance == []
