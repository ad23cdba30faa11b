"""`mnistlab run` and `mnistlab study` end to end on the real data, with a small model."""

import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab import api
from mnistlab.cli import main
from mnistlab.nn.mlp import Regularization, evaluate
from mnistlab.spec import config
from mnistlab.studies import write as run_folder
from mnistlab.studies.execute import Placement, execute
from mnistlab.studies.folder import RunFolder, SeedRun
from mnistlab.studies.plan import PlannedRun, seed_runs, stacks
from mnistlab.train import calibration, hardware
from mnistlab.train.choices import EngineOptions

FAST = ["--set", "train.batch_size=1000", "--no-compile", "--quiet"]  # an epoch in a second or two


def test_run_writes_a_complete_run_folder(tmp_path, data_env, mnist):
    out = tmp_path / "provided"
    assert main(["run", "provided", "--epochs", "1", "--no-compile", "--quiet", "--out", str(out)]) == 0
    written = {"config.toml", "environment.json", "history.csv", "metrics.json", "model.json", "summary.txt"}
    pictures = {"validation_curves.png", "retraining_curve.png", "misclassified.png", "per_class.png", "confusion.png"}
    tensors = {"model.safetensors", "errors.safetensors"}
    assert {p.name for p in out.iterdir()} == written | pictures | tensors | {"analysis.json", "mnistlab.json"}
    for picture in pictures:
        assert (out / picture).read_bytes().startswith(b"\x89PNG") and (out / picture).stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["provided"]  # nothing half-built left beside it

    run = SeedRun.load(out)
    for split in ("train", "validation", "full", "test"):
        assert 0.85 < run.metrics.scores[split].accuracy < 1 and run.metrics.scores[split].loss > 0
    assert run.metrics.epochs == {"phase1": 1, "phase2": 1} and run.metrics.parameters == 784 * 18 + 18 + 18 * 10 + 10
    assert run.metrics.split_sizes == {"train": 50_000, "validation": 10_000, "full": 60_000, "test": 10_000}
    assert run.metrics.misclassified == round((1 - run.metrics.scores["test"].accuracy) * 10_000)
    assert [(e.epoch, len(h)) for h in (run.history.phase1, run.history.phase2) for e in h] == [(1, 1), (1, 1)]
    assert run.history.phase1[0].eval_loss == pytest.approx(run.metrics.scores["validation"].loss, rel=1e-4)
    # The run keeps the test images behind its analysis: its report needs no data set.
    images, analysis = run.folder.read_error_images(), run.analysis()
    assert set(images) == {m.index for m in analysis.misclassified} | {t.index for t in analysis.top_losses}
    test_images = mnist.split("test")[0]
    for index in list(images)[:20]:
        assert np.array_equal(images[index], (test_images[index] * 255).round().to(torch.uint8).view(28, 28).numpy())

    # The saved phase-2 model reproduces the test metrics.
    params, arch = run.folder.read_weights()
    reg = Regularization.of(arch, [config.load("provided").hyperparameters], torch.device("cpu"))
    loss, accuracy = evaluate(params.view(1, -1), arch, reg, *mnist.split("test"))
    assert accuracy.item() == pytest.approx(run.metrics.scores["test"].accuracy, abs=1e-6)
    assert loss.item() == pytest.approx(run.metrics.scores["test"].loss, rel=1e-5)

    assert run.folder.read_config()["train"]["epochs"] == 1 and run.folder.read_config()["model"]["hidden"] == [18]
    environment = run.folder.read_environment()
    assert environment["seed"] == 0 and environment["threads"] == torch.get_num_threads()
    assert environment["compiled"] is False


def test_an_aggregate_is_written_when_its_last_seed_lands_not_after_the_plan(tmp_path, data_env):
    args = ["study", "--presets", "provided", "powerful", "--epochs", "1", "--seeds", "2", "--workers", "1"]
    assert main([*args, *FAST, "--out", str(tmp_path)]) == 0
    # Two architectures, two stacks; the larger trains first, and its aggregate comes before the other's runs.
    powerful, provided = (tmp_path / name for name in ("powerful", "provided"))
    assert json.loads((powerful / "aggregate.json").read_text())["seeds"] == [0, 1]
    for seed in (0, 1):
        assert (powerful / "aggregate.json").stat().st_mtime_ns < (
            provided / f"seed-{seed}" / "metrics.json"
        ).stat().st_mtime_ns
        assert (provided / f"seed-{seed}" / "metrics.json").stat().st_mtime_ns < (
            provided / "aggregate.json"
        ).stat().st_mtime_ns


