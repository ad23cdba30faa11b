"""`mnistlab run` and `mnistlab study` end to end on the real data, with a small model."""

import json
import shutil
import tomllib

import pytest
import torch

from mnistlab import model, runs
from mnistlab.cli import main
from mnistlab.model import Regularization


@pytest.fixture
def data_env(mnist_dir, monkeypatch):
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_dir))


def test_run_writes_a_complete_run_folder(tmp_path, data_env, mnist):
    out = tmp_path / "provided"
    assert main(["run", "provided", "--epochs", "1", "--no-compile", "--quiet", "--out", str(out)]) == 0
    written = {"config.toml", "environment.json", "history.csv", "metrics.json", "model.json", "summary.txt"}
    pictures = {"validation_curves.png", "retraining_curve.png", "misclassified.png", "per_class.png", "confusion.png"}
    assert {p.name for p in out.iterdir()} == written | pictures | {"model.safetensors", "analysis.json"}
    for picture in pictures:
        assert (out / picture).read_bytes().startswith(b"\x89PNG") and (out / picture).stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["provided"]  # nothing half-built left beside it

    metrics = runs.read_metrics(out)
    for split in ("train", "validation", "full", "test"):
        assert {"loss", "accuracy"} <= set(metrics[split]) and 0.85 < metrics[split]["accuracy"] < 1
    assert metrics["epochs"] == {"phase1": 1, "phase2": 1} and metrics["parameters"] == 784 * 18 + 18 + 18 * 10 + 10

    history = runs.read_history(out)
    assert [(row["phase"], row["epoch"], row["eval_split"]) for row in history] == [
        (1, 1, "validation"),
        (2, 1, "test"),
    ]
    assert history[0]["eval_loss"] == pytest.approx(metrics["validation"]["loss"], rel=1e-4)

    # The saved phase-2 model reproduces the test metrics.
    params, arch = model.load(out / "model.safetensors")
    reg = Regularization.of(arch, [{"input_dropout": 0, "dropout": 0, "l1": 0, "l2": 0}], torch.device("cpu"))
    loss, accuracy = model.evaluate(params.view(1, -1), arch, reg, *mnist.split("test"))
    assert accuracy.item() == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert loss.item() == pytest.approx(metrics["test"]["loss"], rel=1e-5)

    config = tomllib.loads((out / "config.toml").read_text())
    assert config["train"]["epochs"] == 1 and config["model"]["hidden"] == [18]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["seed"] == 0 and environment["threads"] == torch.get_num_threads()
    assert environment["compiled"] is False


def test_config_written_by_a_run_runs_again_to_the_same_result(tmp_path, data_env):
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        main(["run", "provided", "--epochs", "1", "--seed", "5", "--no-compile", "--quiet", "--out", str(first)]) == 0
    )
    again = ["run", str(first / "config.toml"), "--no-compile", "--quiet", "--out", str(second)]
    assert main(again) == 0
    assert runs.read_metrics(first)["test"] == runs.read_metrics(second)["test"]
    assert runs.read_metrics(second)["seed"] == 5


def test_study_trains_seeds_in_lockstep_skips_finished_runs_and_reports(tmp_path, data_env, capsys):
    args = ["study", "--presets", "provided", "--epochs", "1", "--seeds", "2", "--out", str(tmp_path), "--no-compile"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "training 2 in lockstep" in out and "provided (seed 0), provided (seed 1)" in out
    seeds = [runs.read_metrics(tmp_path / "provided" / f"seed-{s}") for s in (0, 1)]
    assert [m["seed"] for m in seeds] == [0, 1] and seeds[0]["test"] != seeds[1]["test"]
    aggregate = json.loads((tmp_path / "provided" / "aggregate.json").read_text())
    accuracies = [m["test"]["accuracy"] for m in seeds]
    assert aggregate["test"]["accuracy"]["n"] == 2
    assert aggregate["test"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
    assert (
        aggregate["test"]["accuracy"]["low"]
        < min(accuracies)
        <= max(accuracies)
        < aggregate["test"]["accuracy"]["high"]
    )
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()

    first = (tmp_path / "provided" / "seed-0" / "metrics.json").read_bytes()
    shutil.rmtree(tmp_path / "provided" / "seed-1")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of 2 runs already finished" in out and "training 1 in lockstep" in out
    assert (tmp_path / "provided" / "seed-0" / "metrics.json").read_bytes() == first
    assert runs.read_metrics(tmp_path / "provided" / "seed-1")["test"] == seeds[1]["test"]


def test_experiments_that_differ_only_in_name_train_once(tmp_path, data_env, capsys):
    """The report's final model is its dropout model: one training writes both run folders."""
    args = ["study", "--presets", "dropout", "final", "--epochs", "1", "--set", "train.batch_size=500"]
    assert main([*args, "--out", str(tmp_path), "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "final (seed 0): the same training as dropout (seed 0), trained once" in out
    assert "training 1 in lockstep" in out
    dropout, final = (runs.read_metrics(tmp_path / name) for name in ("dropout", "final"))
    assert (dropout["preset"], final["preset"]) == ("dropout", "final")
    assert dropout["test"] == final["test"] and dropout["validation"] == final["validation"]
    weights = [model.load(tmp_path / name / "model.safetensors")[0] for name in ("dropout", "final")]
    assert torch.equal(*weights)
