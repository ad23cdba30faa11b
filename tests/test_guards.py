"""Nothing lost, round two: every writer refuses an output path the OS would refuse before any work,
every number is finite and in range, every size is checked before it is built, special files and
mis-typed weights are refused, and points of a sweep never share a folder.

Most classes are generated: a table of output-path faults against every writer, a table of special
files against every reader, every float key against inf and NaN, every dtype against the weights."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mnistlab import api
from mnistlab.cli import main
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.spec import config
from mnistlab.spec import sweep as sweep_spec
from mnistlab.studies.folder import RunFolder, SeedRun
from mnistlab.train import calibration

FAST = ["--epochs", "1", "--set", "train.batch_size=1000", "--no-compile", "--quiet"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnistlab: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: a refusal must come before any."""

    def trained(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(api._Request, "train", trained)


# --- output paths ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _immutable(folder: Path):
    """`folder` with the immutable flag set (root cannot write there either); skips where chattr cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True) if shutil.which("chattr") else None
    if done is None or done.returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _fault(tmp_path: Path, fault: str, want_folder: bool):
    """A context giving an output path that `fault` makes unwritable, and the words the error must hold."""
    if fault == "parent is a file":
        (tmp_path / "notes.txt").write_text("mine")
        return contextlib.nullcontext(tmp_path / "notes.txt" / "out"), "is a file, not a folder"
    if fault == "name too long for the lock":
        return contextlib.nullcontext(tmp_path / ("x" * 240)), "too long"
    if fault == "name too long":
        return contextlib.nullcontext(tmp_path / ("y" * 300)), "too long"
    if fault == "a folder the OS refuses":
        return contextlib.nullcontext(Path("/proc/mnistlab-test/out")), "cannot write there"
    if fault == "immutable parent":
        return _immutable(tmp_path / "locked"), "cannot write there"
    if fault == "wrong kind already there":
        if want_folder:
            (tmp_path / "a-file").write_text("mine")
            return contextlib.nullcontext(tmp_path / "a-file"), "a file is there"
        (tmp_path / "a-folder").mkdir()
        return contextlib.nullcontext(tmp_path / "a-folder"), "a folder is there"
    if fault == "a pipe is there":
        os.mkfifo(tmp_path / "pipe")
        return contextlib.nullcontext(tmp_path / "pipe"), "a file is there" if want_folder else "not a regular file"
    raise ValueError(fault)


FAULTS = [
    "parent is a file",
    "name too long for the lock",
    "name too long",
    "a folder the OS refuses",
    "immutable parent",
    "wrong kind already there",
    "a pipe is there",
]
WRITERS = ["run", "study", "sweep", "report", "export"]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_every_output_path_fault_in_one_line_before_any_work(
    tmp_path, writer, fault, tiny_run, data_env, no_training, capsys
):
    context, words = _fault(tmp_path, fault, want_folder=writer in ("run", "study", "sweep"))
    with context as out:
        if fault == "immutable parent":
            out = tmp_path / "locked" / "out"
        args = {
            "run": ["run", "provided", *FAST, "--out", str(out)],
            "study": ["study", "--presets", "provided", *FAST, "--out", str(out)],
            "sweep": ["sweep", "dropout-sweep", *FAST, "--out", str(out)],
            "report": ["report", str(tiny_run), "--out", str(out)],
            "export": ["export", str(tiny_run), "--onnx", str(out)],
        }[writer]
        assert main(args) == 1
        err = _one_line_error(capsys)
        assert words in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine" if fault == "parent is a file" else True


@pytest.mark.parametrize("fault", ["parent is a file", "immutable parent", "a folder the OS refuses"])
def test_the_calibration_cache_refuses_the_same_faults_with_a_warning_and_keeps_its_measurement(
    tmp_path, fault, monkeypatch
):
    measured = calibration.fixed(torch.device("cpu"))
    monkeypatch.setattr(calibration, "from_probes", lambda device: measured)
    monkeypatch.delenv(calibration.ENV_VAR, raising=False)
    context, _ = _fault(tmp_path, fault, want_folder=False)
    with context as cache:
        if fault == "immutable parent":
            cache = tmp_path / "locked" / "cache"
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert calibration.calibration(torch.device("cpu"), log=lambda _: None) == measured
    messages = [str(w.message) for w in caught if issubclass(w.category, calibration.CalibrationWarning)]
    assert len(messages) == 1 and "could not cache the calibration" in messages[0] and "\n" not in messages[0]


def test_report_out_md_writes_the_markdown_there_and_the_html_beside_it(tmp_path, tiny_run, capsys):
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "new.md")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'new.html'} and {tmp_path / 'new.md'}" in out
    assert (tmp_path / "new.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "new.md").read_text().startswith("<!-- made by mnistlab -->")


# --- export --------------------------------------------------------------------------------------------


def test_export_replaces_only_its_own_files_and_never_one_of_the_run(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = (run / RunFolder.WEIGHTS).read_bytes()
    for inside in (run / RunFolder.WEIGHTS, run / "model.onnx", run / "seed-0" / "x.onnx"):
        for overwrite in ([], ["--overwrite"]):
            assert main(["export", str(run), "--onnx", str(inside), *overwrite]) == 1
            assert "inside the run folder" in _one_line_error(capsys)
    assert (run / RunFolder.WEIGHTS).read_bytes() == weights and not (run / "model.onnx").exists()

    mine = tmp_path / "thesis.onnx"
    mine.write_bytes(b"my own model")
    assert main(["export", str(run), "--onnx", str(mine)]) == 1
    assert "not an export of mnistlab's; --overwrite replaces it" in _one_line_error(capsys)
    assert mine.read_bytes() == b"my own model"

    ours = tmp_path / "reader.onnx"
    assert main(["export", str(run), "--onnx", str(ours)]) == 0
    assert main(["export", str(run), "--onnx", str(ours)]) == 0  # its own export: replaced
    assert main(["export", str(run), "--onnx", str(mine), "--overwrite"]) == 0  # asked for
    assert mine.read_bytes()[:4] != b"my o" and ours.stat().st_size > 1000
    capsys.readouterr()


# --- sizes ---------------------------------------------------------------------------------------------

SIZES = [
    (["run", "provided", "--seeds", "1000000000"], "1,000,000,000 runs, over the limit of 10,000"),
    (["study", "--seeds", "5000"], "45,000 runs, over the limit of 10,000"),
    (["sweep", "l2-sweep", "--seeds", "1000000000"], "over the limit of 10,000"),
    (["run", "provided", "--seed", "4294967290", "--seeds", "10"], "go past 4294967295"),
]


@pytest.mark.parametrize(("args", "words"), SIZES)
def test_sizes_that_would_explode_are_refused_with_their_figures_before_anything(
    tmp_path, args, words, data_env, no_training, capsys
):
    assert main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert words in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


SWEEP_SIZES = [
    ("[[axis]]\nkey = 'model.l2'\nlog_range = [1e-6, 1]\npoints = 1000000000\n", "points = N, from 2 to 1,000"),
    (
        "[[axis]]\nkey = 'model.l2'\nlog_range = [1e-6, 1]\npoints = 1000\n"
        "[[axis]]\nkey = 'model.l1'\nlog_range = [1e-6, 1]\npoints = 1000\n",
        "1,000,000 points (1000 x 1000), over the limit of 10,000",
    ),
    (
        "[search]\nmethod = 'random'\ntrials = 1000000000\n[[axis]]\nkey = 'model.l2'\nlog_uniform = [1e-6, 1]\n",
        "trials",
    ),
    (f"[[axis]]\nkey = 'model.l2'\nvalues = {[0.1] * 5000}\n", "5,000 values, over the limit of 1,000"),
]


@pytest.mark.parametrize(("axes", "words"), SWEEP_SIZES)
def test_sweep_sizes_that_would_explode_are_refused_before_anything(tmp_path, axes, words, no_training, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f"base = 'provided'\n{axes}")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 1
    assert words in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# --- numbers -------------------------------------------------------------------------------------------

FLOAT_KEYS = [
    f"{section}.{key}"
    for section, rules in config.SCHEMA.items()
    for key in rules
    if section
    and key not in ("hidden", "activation", "crop", "epochs", "batch_size", "schedule", "monitor")
    and key not in ("patience", "warmup_epochs", "restore_best_weights")
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "1e300"])
def test_no_float_key_takes_a_non_finite_or_absurd_number(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"{key} must be"):
        config.load("best", [f"{key}={value}"])
    section, _, name = key.partition(".")
    path = tmp_path / "c.toml"
    path.write_text(f'extends = "best"\n[{section}]\n{name} = {value}\n')
    with pytest.raises(ConfigError, match=f"{key} must be"):
        config.load(str(path))


def test_warmup_is_bounded_but_may_outlast_a_smoke_run():
    with pytest.raises(ConfigError, match="train.warmup_epochs must be an integer from 0 to 100,000"):
        config.load("best", ["train.warmup_epochs=1000000000000"])
    assert config.load("best", ["train.epochs=1"]).hyperparameters.warmup_epochs == 2


def test_a_run_whose_loss_stops_being_a_number_writes_nothing_and_says_so(tmp_path, mnist_dir, monkeypatch):
    """A learning rate no config takes (the schema stops at 10), set behind its back: the loss becomes NaN."""
    from dataclasses import replace

    from mnistlab.studies import plan

    original = plan.seed_runs

    def diverging(experiment, folder, seeds=1, label=""):
        hyper = replace(experiment.hyperparameters, learning_rate=float("inf"))
        return original(replace(experiment, hyperparameters=hyper), folder, seeds, label)

    monkeypatch.setattr(api, "seed_runs", diverging)
    with pytest.raises(MnistlabError, match=r"loss stopped being a finite number at epoch 1 of phase 1.*learning_rate"):
        api.run("provided", epochs=2, set=["train.batch_size=1000"], compile=False, data_dir=mnist_dir,
                out=tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_metrics_file_holding_nan_is_refused_not_read(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = (run / RunFolder.METRICS).read_text()
    (run / RunFolder.METRICS).write_text(metrics.replace('"loss": ', '"loss": NaN, "x": ', 1))
    with pytest.raises(MnistlabError, match="NaN is not a JSON number"):
        SeedRun.load(run)


# --- nesting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [17, 200, 100_000])
def test_deeply_nested_values_are_one_line_errors_everywhere_they_are_read(tmp_path, depth, tiny_run, capsys):
    nested = "[" * depth + "1" + "]" * depth
    with pytest.raises(ConfigError, match="nested more than 16 deep"):
        config.load("final", [f"model.hidden={nested}"])
    path = tmp_path / "c.toml"
    path.write_text(f'extends = "final"\n[model]\nhidden = {nested}\n')
    with pytest.raises(ConfigError, match="nested more than 16 deep"):
        config.load(str(path))
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(f'base = "final"\n[[axis]]\nkey = "model.l2"\nvalues = [{nested}]\n')
    with pytest.raises(ConfigError):
        sweep_spec.load(str(sweep_file))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / RunFolder.METRICS).write_text('{"format": 3, "preset": ' + nested + "}")
    with pytest.raises(MnistlabError, match="nested more than 16 deep"):
        SeedRun.load(run)


# --- sweep files ---------------------------------------------------------------------------------------

WRONG_SWEEP_FIELDS = [
    ("[search]\nmethod = 'random'\ntrials = 3\nseed = -1\n", "search.seed must be an integer"),
    ("[search]\nmethod = 'random'\ntrials = 3\nseed = 'zero'\n", "search.seed must be an integer"),
    ("[search]\nmethod = 'random'\ntrials = 3\nseed = 1.5\n", "search.seed must be an integer"),
    ("[search]\nmethod = 'random'\ntrials = '3'\n", "search.trials must be an integer"),
    ("[search]\nmethod = 'random'\ntrials = true\n", "search.trials must be an integer"),
    ("[search]\nmethod = ['optuna']\ntrials = 3\n", "search.method must be one of"),
    ("[search]\nmethod = 'optuna'\ntrials = 3\nstorage = 3\n", "search.storage must be a database URL"),
]
WRONG_AXES = [
    ("keys = 'model.l2'\nvalues = [[1e-5]]\n", "keys must be a list of config keys"),
    ("keys = [1]\nvalues = [[1]]\n", "keys must be config keys"),
    ("key = 3\nvalues = [1]\n", "keys must be config keys"),
    ("key = 'model.l2'\nlog_range = [1e-6, 1]\npoints = true\n", "points = N"),
    ("key = 'model.l2'\nlog_range = [1e-6, 1]\npoints = 2.5\n", "points = N"),
    ("key = 'model.l2'\nrange = [0, 'a']\npoints = 3\n", "range must be [lo, hi]"),
    ("key = 'model.l2'\nrange = [0, inf]\npoints = 3\n", "range must be [lo, hi]"),
    ("key = 'model.l2'\nvalues = 'a lot'\n", "values must be a list"),
    ("key = 'model.l2'\nvalues = [nan]\n", "model.l2 must be"),
    ("key = 'model.colour'\nvalues = [1]\n", "unknown key 'model.colour'"),
]
WRONG_LAB = [
    ("lab = { 'model.colour' = [1] }\n", "unknown key 'model.colour'"),
    ("lab = { 'model.l2' = ['a'] }\n", "model.l2 must be"),
    ("lab = { 'model.l2' = 1e-5 }\n", "lab must be a table of key = [values]"),
]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        *((f"{search}[[axis]]\nkey = 'model.l2'\nlog_uniform = [1e-6, 1]\n", w) for search, w in WRONG_SWEEP_FIELDS),
        *((f"[[axis]]\n{axis}", w) for axis, w in WRONG_AXES),
        *((f"{lab}[[axis]]\nkey = 'model.l2'\nvalues = [1e-5]\n", w) for lab, w in WRONG_LAB),
    ],
)
def test_sweep_fields_of_the_wrong_type_are_one_line_config_errors(tmp_path, text, words):
    path = tmp_path / "s.toml"
    path.write_text(f"base = 'provided'\n{text}")
    with pytest.raises(ConfigError) as caught:
        sweep_spec.load(str(path))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_points_of_values_that_print_alike_get_folders_of_their_own():
    values = [1.00001e-5, 1.00002e-5, 1e-5, 0.00001, 0.3, 0.1 + 0.2]
    axis = sweep_spec.Axis(("model.l2",), tuple((v,) for v in values))
    spec = sweep_spec.Sweep("s", "", "", "provided", (), (axis,), sweep_spec.Search(), {})
    labels = [p.label for p in spec.points()]
    assert labels == ["l2=1.00001e-05", "l2=1.00002e-05", "l2=1e-05", "l2=0.3", "l2=0.30000000000000004"]
    assert len(set(labels)) == len(labels)
    long = sweep_spec.Point((("model.hidden", list(range(1, 200))),))
    assert len(long.label) <= sweep_spec.MAX_LABEL and long.label != sweep_spec.Point((("model.hidden", [1]),)).label


def test_a_value_written_two_ways_trains_once_and_counts_once(tmp_path, data_env, capsys):
    path = tmp_path / "s.toml"
    path.write_text("base = 'provided'\n[[axis]]\nkey = 'model.l2'\nvalues = [1e-5, 0.00001, 1e-4]\n")
    assert main(["sweep", str(path), *FAST, "--out", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3 and [r.split(",")[0] for r in rows[1:]] == ["l2=1e-05", "l2=0.0001"]
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [p["folder"] for p in record["points"]] == ["l2=1e-05", "l2=0.0001"]


def test_a_report_over_a_sweep_with_a_point_gone_says_which(tmp_path, data_env, capsys):
    path = tmp_path / "s.toml"
    path.write_text("base = 'provided'\n[[axis]]\nkey = 'model.l2'\nvalues = [0, 1e-5, 1e-4]\n")
    assert main(["sweep", str(path), *FAST, "--out", str(tmp_path / "out")]) == 0
    shutil.rmtree(tmp_path / "out" / "l2=1e-05")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 of 3 points have no finished run (l2=1e-05)" in err
    assert "1 of the sweep's 3 points have no finished run" in (tmp_path / "r.md").read_text()


# --- configs -------------------------------------------------------------------------------------------


def test_a_relative_extends_is_found_beside_the_file_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "base.toml").write_text('extends = "final"\n[train]\nepochs = 7\n')
    (tmp_path / "lab" / "child.toml").write_text('extends = "base.toml"\n[model]\nl2 = 1e-4\n')
    (tmp_path / "base.toml").write_text('extends = "final"\n[train]\nepochs = 99\n')  # a decoy where we run
    monkeypatch.chdir(tmp_path)
    child = config.load("lab/child.toml")
    assert child.hyperparameters.epochs == 7 and child.hyperparameters.l2 == 1e-4
    (tmp_path / "lab" / "base.toml").unlink()
    with pytest.raises(ConfigError, match="lab/base.toml"):
        config.load("lab/child.toml")


# --- special files -------------------------------------------------------------------------------------


def _special(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "special")
        return tmp_path / "special"
    if kind == "device":
        return Path("/dev/zero")
    if kind == "folder":
        (tmp_path / "special").mkdir()
        return tmp_path / "special"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
@pytest.mark.parametrize("reader", ["predict", "predict --onnx", "run config", "sweep file"])
def test_special_files_are_refused_by_every_reader_not_waited_on(tmp_path, kind, reader, tiny_run, mnist_dir):
    special = _special(tmp_path, kind)
    name = tmp_path / "x.toml"
    if reader in ("run config", "sweep file"):
        if kind == "device":
            pytest.skip("a device has no .toml name")
        name = special.rename(tmp_path / "x.toml") if kind != "device" else special
        special = name
    args = {
        "predict": ["predict", str(tiny_run), str(special)],
        "predict --onnx": ["predict", "--onnx", str(special), str(special)],
        "run config": ["run", str(special), "--out", str(tmp_path / "out"), *FAST],
        "sweep file": ["sweep", str(special), "--out", str(tmp_path / "out"), *FAST],
    }[reader]
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(special) in done.stderr


@pytest.mark.parametrize("file", [RunFolder.METRICS, RunFolder.HISTORY, RunFolder.WEIGHTS, RunFolder.CONFIG])
def test_a_pipe_in_a_run_folder_is_refused_not_waited_on(tmp_path, tiny_run, file):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / file).unlink()
    os.mkfifo(run / file)
    env = {**os.environ}
    for args in (["report", str(run), "--out", str(tmp_path / "r.html")], ["predict", str(run), str(run / file)]):
        done = subprocess.run(
            [sys.executable, "-m", "mnistlab.cli", *args], capture_output=True, text=True, timeout=120, env=env
        )
        reads_it = args[0] == "predict" or file != RunFolder.WEIGHTS  # a report needs no weights
        assert done.returncode == (1 if reads_it else 0) and "Traceback" not in done.stderr, done.stderr


# --- weights -------------------------------------------------------------------------------------------


def _broken_weights(run: Path, how: str) -> str:
    """Change the run's weights file `how`; returns words its refusal must hold."""
    path = run / RunFolder.WEIGHTS
    tensors = load_file(path)
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metadata = header["__metadata__"]
    if how in ("int32", "float16", "float64", "bfloat16"):
        tensors = {k: v.to(getattr(torch, how)) for k, v in tensors.items()}
        words = f"is {how}, not float32"
    elif how == "transposed":
        tensors["dense_0.kernel"] = tensors["dense_0.kernel"].T.contiguous()
        words = "dense_0.kernel has shape (18, 784)"
    elif how == "nan":
        tensors["dense_1.bias"][0] = float("nan")
        words = "not finite"
    elif how == "inf":
        tensors["dense_0.kernel"][3, 3] = float("inf")
        words = "not finite"
    elif how == "extra tensor":
        tensors["dense_9.kernel"] = torch.zeros(2, 2)
        words = "tensors"
    elif how == "missing tensor":
        del tensors["dense_1.bias"]
        words = "tensors"
    elif how in ("gelu", "hidden 0", "crop too large"):
        arch = json.loads(metadata["architecture"])
        arch.update({"gelu": {"activation": "gelu"}, "hidden 0": {"hidden": [0]}, "crop too large": {"crop": 20}}[how])
        metadata["architecture"] = json.dumps(arch)
        words = {"gelu": "activation 'gelu'", "hidden 0": "no model of", "crop too large": "crop 20"}[how]
    else:
        raise ValueError(how)
    save_file(tensors, path, metadata=metadata)
    return words


WEIGHT_FAULTS = [
    "int32",
    "float16",
    "float64",
    "bfloat16",
    "transposed",
    "nan",
    "inf",
    "extra tensor",
    "missing tensor",
    "gelu",
    "hidden 0",
    "crop too large",
]


@pytest.mark.parametrize("how", WEIGHT_FAULTS)
def test_weights_that_load_but_are_not_the_model_are_refused_by_predict_export_and_serve(
    tmp_path, tiny_run, how, capsys
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    words = _broken_weights(run, how)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28), 0).save(image)
    for args in (
        ["predict", str(run), str(image)],
        ["export", str(run), "--onnx", str(tmp_path / "m.onnx")],
        ["serve", str(run), "--port", "0"],
    ):
        assert main(args) == 1, args
        err = _one_line_error(capsys)
        assert words in err and str(run) in err, err
    assert not (tmp_path / "m.onnx").exists()


