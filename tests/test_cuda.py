"""The CUDA path: the same step, distortions and runs as on the CPU. Skipped where PyTorch sees no GPU
(CI never has one); `benchmarks/gpu.sh` runs these on a machine that does."""

import subprocess
import sys

import pytest
import torch

from mnistlab.nn import mlp as model
from mnistlab.nn.mlp import Regularization
from mnistlab.spec import Architecture, Augmentation, Hyperparameters
from mnistlab.train.augment import distort, strengths
from mnistlab.train.engine import Engine
from mnistlab.train.fit import fit
from mnistlab.train.protocol import streams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
BEST_LIKE = Architecture(784, (64, 32), crop=4)
AUGMENTATION = Augmentation(rotation=12, scale=0.1, shear=0.2, translation=2, elastic=2)


def _members(count: int, epochs: int = 2) -> list[Hyperparameters]:
    return [
        Hyperparameters(
            seed=seed, learning_rate=2e-3, epochs=epochs, dropout=0.1 * (seed % 2), label_smoothing=0.1,
            schedule="cosine", warmup_epochs=1, ema=0.99, augmentation=AUGMENTATION,
        )
        for seed in range(count)
    ]  # fmt: skip


def test_step_gradients_on_cuda_equal_the_cpus():
    torch.manual_seed(0)
    members = _members(3)
    params = model.init_params(BEST_LIKE, [1, 2, 3], CPU)
    x, y = torch.rand(3, 64, 784), torch.randint(0, 10, (3, 64))
    keys, step = torch.tensor([4, 5, 6]), torch.tensor(7)
    results = []
    for device in (CPU, CUDA):
        reg = Regularization.of(BEST_LIKE, members, device)
        weights = model.layers(params.to(device), BEST_LIKE)
        nll, correct, grads = model.batch_grads(
            weights, BEST_LIKE, reg, x.to(device), y.to(device), keys.to(device), step.to(device),
            reg.dropout_members(), smoothing=True,
        )  # fmt: skip
        results.append((nll.cpu(), correct.cpu(), model.flat(grads).cpu()))
    (nll_cpu, correct_cpu, grad_cpu), (nll_gpu, correct_gpu, grad_gpu) = results
    torch.testing.assert_close(nll_gpu, nll_cpu, rtol=1e-4, atol=1e-4)
    assert torch.equal(correct_gpu, correct_cpu)
    torch.testing.assert_close(grad_gpu, grad_cpu, rtol=1e-3, atol=1e-4)


def test_distortions_on_cuda_equal_the_cpus():
    x = torch.rand(2, 32, 784)
    strength, keys, step = strengths([AUGMENTATION, None], CPU), torch.tensor([8, 9]), torch.tensor(3)
    on_cpu = distort(x, strength, keys, step, 28, 4, True)
    on_gpu = distort(x.to(CUDA), strength.to(CUDA), keys.to(CUDA), step.to(CUDA), 28, 4, True).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)
    compiled = torch.compile(distort, fullgraph=True)
    torch.testing.assert_close(compiled(x.to(CUDA), strength.to(CUDA), keys.to(CUDA), step.to(CUDA), 28, 4, True).cpu(),
                               on_cpu, rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_compiled_stack_trains_on_cuda_like_its_members_alone(mnist, precision):
    """Three members in lockstep, compiled, against each alone: the same run up to the last bits."""
    train, validation = mnist.split("train"), mnist.split("validation")
    train = (train[0][:4096].to(CUDA), train[1][:4096].to(CUDA))
    validation = (validation[0][:2048].to(CUDA), validation[1][:2048].to(CUDA))
    engine = Engine.create("cuda", precision)
    members = _members(3)
    together = fit(BEST_LIKE, members, [streams(m, 1) for m in members], train, validation, 128, engine)
    for member, fitted in zip(members, together, strict=True):
        (alone,) = fit(BEST_LIKE, [member], [streams(member, 1)], train, validation, 128, engine)
        tolerance = 2e-2 if precision == "bf16" else 2e-3
        assert abs(alone.history[-1].eval_accuracy - fitted.history[-1].eval_accuracy) < tolerance
        torch.testing.assert_close(
            alone.params.cpu(), fitted.params.cpu(), rtol=0, atol=5e-2 if precision == "bf16" else 5e-3
        )
    assert together[0].history[-1].eval_accuracy > 0.5  # chance is 0.1


def test_run_on_cuda_from_the_command_line(mnist_dir, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", "run", "provided", "--device", "cuda", "--data-dir", str(mnist_dir),
         "--set", "train.epochs=2", "--out", str(out), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert any(out.rglob("*.safetensors"))