@pytest.mark.skipif(hardware.cores() < 2, reason="threads alone and every core are the same on one core")
def test_a_plan_of_one_stack_trains_with_the_threads_that_suit_a_stack_alone(tmp_path, mnist_dir):
    # A calibration that found one thread best for a stack alone, and a single process for the plan.
    tuned = dataclasses.replace(calibration.fixed(torch.device("cpu")), workers=1, threads_alone=1)
    experiment = config.load("provided", ["train.batch_size=1000", "train.epochs=1"])
    for seeds, expected in ((1, 1), (2, hardware.cores())):  # one seed, one stack; two seeds of one row each, two
        folder = RunFolder(tmp_path / f"seeds-{seeds}")
        placement = Placement(tuned, EngineOptions(compile=False))
        execute(seed_runs(experiment, folder, seeds), placement, mnist_dir, log=lambda _: None)
        environments = [SeedRun.load(p.parent).folder.read_environment() for p in folder.path.rglob("metrics.json")]
        assert {e["threads"] for e in environments} == {expected}, seeds


def test_config_written_by_a_run_runs_again_to_the_same_result(tmp_path, data_env):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", "provided", "--epochs", "1", "--seed", "5", *FAST, "--out", str(first)]) == 0
    assert main(["run", str(first / "config.toml"), "--no-compile", "--quiet", "--out", str(second)]) == 0
    assert SeedRun.load(first).metrics.scores == SeedRun.load(second).metrics.scores
    assert SeedRun.load(second).seed == 5