# --- seed folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed-x", "seed-07", "seed--1", "seed-1e3", "seed-", "seed-99999999999"])
def test_seed_folders_named_unlike_seeds_are_not_seeds(tmp_path, tiny_run, name, capsys):
    parent = tmp_path / "runs"
    shutil.copytree(tiny_run, parent / "seed-0")
    shutil.copytree(tiny_run, parent / name)
    assert [f.path.name for f in RunFolder(parent).seeds()] == ["seed-0"]
    assert main(["report", str(parent), "--out", str(tmp_path / "r.html")]) == 0
    assert main(["predict", str(parent), str(parent / "seed-0" / RunFolder.MISCLASSIFIED)]) == 0
    assert api.load_run(parent).seeds == 1


# --- reports -------------------------------------------------------------------------------------------


def test_a_report_refuses_to_mix_data_sets(tmp_path, tiny_run, capsys):
    other = tmp_path / "fashion"
    shutil.copytree(tiny_run, other)
    metrics = json.loads((other / RunFolder.METRICS).read_text())
    (other / RunFolder.METRICS).write_text(json.dumps({**metrics, "dataset": "fashion-mnist"}))
    assert main(["report", str(tiny_run), str(other), "--out", str(tmp_path / "r.html")]) == 1
    err = _one_line_error(capsys)
    assert "2 data sets (" in err and "mnist: provided" in err and "fashion-mnist: provided" in err
    assert "report each data set apart" in err
    assert not (tmp_path / "r.html").exists()


