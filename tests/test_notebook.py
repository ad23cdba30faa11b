"""The lab in a notebook: a Python API whose options are real keyword arguments, results worth looking
at (numbers, tables, figures, a card, a digit reader), nothing global touched on import, and the
example notebook run whole."""

import html.parser
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mnistlab
from mnistlab import api
from mnistlab.cli import main
from mnistlab.data import SPLITS
from mnistlab.reporting.findings import cell
from mnistlab.studies.folder import RunFolder

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lab.ipynb"
QUICK = {"epochs": 1, "batch_size": 1000, "compile": False, "quiet": True}


def test_every_public_function_lists_its_options():
    for name in ("run", "study", "sweep"):
        parameters = inspect.signature(getattr(mnistlab, name)).parameters
        assert set(api.OPTIONS) <= set(parameters), name
        assert parameters["epochs"].annotation == int | None and parameters["seeds"].default == 1
        assert "l2" in getattr(mnistlab, name).__doc__ or name != "run"
    assert list(inspect.signature(mnistlab.report).parameters) == ["folders", "out"]
    assert "final" in mnistlab.presets() and "l2-sweep" in mnistlab.sweeps()


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ({"epoch": 5}, "unknown option or config key 'epoch' (did you mean 'epochs'?)"),
        ({"l3": 1e-4}, "unknown option or config key 'l3' (did you mean 'l2'?)"),
        ({"l2": -1.0}, "l2=: model.l2 must be a number from 0 to 100, got -1.0"),
        ({"batch_size": "half"}, 'batch_size=: train.batch_size must be a positive integer or "full"'),
        ({"set": {"model.l2": float("nan")}}, "--set: model.l2 must be a number from 0 to 100"),
        ({"set": {"model.colour": 1}}, "unknown key 'model.colour'"),
        ({"set": "model.l2=1e-4"}, "set takes"),
        ({"seeds": 0}, "seeds must be a whole number, at least 1"),
    ],
)
def test_a_wrong_option_or_key_is_a_one_line_config_error_naming_the_valid_ones(tmp_path, call, words, monkeypatch):
    monkeypatch.setattr(api._Request, "train", lambda *a: pytest.fail("trained"))
    with pytest.raises(mnistlab.ConfigError) as caught:
        mnistlab.run("provided", out=tmp_path / "run", **call)
    message = str(caught.value)
    assert words in message and "\n" not in message and isinstance(caught.value, ValueError)
    if "unknown option" in words:
        assert "options: epochs, seed, seeds" in message and "config keys: seed, dataset" in message
    assert not (tmp_path / "run").exists()


def test_hyperparameters_as_python_values_train_as_the_command_line_trains(tmp_path, data_env):
    by_value = mnistlab.run("provided", l2=np.float64(1e-4), seeds=2, out=tmp_path / "python", **QUICK)
    by_set = ["--set", "model.l2=1e-4", "--set", "train.batch_size=1000", "--epochs", "1", "--no-compile"]
    assert main(["run", "provided", *by_set, "--seeds", "2", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    for seed in (0, 1):
        python, cli = (RunFolder(tmp_path / where / f"seed-{seed}") for where in ("python", "cli"))
        assert python.read_config() == cli.read_config() and python.read_config()["model"]["l2"] == 1e-4
        assert python.file("model.safetensors").read_bytes() == cli.file("model.safetensors").read_bytes()
    assert by_value.seeds == 2


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("notebook") / "study"
    return mnistlab.study(["provided", "dropout"], seeds=2, out=out, data_dir=mnist_dir, **QUICK)


def test_a_runs_properties_are_its_metrics(small_study, tiny_run):
    run = mnistlab.load_run(tiny_run)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for split, prefix in (("train", "train"), ("validation", "val"), ("full", "full"), ("test", "test")):
        assert getattr(run, f"{prefix}_accuracy") == metrics[split]["accuracy"]
        assert getattr(run, f"{prefix}_loss") == metrics[split]["loss"]
    history = run.history
    assert len(history) == sum(metrics["epochs"].values()) and set(history["phase"]) == {1, 2}
    two = small_study["provided"]
    assert two.seeds == 2 and two.test_accuracy == pytest.approx(
        np.mean([r.metrics.scores["test"].accuracy for r in two.seed_runs])
    )
    assert len(two.history) == 2 * (1 + 1)
    for figure in (run.plot(), run.confusion(), run.errors(), two.plot(), small_study.plot()):
        assert figure.axes and figure.get_size_inches()[1] > 1


def test_a_studys_table_is_its_reports_table(small_study):
    table = small_study.table()
    markdown = (small_study.folder / "report.md").read_text()
    section = markdown.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(table) == 2
    for line, (_, row) in zip(rows, table.iterrows(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        shown = []
        for split in SPLITS:
            for key in ("accuracy", "loss"):
                half = row[f"{split}_{key}_half"]
                low, high = (
                    (None, None) if np.isnan(half) else (row[f"{split}_{key}"] - half, row[f"{split}_{key}"] + half)
                )
                summary = type("S", (), {"mean": row[f"{split}_{key}"], "low": low, "high": high})()
                shown.append(cell(summary, key))
        assert cells[0] == row["experiment"] and cells[1] == str(row["seeds"]) and cells[4:12] == shown


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def test_the_card_is_valid_html_holding_the_test_accuracy(small_study):
    run = small_study["dropout"]
    card = run._repr_html_()
    parser = _Parser()
    parser.feed(card)
    parser.close()
    assert parser.open == []
    assert cell(run.experiment.stat("test", "accuracy"), "accuracy") in card and "2 seeds" in card
    assert "Not comparable with the lab report: 1 epoch against the lab&#x27;s 50" in card
    study_card = small_study._repr_html_()
    _Parser().feed(study_card)
    assert "provided" in study_card and "dropout" in study_card


def test_run_predict_reads_arrays_as_mnistlab_predict_reads_their_pictures(tiny_run, mnist, tmp_path, capsys):
    digits = (mnist.test_images[:1000].numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)
    paths = []
    for index, digit in enumerate(digits):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(digit).save(paths[-1])
    run = mnistlab.load_run(tiny_run)
    from_arrays = run.predict(digits)
    from_floats = run.predict(digits.astype(np.float32) / 255)
    assert main(["predict", str(tiny_run), *map(str, paths), "--json"]) == 0
    from_files = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p.label for p in from_arrays] == [p.label for p in from_floats] == [f["label"] for f in from_files]
    assert [round(p.probability, 6) for p in from_arrays] == [round(f["probability"], 6) for f in from_files]
    assert run.predict(paths[:3])[0].label == from_files[0]["label"]


def test_importing_mnistlab_leaves_matplotlibs_backend_as_it_was(tiny_run):
    code = f"""
import matplotlib
matplotlib.use("svg")
import mnistlab, mnistlab.results, mnistlab.evaluation.figures
run = mnistlab.load_run({str(tiny_run)!r})
run.plot(), run.confusion()
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_example_notebook_runs_whole(tmp_path, data_env):
    """examples/lab.ipynb, executed in a fresh kernel in an empty folder; any error in a cell fails."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # kept clean
    # data_env: the data's absolute path, as the kernel runs in tmp_path (the README's is relative)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 5  # the figures, drawn
    assert any("mnistlab-run" in out.get("data", {}).get("text/html", "") for out in outputs)  # the cards
    assert (tmp_path / "notebook-study" / "report.html").is_file()