def test_study_trains_seeds_in_lockstep_skips_finished_runs_and_reports(tmp_path, data_env, capsys):
    # Batches of 256: two models fill the 512-row stack budget of a CPU.
    args = ["study", "--presets", "provided", "--epochs", "1", "--seeds", "2", "--out", str(tmp_path)]
    args += ["--set", "train.batch_size=256", "--no-compile"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "training 2 in lockstep" in out and "provided (seed 0), provided (seed 1)" in out
    seeds = [SeedRun.load(tmp_path / "provided" / f"seed-{s}") for s in (0, 1)]
    assert [r.seed for r in seeds] == [0, 1] and seeds[0].metrics.scores != seeds[1].metrics.scores
    # Each seed folder's config runs that seed again.
    assert [r.folder.read_config()["seed"] for r in seeds] == [0, 1]
    aggregate = json.loads((tmp_path / "provided" / "aggregate.json").read_text())
    accuracies = [r.metrics.scores["test"].accuracy for r in seeds]
    test = aggregate["test"]["accuracy"]
    assert test["n"] == 2 and test["mean"] == pytest.approx(sum(accuracies) / 2)
    assert test["low"] < min(accuracies) <= max(accuracies) < test["high"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()

    first = (tmp_path / "provided" / "seed-0" / "metrics.json").read_bytes()
    shutil.rmtree(tmp_path / "provided" / "seed-1")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of 2 runs already finished" in out and "training 1 in lockstep" in out
    assert (tmp_path / "provided" / "seed-0" / "metrics.json").read_bytes() == first
    # Trained again alone, not in a stack of two: the same run but for rounding (README, Determinism).
    again = SeedRun.load(tmp_path / "provided" / "seed-1").metrics.scores
    for split, score in seeds[1].metrics.scores.items():
        assert again[split].loss == pytest.approx(score.loss, rel=1e-5), split
        assert again[split].accuracy == pytest.approx(score.accuracy, abs=2e-4), split


def test_experiments_that_differ_only_in_name_train_once(tmp_path, data_env, capsys):
    """The report's final model is its dropout model: one training writes both run folders."""
    args = ["study", "--presets", "dropout", "final", "--epochs", "1", "--set", "train.batch_size=500"]
    assert main([*args, "--out", str(tmp_path), "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "final (seed 0): the same training as dropout (seed 0), trained once" in out
    assert "training 1 in lockstep" in out
    dropout, final = (SeedRun.load(tmp_path / name) for name in ("dropout", "final"))
    assert (dropout.name, final.name) == ("dropout", "final")
    assert dropout.metrics.scores == final.metrics.scores
    assert torch.equal(dropout.folder.read_weights()[0], final.folder.read_weights()[0])


def test_early_stopping_on_a_model_the_study_also_trains_whole_is_read_off_its_training(tmp_path, data_env, capsys):
    args = ["study", "--presets", "powerful", "early-stopping", "--epochs", "2", *FAST[:-1], "--out", str(tmp_path)]
    assert main(args) == 0
    assert "training 1 in lockstep: powerful (seed 0); early-stopping (seed 0) as the first epochs of" in (
        capsys.readouterr().out
    )
    powerful, stopping = (SeedRun.load(tmp_path / name) for name in ("powerful", "early-stopping"))
    assert stopping.metrics.scores == powerful.metrics.scores
    assert torch.equal(stopping.folder.read_weights()[0], powerful.folder.read_weights()[0])
    assert stopping.folder.read_config()["early_stopping"]["patience"] == 15
    # One model trained: each run's share of the stack's wall time is all of it, not half.
    assert stopping.metrics.stack_size == powerful.metrics.stack_size == 1


def _planned(name: str, seeds: int, overrides=()) -> list[PlannedRun]:
    return seed_runs(config.load(name, list(overrides)), RunFolder(Path("x") / name), seeds)


def test_stacks_group_runs_that_can_share_a_step_balanced_within_the_row_budget():
    runs = [
        *_planned("powerful", 5),
        *_planned("dropout", 4),  # same architecture and batch: stacks with powerful
        *_planned("provided", 2),  # another architecture
        *_planned("final-as-written", 2),  # a full batch: never stacked
        *_planned("powerful", 1, ["train.batch_size=64", "seed=9"]),  # another batch size
    ]
    grouped = stacks(runs, rows=32 * 6)  # six models at batch 32
    wide = (128, 128, 64, 64, 32)
    shapes = Counter((s[0].experiment.hidden, s[0].experiment.batch_size, len(s)) for s in grouped)
    # Nine runs of one key make two balanced stacks, five and four, not six and three.
    expected = {(wide, 32, 5): 1, (wide, 32, 4): 1, ((18,), 32, 2): 1, (wide, None, 1): 2, (wide, 64, 1): 1}
    assert shapes == Counter(expected)
    assert all(len({r.experiment.lockstep_key() for r in s}) == 1 for s in grouped)
    nine = [s for s in grouped if s[0].experiment.hidden == wide and s[0].experiment.batch_size == 32]
    # Runs whose steps do the same work together, by seed: the five powerful, then the four with dropout.
    assert [[(r.experiment.name, r.experiment.seed) for r in s] for s in nine] == [
        [("powerful", seed) for seed in range(5)],
        [("dropout", seed) for seed in range(4)],
    ]
    assert grouped[0] == nine[0]  # the most work first: the stack to start early


def test_stacks_split_so_that_every_worker_has_one():
    runs = [*_planned("powerful", 1), *_planned("dropout", 1), *_planned("l2", 1), *_planned("provided", 1)]
    assert sorted(len(s) for s in stacks(runs, rows=512, workers=1)) == [1, 3]
    assert sorted(len(s) for s in stacks(runs, rows=512, workers=2)) == [1, 1, 2]
    assert sorted(len(s) for s in stacks(runs, rows=512, workers=8)) == [1, 1, 1, 1]


def test_runs_that_may_stop_early_stack_apart_in_balanced_stacks():
    stopping = _planned("early-stopping", 5, ["seed=5"])  # seeds no powerful run has: no run to ride
    runs = [*_planned("powerful", 5), *_planned("l2", 5), *stopping, *_planned("dropout", 15)]
    grouped = stacks(runs, rows=32 * 4)
    stopping = [s for s in grouped if s[0].experiment.hyperparameters.early_stopping]
    assert all(r.experiment.hyperparameters.early_stopping for s in stopping for r in s)
    assert sorted(len(s) for s in stopping) == [2, 3]
    assert sorted(len(s) for s in grouped if s not in stopping) == [3, 3, 3, 4, 4, 4, 4]  # 25 in 7, not 6 x 4 + 1
    # Of equal budgets, the run that trains its whole budget goes first, then the run that may stop.
    alone = [
        s[0].experiment.name for s in stacks([*_planned("early-stopping", 1), *_planned("final-as-written", 1)], 128)
    ]
    assert alone == ["final-as-written", "early-stopping"]


def test_a_run_that_is_the_first_epochs_of_another_rides_in_its_stack_as_no_row():
    runs = [*_planned("powerful", 6), *_planned("early-stopping", 3), *_planned("l2", 2)]
    grouped = stacks(runs, rows=32 * 4, workers=2)
    rows = [[r for r in s if not r.experiment.hyperparameters.early_stopping] for s in grouped]
    assert sorted(len(s) for s in rows) == [4, 4]  # 8 runs to train in stacks of at most 4
    for stack in grouped:
        powerful = {r.experiment.seed for r in stack if r.experiment.name == "powerful"}
        assert {r.experiment.seed for r in stack if r.experiment.name == "early-stopping"} == powerful & {0, 1, 2}
    assert sum(len(s) for s in grouped) == len(runs)


def test_an_interrupted_run_leaves_nothing(tmp_path, data_env, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "write_analysis", interrupt)  # mid-way through writing the run folder
    assert main(["run", "provided", "--epochs", "1", *FAST, "--out", str(tmp_path / "p")]) == 130
    assert list(tmp_path.iterdir()) == []


def test_split_sizes_follow_validation_size_everywhere(tmp_path, data_env, monkeypatch):
    titles = []
    curves = run_folder.figures.validation_curves

    def spy(histories, title, marks=None):
        titles.append(title)
        return curves(histories, title, marks)

    monkeypatch.setattr(run_folder.figures, "validation_curves", spy)
    out = tmp_path / "p"
    assert main(["run", "provided", "--epochs", "1", *FAST, "--set", "validation_size=5000", "--out", str(out)]) == 0
    run = SeedRun.load(out)
    assert run.metrics.split_sizes == {"train": 55_000, "validation": 5_000, "full": 60_000, "test": 10_000}
    assert len(run.history.phase1) == 1 and titles == ["provided (seed 0): training on 55k"]
    html, markdown = api.report([out], tmp_path / "r.html")
    text = re.sub(r"data:image/png;base64,[^\"]*", "", html.read_text()) + markdown.read_text()
    assert "train (55k) acc" in text and "validation (5k) acc" in text and "first 55k training images" in text
    assert "50k" not in text and "validation (10k)" not in text and "last 10k" not in text


def test_report_on_another_data_set_leaves_the_lab_out(tmp_path, fashion_dir):
    out = tmp_path / "fashion"
    args = ["run", "provided", "--epochs", "1", *FAST, "--out", str(out), "--data-dir", str(fashion_dir)]
    assert main(args) == 0
    run = SeedRun.load(out)
    assert run.metrics.dataset == "fashion-mnist" and run.analysis().classes[-1] == "Ankle boot"
    html, _ = api.report([out], tmp_path / "r.html")
    text = html.read_text()
    assert "Beside the lab report" not in text and "lab report&#x27;s numbers are for MNIST" in text
    assert "Ankle boot" in text and "Results" in text


def test_training_in_bf16_end_to_end_learns(tmp_path, data_env):
    (run,) = api.run(
        "provided", set=["train.batch_size=1000"], epochs=2, precision="bf16", compile=False, out=tmp_path / "b"
    ).seed_runs
    assert run.folder.read_environment()["precision"] == "bf16"
    assert run.metrics.scores["test"].accuracy > 0.85
    (fp32,) = api.run(
        "provided", set=["train.batch_size=1000"], epochs=2, precision="fp32", compile=False, out=tmp_path / "f"
    ).seed_runs
    assert run.metrics.scores != fp32.metrics.scores  # bf16 did round the matmuls
    assert run.metrics.scores["test"].accuracy == pytest.approx(fp32.metrics.scores["test"].accuracy, abs=0.01)
