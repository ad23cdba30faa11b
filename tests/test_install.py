"""Installs that fit the need: the base install trains, reports and reads digits; a command that needs an
extra that is not installed names it in one line, before it does anything. The packages of the extras
are hidden from the commands here as they would be missing from a base install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mnistlab.extras import EXTRA_OF

FAST = ["--epochs", "1", "--set", "train.batch_size=1000", "--no-compile"]
BASE_ONLY = f"""
import sys
for module in {sorted({*EXTRA_OF, "dask", "multipart"} - {"pandas"})!r}:  # scikit-learn peeks at sys.modules for pandas
    sys.modules[module] = None  # as if not installed: importing it fails, find_spec finds nothing
from mnistlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _base(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BASE_ONLY, *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def env(mnist_dir) -> dict:
    return {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}


def test_the_base_install_runs_reports_and_predicts(tmp_path, env):
    run = _base("run", "provided", *FAST, "--out", str(tmp_path / "run"), env=env)
    assert run.returncode == 0, run.stderr
    assert f"next: mnistlab report {tmp_path / 'run'}" in run.stdout
    report = _base("report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html"), env=env)
    assert report.returncode == 0 and (tmp_path / "r.html").is_file(), report.stderr
    picture = tmp_path / "d.png"
    Image.new("L", (56, 56), 255).save(picture)
    predict = _base("predict", str(tmp_path / "run"), str(picture), env=env)
    assert predict.returncode == 0 and "no digit" in predict.stdout, predict.stderr


def test_a_study_without_dask_trains_in_this_process_and_says_what_would_be_faster(tmp_path, env):
    study = _base("study", "--presets", "provided", "final", *FAST, "--workers", "2", "--out", str(tmp_path / "s"),
                  env=env)  # fmt: skip
    assert study.returncode == 0, study.stderr
    assert "training in this process: 2 worker processes would be faster" in study.stdout
    assert "pip install 'mnistlab[cluster]'" in study.stdout and (Path(tmp_path / "s" / "report.html")).is_file()


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve", "{run}"], "serve"),
        (["export", "{run}", "--onnx", "{tmp}/m.onnx"], "onnx"),
        (["predict", "--onnx", "{tmp}/m.onnx", "{tmp}/d.png"], "onnx"),
        (["run", "provided", *FAST, "--cluster", "tcp://127.0.0.1:1", "--out", "{tmp}/c"], "cluster"),
    ],
)
def test_a_command_whose_extra_is_missing_names_it_in_one_line(tmp_path, env, tiny_run, args, extra):
    args = [a.format(run=tiny_run, tmp=tmp_path) for a in args]
    done = _base(*args, env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"pip install 'mnistlab[{extra}]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "c").exists()


def test_an_optuna_sweep_without_optuna_names_the_extra_before_training(tmp_path, env):
    sweep = tmp_path / "s.toml"
    sweep.write_text("base = 'provided'\n[search]\nmethod = 'optuna'\ntrials = 2\n"
                     "[[axis]]\nkey = 'model.l2'\nlog_uniform = [1e-6, 1e-2]\n")  # fmt: skip
    done = _base("sweep", str(sweep), *FAST, "--out", str(tmp_path / "out"), env=env)
    assert done.returncode == 1 and "pip install 'mnistlab[sweep]'" in done.stderr
    assert not (tmp_path / "out").exists()
