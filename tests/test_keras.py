"""The lab's own Keras beside mnistlab's engine: the presets built as the lab would write them in Keras 3,
a run folder that every reader takes, refusals for what only mnistlab does, and a test of equivalence
that tells agreement from difference and from too few seeds."""

import json
import os

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.evaluation.statistics import equivalence
from mnistlab.spec import config

os.environ.setdefault("KERAS_BACKEND", "torch")  # as the engine does: no TensorFlow needed
keras = pytest.importorskip("keras", reason="the [keras] extra is not installed")
TINY = ["--epochs", "1", "--set", "train.batch_size=1000", "--quiet"]


def _model(preset: str):
    from mnistlab.train import keras_engine

    experiment = config.load(preset)
    return keras_engine._model(keras, experiment.architecture(784), experiment.hyperparameters)


def test_the_final_model_is_figure_13_layer_by_layer():
    model = _model("final")
    layers = [(type(layer).__name__, layer.count_params()) for layer in model.layers]
    dense = [count for kind, count in layers if kind == "Dense"]
    assert dense == [100_480, 16_512, 8_256, 4_160, 2_080, 330] and sum(dense) == 131_818  # the lab's figure 13
    assert [kind for kind, _ in layers] == ["Dropout", "Dense"] * 6  # dropout 0.1 before each Dense layer
    assert os.environ["KERAS_BACKEND"] == keras.backend.backend() == "torch"
    optimizer = model.optimizer
    assert optimizer.epsilon == 1e-7 and float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert model.layers[1].kernel_initializer.__class__.__name__ == "GlorotUniform"


def test_the_regulariser_enters_the_loss_as_keras_reports_it():
    model = _model("l2")
    x = np.zeros((8, 784), np.float32)
    y = np.zeros(8, np.int64)
    loss, _ = model.evaluate(x, y, verbose=0)
    data = float(keras.losses.SparseCategoricalCrossentropy()(y, model.predict(x, verbose=0)))
    penalty = 1e-5 * sum(
        float((np.asarray(layer.kernel) ** 2).sum()) for layer in model.layers if hasattr(layer, "kernel")
    )
    assert loss == pytest.approx(data + penalty, rel=1e-5) and penalty > 0


def test_a_one_epoch_keras_run_writes_a_folder_that_report_predict_and_export_read(tmp_path, data_env, capsys):
    out = tmp_path / "keras"
    assert main(["run", "provided", *TINY, "--engine", "keras", "--out", str(out)]) == 0
    environment = json.loads((out / "environment.json").read_text())
    assert environment["engine"].startswith("keras 3.") and "torch backend" in environment["engine"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == {"phase1": 1, "phase2": 1} and metrics["test"]["accuracy"] > 0.5
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert main(["predict", str(out), str(out / "misclassified.png"), "--json"]) == 0
    assert main(["export", str(out), "--onnx", str(tmp_path / "k.onnx")]) == 0
    # The weights read back are the Keras model's: mnistlab's forward pass gives Keras' test accuracy.
    from mnistlab.studies.folder import SeedRun

    run = SeedRun.load(out)
    assert run.metrics.scores["test"].accuracy == pytest.approx(1 - metrics["test"]["misclassified"] / 10_000)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "best"], "Keras has no distortions of training images"),
        (["run", "final", "--set", "train.ema=0.9"], "a moving average of the weights"),
        (["run", "provided", "--set", "model.crop=4"], "a crop of the image border"),
        (["run", "provided", "--precision", "bf16"], "bf16 matmuls"),
        (["run", "provided", "--workers", "2"], "Keras has no lockstep stacks"),
    ],
)
def test_what_only_mnistlab_does_is_refused_in_one_line(tmp_path, args, words, capsys):
    assert main([*args, "--engine", "keras", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnistlab: error: ") and words in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_equivalence_on_samples_of_known_difference():
    rng = np.random.default_rng(0)
    same = [0.9830 + e for e in rng.normal(0, 0.0005, 8)], [0.9832 + e for e in rng.normal(0, 0.0005, 8)]
    assert equivalence(*same, margin=0.002).verdict == "equivalent"
    apart = [0.9830 + e for e in rng.normal(0, 0.0005, 8)], [0.9790 + e for e in rng.normal(0, 0.0005, 8)]
    tested = equivalence(*apart, margin=0.002)
    assert tested.verdict == "different" and tested.low > 0.002
    noisy = [0.98 + e for e in rng.normal(0, 0.01, 3)], [0.98 + e for e in rng.normal(0, 0.01, 3)]
    assert equivalence(*noisy, margin=0.002).verdict == "undecided"
    assert equivalence([0.98, 0.981], [0.98, 0.982, 0.983], margin=0.002).verdict == "too few seeds"
    # Calibrated: two samples of one distribution are called equivalent at most 5% of the time when the
    # true difference sits at the margin.
    calls = sum(
        equivalence(list(0.98 + rng.normal(0, 0.001, 5)), list(0.978 + rng.normal(0, 0.001, 5)), 0.002).verdict
        == "equivalent"
        for _ in range(400)
    )
    assert calls / 400 <= 0.07
