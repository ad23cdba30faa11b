"""Beyond the lab (the `best` preset): cropping, label smoothing, schedules, the weights' moving average,
distortions, the preset itself and its report section."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnistlab import api
from mnistlab.errors import ConfigError
from mnistlab.nn import mlp as model
from mnistlab.nn.mlp import Regularization
from mnistlab.nn.summary import summary
from mnistlab.spec import Architecture, Augmentation, Hyperparameters, StepWork, config
from mnistlab.train.augment import _uniform, distort, strengths
from mnistlab.train.engine import Engine
from mnistlab.train.fit import Lockstep, fit
from mnistlab.train.progress import ProgressBars
from mnistlab.train.protocol import streams
from mnistlab.train.schedule import Schedule

LAB_BUDGET = 131_818
CPU = torch.device("cpu")


def test_best_fits_the_lab_budget_with_dense_layers_only():
    best = config.load("best")
    arch = best.architecture(784)
    assert arch.num_params <= LAB_BUDGET
    assert arch.shapes[0] == ((28 - 2 * best.crop) ** 2, best.hidden[0])
    table = summary(arch, best.hyperparameters)
    assert f"Total params: {arch.num_params:,}" in table and "cropping (Crop, 4 px each side)" in table
    assert best.hyperparameters.augmentation is not None and best.batch_size is not None


def test_lab_presets_have_none_of_the_new_training():
    """The lab's presets keep their numbers bit for bit: none of them turns any of this on."""
    for name in ("provided", "powerful", "l2", "l2-strong", "l1", "dropout", "early-stopping", "final"):
        spec = config.load(name)
        h = spec.hyperparameters
        assert (spec.crop, h.label_smoothing, h.schedule, h.warmup_epochs, h.ema, h.augmentation) == (
            0, 0.0, "constant", 0, 0.0, None,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.crop=14", "model.crop = 14 leaves nothing"),
        ("train.schedule=linear", "train.schedule must be constant or cosine"),
        ("train.ema=1", "train.ema must be a rate in [0, 1)"),
        ("augmentation.rotation=200", "augmentation.rotation must be degrees from 0 to 180"),
        ("train.batch_size=full", "[augmentation] needs mini-batches"),
    ],
)
def test_bad_values_of_the_new_keys_are_one_line(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load("best", [override]).architecture(784)


def _autograd(params, arch, x, y, smoothing):
    losses, grads = [], []
    for member in range(params.shape[0]):
        p = params[member : member + 1].clone().requires_grad_(True)
        h = x[member].view(-1, 28, 28)[:, arch.crop : 28 - arch.crop, arch.crop : 28 - arch.crop].flatten(1)
        for index, (kernel, bias) in enumerate(model.layers(p, arch)):
            h = h @ kernel[0] + bias[0]
            h = torch.relu(h) if index < len(arch.hidden) else h
        loss = F.cross_entropy(h, y[member], label_smoothing=smoothing[member])
        loss.backward()
        losses.append(loss.detach())
        grads.append(p.grad[0])
    return torch.stack(losses), torch.stack(grads)


def test_hand_written_backward_with_crop_and_label_smoothing_matches_autograd():
    arch = Architecture(784, (16, 8), crop=5)
    smoothing = [0.0, 0.1, 0.3]
    members = [Hyperparameters(seed=0, learning_rate=1e-3, epochs=1, label_smoothing=s) for s in smoothing]
    reg = Regularization.of(arch, members, CPU)
    torch.manual_seed(0)
    params = torch.randn(3, arch.num_params) * 0.2
    x, y = torch.rand(3, 12, 784), torch.randint(0, 10, (3, 12))
    weights = model.layers(params, arch)
    nll, _, grads = model.batch_grads(
        weights, arch, reg, x, y, torch.tensor([1, 2, 3]), torch.tensor(0), reg.dropout_members(), smoothing=True
    )
    grad = model.flat(model.mean_grads(weights, reg, grads, 12, StepWork(l1=False, l2=False)))
    ref_loss, ref_grad = _autograd(params, arch, x, y, smoothing)
    torch.testing.assert_close(nll / 12, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    # Evaluation sees the same cropped pixels as training.
    centre = x[0].view(12, 28, 28)[:, 5:23, 5:23].flatten(1)
    (kernel, bias), *rest = model.layers(params[:1], arch)
    h = torch.relu(centre @ kernel[0] + bias[0])
    for index, (kernel, bias) in enumerate(rest):
        h = h @ kernel[0] + bias[0]
        h = torch.relu(h) if index < len(rest) - 1 else h
    torch.testing.assert_close(model.logits(params[:1], arch, x[0])[0], h)


def test_distortions_are_grid_sample_of_their_affine_map():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 784)
    augmentations = [Augmentation(rotation=20, scale=0.2, shear=0.3, translation=3), Augmentation(translation=1)]
    strength, keys, step = strengths(augmentations, CPU), torch.tensor([7, 8]), torch.tensor(4)
    out = distort(x, strength, keys, step, 28, 0, False)
    u = _uniform(keys, step, (5, 5))
    for m in range(2):
        angle = strength[m, 0] * u[m, :, 0]
        zoom = 1 + strength[m, 1] * u[m, :, 1]
        skew = strength[m, 2] * u[m, :, 2]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        shift = strength[m, 3] * u[m, :, 3:5] * 2 / 28
        theta = torch.stack(
            [
                torch.stack([cos, cos * skew - sin, shift[:, 0]], -1),
                torch.stack([sin, sin * skew + cos, shift[:, 1]], -1),
            ],
            -2,
        )
        grid = F.affine_grid(theta, [5, 1, 28, 28], align_corners=False)
        expected = F.grid_sample(x[m].view(5, 1, 28, 28), grid, align_corners=False).view(5, 784)
        torch.testing.assert_close(out[m], expected, rtol=1e-4, atol=1e-4)
    # No strength, no change; a crop is the centre of the same distortion.
    none = strengths([None, None], CPU)
    assert torch.equal(distort(x, none, keys, step, 28, 0, True), x)
    cropped = distort(x, strength, keys, step, 28, 4, False).view(2, 5, 20, 20)
    torch.testing.assert_close(cropped, out.view(2, 5, 28, 28)[:, :, 4:24, 4:24])


def test_elastic_fields_are_smooth_bounded_and_each_members_own():
    image = torch.zeros(1, 1, 784)
    image[0, 0, 14 * 28 + 14] = 1.0  # one bright pixel: where it lands shows the displacement there
    amplitude = 2.0
    strength = strengths([Augmentation(elastic=amplitude)], CPU)
    moved = []
    for step in range(20):
        out = distort(image, strength, torch.tensor([3]), torch.tensor(step), 28, 0, True).view(28, 28)
        assert out.sum() > 0.5  # not lost off the image
        ys, xs = torch.nonzero(out > 0, as_tuple=True)
        assert (ys - 14).abs().max() <= amplitude + 1 and (xs - 14).abs().max() <= amplitude + 1
        moved.append(out)
    assert len({tuple(m.flatten().tolist()) for m in moved}) > 15  # a fresh field at every step
    x = torch.rand(2, 3, 784)
    both = strengths([Augmentation(elastic=2.0)] * 2, CPU)
    pair = distort(x, both, torch.tensor([5, 6]), torch.tensor(1), 28, 0, True)
    alone = distort(x[1:], both[1:], torch.tensor([6]), torch.tensor(1), 28, 0, True)
    assert torch.equal(pair[1:], alone)  # a member's distortions do not depend on its stack


def test_compiled_distortions_equal_eager():
    x = torch.rand(2, 16, 784)
    strength = strengths([Augmentation(rotation=10, scale=0.1, shear=0.1, translation=2, elastic=2), None], CPU)
    args = (x, strength, torch.tensor([1, 2]), torch.tensor(9), 28, 4, True)
    compiled = torch.compile(distort, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(*args), distort(*args), rtol=1e-5, atol=1e-5)


def test_cosine_schedule_warms_up_then_falls_to_zero():
    members = [
        Hyperparameters(seed=0, learning_rate=1.0, epochs=4, schedule="cosine", warmup_epochs=1),
        Hyperparameters(seed=0, learning_rate=0.5, epochs=2),
    ]
    schedule = Schedule(members, steps_per_epoch=10)
    rates = torch.cat([schedule.epoch_rates(torch.tensor([1.0, 0.5])) for _ in range(4)]).numpy()
    assert rates[0, 0] == pytest.approx(0.1) and rates[9, 0] == pytest.approx(1.0)  # linear warm-up
    expected = 0.5 * (1 + np.cos(np.pi * (np.arange(10, 40) - 10) / 30))
    np.testing.assert_allclose(rates[10:, 0], expected, rtol=1e-6)
    assert rates[-1, 0] < 0.01 and np.all(np.diff(rates[10:, 0]) <= 0)
    assert np.all(rates[:, 1] == 0.5)  # a constant member keeps its rate


def test_a_schedule_drives_full_batch_steps_too():
    x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
    member = Hyperparameters(seed=0, learning_rate=0.1, epochs=2, schedule="cosine")
    stack = Lockstep(Architecture(784, (8,)), [member], [streams(member, 1)], (x, y), None, Engine(compile=False))
    rates = []
    for epoch in (1, 2):
        with ProgressBars.OFF.epoch(epoch, 2, 1) as bar:
            stack.train_epoch(bar)
        rates.append(stack.state.learning_rate.item())
    assert rates == [pytest.approx(0.1), pytest.approx(0.05)]  # cosine at 0 and halfway


def test_moving_average_is_what_is_evaluated_and_kept(mnist):
    train, validation = mnist.split("train"), mnist.split("validation")
    train, validation = (train[0][:1024], train[1][:1024]), (validation[0][:512], validation[1][:512])
    arch = Architecture(784, (16,), crop=4)
    plain = Hyperparameters(seed=1, learning_rate=1e-2, epochs=2)
    averaged = Hyperparameters(seed=1, learning_rate=1e-2, epochs=2, ema=0.9)
    engine = Engine(compile=False)
    members = [plain, averaged]
    fits = fit(arch, members, [streams(m, 1) for m in members], train, validation, 64, engine)
    (alone,) = fit(arch, [plain], [streams(plain, 1)], train, validation, 64, engine)
    torch.testing.assert_close(fits[0].params, alone.params)  # a member without an average keeps its weights
    assert not torch.allclose(fits[1].params, fits[0].params)  # same weights, but the average is kept
    # The kept average is the evaluated one: its accuracy is what the history says.
    _, accuracy = model.evaluate(
        fits[1].params.view(1, -1), arch, Regularization.of(arch, [averaged], CPU), *validation
    )
    assert accuracy.item() == pytest.approx(fits[1].history[-1].eval_accuracy)


def test_a_best_like_stack_trains_like_its_members_alone(mnist):
    train, validation = mnist.split("train"), mnist.split("validation")
    train, validation = (train[0][:2048], train[1][:2048]), (validation[0][:512], validation[1][:512])
    arch = Architecture(784, (32,), crop=4)
    distortion = Augmentation(rotation=10, scale=0.1, shear=0.1, translation=2, elastic=2)
    members = [
        Hyperparameters(seed=s, learning_rate=3e-3, epochs=2, label_smoothing=0.1 * s, schedule="cosine",
                        warmup_epochs=1, ema=0.99, augmentation=distortion if s else None)
        for s in range(3)
    ]  # fmt: skip
    engine = Engine(compile=False)
    together = fit(arch, members, [streams(m, 1) for m in members], train, validation, 128, engine)
    for member, fitted in zip(members, together, strict=True):
        (alone,) = fit(arch, [member], [streams(member, 1)], train, validation, 128, engine)
        torch.testing.assert_close(alone.params, fitted.params, rtol=1e-4, atol=1e-5)
    assert together[1].history[-1].eval_accuracy > 0.5  # chance is 0.1


def test_beyond_the_lab_section_sets_best_beside_final(tmp_path, data_env):
    fast = {"epochs": 1, "seeds": 2, "compile": False, "set": ["train.batch_size=1000"]}
    api.run("final", out=tmp_path / "final", **fast)
    api.run("best", out=tmp_path / "best", **fast)
    html, md = api.report([tmp_path / "final", tmp_path / "best"], tmp_path / "report.html")
    text = md.read_text()
    section = text[text.index("## Beyond the lab") :]
    assert "128,298" in section and "131,818" in section
    assert "rotation ±12°" in section and "central 20x20 pixels" in section
    rows = [line for line in section.splitlines() if line.startswith("| final") or line.startswith("| best")]
    assert len(rows) == 2 and all("±" in row for row in rows)  # 95% intervals over two seeds
    assert "wrong in every seed of final" in section


def test_run_best_from_the_command_line_reads_digits_cropped_in_torch_and_onnx(tmp_path, data_env, mnist):
    out = tmp_path / "best"
    command = [sys.executable, "-m", "mnistlab.cli", "run", "best", "--epochs", "1", "--no-compile", "--quiet",
               "--set", "train.batch_size=2000", "--out", str(out)]  # fmt: skip
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    (run,) = api.load_run(out).seed_runs
    params, arch = run.folder.read_weights()
    assert arch.crop == 4 and arch.num_params == params.numel() == 128_298
    assert math.isclose(
        run.metrics.scores["test"].accuracy, 1 - len(run.analysis().misclassified) / 10_000, abs_tol=1e-6
    )
    # The digit readers crop as training did: torch and the ONNX export agree on real test digits.
    from mnistlab.serving.onnx import OnnxPredictor, export
    from mnistlab.serving.predictor import Predictor

    export(out, tmp_path / "best.onnx")
    digits = mnist.test_images[:200].numpy().reshape(200, 28, 28)
    in_torch = Predictor(out).probabilities(digits)
    in_onnx = OnnxPredictor(tmp_path / "best.onnx").probabilities(digits)
    assert np.abs(in_torch - in_onnx).max() < 1e-5
    assert (in_torch.argmax(1) == mnist.test_labels[:200].numpy()).mean() > 0.7