# --- the docs' guarantees, each tested ------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1]
GUARANTEES = {  # the start of each sentence of docs/safety.md's lists -> the tests that check it
    "mnistlab writes only into a new path": ["test_safety::test_a_users_folder_is_never_replaced"],
    "A folder of yours, or a file, given as `--out`": [
        "test_safety::test_a_users_folder_is_never_replaced",
        "test_safety::test_a_file_given_as_out_is_never_replaced",
    ],
    "A run of mnistlab's made from another config": [
        "test_safety::test_a_run_of_another_config_is_replaced_only_when_asked",
        "test_safety::test_a_study_refuses_finished_runs_of_another_config",
    ],
    "`report` and `export` replace only files mnistlab wrote": [
        "test_safety::test_report_never_replaces_a_file_it_did_not_write",
        "test_guards::test_export_replaces_only_its_own_files_and_never_one_of_the_run",
    ],
    "While a command writes a folder it holds a lock": ["test_safety::test_two_processes_on_one_study_folder"],
    "Every output path is checked before any work starts": [
        "test_guards::test_every_writer_refuses_every_output_path_fault_in_one_line_before_any_work",
        "test_guards::test_the_calibration_cache_refuses_the_same_faults_with_a_warning_and_keeps_its_measurement",
    ],
    "A full disk, Ctrl-C or SIGTERM leaves the finished runs": [
        "test_safety::test_a_full_disk_leaves_no_partial_run",
        "test_safety::test_sigterm_during_a_study_keeps_finished_runs_and_leaves_no_partial_one",
        "test_runs::test_an_interrupted_run_leaves_nothing",
    ],
    "Points of a sweep never share a folder": [
        "test_guards::test_points_of_values_that_print_alike_get_folders_of_their_own",
        "test_guards::test_a_value_written_two_ways_trains_once_and_counts_once",
    ],
    "A run whose loss stops being a finite number is not written": [
        "test_guards::test_a_run_whose_loss_stops_being_a_number_writes_nothing_and_says_so",
        "test_guards::test_a_metrics_file_holding_nan_is_refused_not_read",
    ],
    "Bad input stops with one line": [
        "test_bad_input::test_every_malformed_config_gets_a_one_line_config_error",
        "test_bad_input::test_every_malformed_idx_file_gets_a_one_line_data_error",
        "test_bad_input::test_every_malformed_run_folder_file_is_named_in_one_line",
        "test_cli::test_bad_data_is_one_line_and_nonzero",
        "test_serving::test_predict_errors_are_one_line",
    ],
    "Numbers in configs and sweeps must be finite and in range": [
        "test_guards::test_no_float_key_takes_a_non_finite_or_absurd_number",
        "test_guards::test_deeply_nested_values_are_one_line_errors_everywhere_they_are_read",
        "test_guards::test_sweep_fields_of_the_wrong_type_are_one_line_config_errors",
    ],
    "Sizes are checked before anything is built": [
        "test_guards::test_sizes_that_would_explode_are_refused_with_their_figures_before_anything",
        "test_guards::test_sweep_sizes_that_would_explode_are_refused_before_anything",
        "test_safety::test_a_model_too_large_for_memory_is_refused_before_training",
    ],
    "Only regular files are read": [
        "test_guards::test_special_files_are_refused_by_every_reader_not_waited_on",
        "test_guards::test_a_pipe_in_a_run_folder_is_refused_not_waited_on",
    ],
    "Weights are read as safetensors, never a pickle": [
        "test_guards::test_weights_that_load_but_are_not_the_model_are_refused_by_predict_export_and_serve"
    ],
    "Runs of different data sets are never set side by side": ["test_guards::test_a_report_refuses_to_mix_data_sets"],
}


def _guarantees() -> list[str]:
    page = (DOCS / "docs" / "safety.md").read_text()
    return [line[2:] for line in page.splitlines() if line.startswith("- ")]


def test_every_guarantee_of_the_docs_is_tested():
    import importlib

    sentences = _guarantees()
    assert len(sentences) == len(GUARANTEES)
    for sentence in sentences:
        start = next((s for s in GUARANTEES if sentence.startswith(s)), None)
        assert start is not None, f"no test named for: {sentence}"
        for test in GUARANTEES[start]:
            module, name = test.split("::")
            assert callable(getattr(importlib.import_module(f"tests.{module}"), name, None)), test


def test_the_readmes_safety_paragraph_says_only_what_the_docs_guarantee():
    readme = (DOCS / "README.md").read_text()
    paragraph = readme.split("## Your files are safe\n", 1)[1].split("\n## ", 1)[0]
    sentences = [s.strip() for s in paragraph.replace("\n", " ").split(". ") if s.strip()]
    promises = [s for s in sentences if not s.startswith("[Your files are safe]")]
    listed = " ".join(_guarantees())
    for promise in promises:
        assert promise.rstrip(".") in listed, promise
