import json

import pytest
import torch
from safetensors import safe_open

from mnistlab.errors import MnistlabError
from mnistlab.nn import mlp as model
from mnistlab.nn import weights
from mnistlab.nn.mlp import Regularization
from mnistlab.nn.summary import summary
from mnistlab.spec import Architecture, Hyperparameters, StepWork
from mnistlab.train.engine import Engine
from mnistlab.train.fit import Lockstep, Streams

FINAL = Architecture(784, (128, 128, 64, 64, 32))


def test_final_model_parameter_counts_and_summary():
    counts = [n_in * n_out + n_out for n_in, n_out in FINAL.shapes]
    assert counts == [100480, 16512, 8256, 4160, 2080, 330]
    assert FINAL.num_params == 131_818
    text = summary(FINAL, Hyperparameters(seed=0, learning_rate=1e-4, epochs=1, input_dropout=0.1, dropout=0.1))
    dense = [line for line in text.splitlines() if "(Dense" in line]
    assert [int(line.split()[-1].replace(",", "")) for line in dense] == counts
    assert sum("(Dropout" in line for line in text.splitlines()) == 6
    assert "Total params: 131,818" in text


def test_layers_are_views_into_flat_params():
    params = torch.zeros(2, FINAL.num_params)
    kernel, bias = model.layers(params, FINAL)[1]
    kernel[1, 0, 0] = 3.0
    bias[0, 0, 5] = 4.0
    assert params[1, 100480] == 3.0 and params[0, 100480 + 16384 + 5] == 4.0


def test_glorot_uniform_init_depends_only_on_the_members_seed():
    alone = model.init_params(FINAL, [7], torch.device("cpu"))
    stacked = model.init_params(FINAL, [3, 7], torch.device("cpu"))
    assert torch.equal(alone[0], stacked[1]) and not torch.equal(stacked[0], stacked[1])
    kernel, bias = model.layers(alone, FINAL)[0]
    limit = (6 / (784 + 128)) ** 0.5
    assert kernel.abs().max() <= limit and kernel.abs().max() > 0.95 * limit
    assert torch.all(bias == 0)


def _regularization(stack, arch, rates, l1, l2):
    members = [
        Hyperparameters(seed=0, learning_rate=1e-3, epochs=1, input_dropout=r, dropout=r, l1=a, l2=b)
        for r, a, b in zip(rates, l1, l2, strict=True)
    ]
    return Regularization.of(arch, members[:stack], torch.device("cpu"))


def _reference(params, arch, reg, x, y, keys, step, activation):
    """Loss and gradient by autograd, member by member, with the same dropout masks."""
    losses, grads = [], []
    for m in range(params.shape[0]):
        p = params[m : m + 1].clone().requires_grad_(True)
        h = x[m : m + 1]
        for index, (kernel, bias) in enumerate(model.layers(p, arch)):
            rate = reg.dropout[m, index].item()
            if rate:
                bits = model.keep_bits(keys[m : m + 1], step, index, len(arch.shapes), h.shape[1:])
                h = h * (bits >= round(rate * 2**model.KEEP_BITS)) / (1 - rate)
            h = h @ kernel + bias
            if index < len(arch.hidden):
                h = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation](h)
        loss = torch.nn.functional.cross_entropy(h[0], y[m])
        for kernel, _ in model.layers(p, arch):
            loss = loss + reg.l1[m] * kernel.abs().sum() + reg.l2[m] * kernel.square().sum()
        loss.backward()
        losses.append(loss.detach())
        grads.append(p.grad[0])
    return torch.stack(losses), torch.stack(grads)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_hand_written_backward_matches_autograd(activation):
    arch = Architecture(20, (16, 8), classes=10, activation=activation)
    torch.manual_seed(0)
    params = torch.randn(3, arch.num_params) * 0.3
    reg = _regularization(3, arch, rates=[0.0, 0.2, 0.5], l1=[0.0, 1e-3, 0.0], l2=[1e-2, 0.0, 1e-3])
    x, y = torch.rand(3, 12, 20), torch.randint(0, 10, (3, 12))
    keys, step = torch.tensor([11, 22, 33]), torch.tensor(5)
    weights = model.layers(params, arch)
    nll, correct, grads = model.batch_grads(weights, arch, reg, x, y, keys, step, reg.dropout_members())
    loss = nll / 12 + model.penalty(weights, reg)
    grad = model.flat(model.mean_grads(weights, reg, grads, 12, StepWork(l1=True, l2=True)))
    ref_loss, ref_grad = _reference(params, arch, reg, x, y, keys, step, activation)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert correct.shape == (3,) and 0 <= correct.min() and correct.max() <= 12


def test_bf16_matmuls_stay_close_to_float32():
    torch.manual_seed(1)
    params = model.init_params(FINAL, [0, 1], torch.device("cpu"))
    reg = _regularization(2, FINAL, rates=[0.1, 0.0], l1=[0.0, 0.0], l2=[0.0, 1e-5])
    x, y = torch.rand(2, 64, 784), torch.randint(0, 10, (2, 64))
    args = (torch.tensor([3, 4]), torch.tensor(0), reg.dropout_members())
    weights = model.layers(params, FINAL)
    loss32, _, grads32 = model.batch_grads(weights, FINAL, reg, x, y, *args)
    loss16, _, grads16 = model.batch_grads(weights, FINAL, reg, x, y, *args, bf16_layers=(0, 1))
    grad32, grad16 = model.flat(grads32), model.flat(grads16)
    assert not torch.equal(grad16, grad32)
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grad16, grad32).min() > 0.99  # bf16 keeps 8 bits


def test_penalty_matches_hand_computation():
    arch = Architecture(2, (2,), classes=2)
    # kernel 0 = [[1, -2], [3, -4]], bias 0 = [5, 6], kernel 1 = [[-1, 1], [-1, 1]], bias 1 = [7, 8]
    params = torch.tensor([[1.0, -2, 3, -4, 5, 6, -1, 1, -1, 1, 7, 8]])
    reg = _regularization(1, arch, rates=[0.0], l1=[0.01], l2=[0.001])
    # biases excluded: sum|W| = 10 + 4 = 14, sum W^2 = 30 + 4 = 34
    assert model.penalty(model.layers(params, arch), reg).item() == pytest.approx(0.01 * 14 + 0.001 * 34)
    # its gradient on each kernel: l1 * sign(W) + 2 * l2 * W
    kernel = model.layers(params, arch)[0][0]
    expected = [[0.01 * 1 + 0.002 * 1, 0.01 * -1 + 0.002 * -2], [0.01 * 1 + 0.002 * 3, 0.01 * -1 + 0.002 * -4]]
    penalties = StepWork(l1=True, l2=True)
    torch.testing.assert_close(model.add_penalty_grad(kernel, 0, reg, penalties)[0], torch.tensor(expected))
    x, y = torch.tensor([[0.5, -0.5]]), torch.tensor([1])
    loss, _ = model.evaluate(params, arch, reg, x, y)
    logits = model.logits(params, arch, x)[0]
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item() + 0.174)


@pytest.mark.parametrize("draw", [model.keep_bits, model.random_bits], ids=["dropout", "distortions"])
def test_random_bits_are_uniform_and_private_to_each_member_step_and_layer(draw):
    step = torch.tensor(3)
    alone = draw(torch.tensor([42]), step, 1, 6, (256, 128))
    stacked = draw(torch.tensor([7, 42]), step, 1, 6, (256, 128))
    assert torch.equal(alone[0], stacked[1]) and not torch.equal(stacked[0], stacked[1])
    assert not torch.equal(alone, draw(torch.tensor([42]), step + 1, 1, 6, (256, 128)))
    assert not torch.equal(alone, draw(torch.tensor([42]), step, 2, 6, (256, 128)))
    keep = (alone >= round(0.1 * 2**model.KEEP_BITS)).float().mean().item()
    assert keep == pytest.approx(0.9, abs=0.005)
    assert alone.min() >= 0 and alone.max() < 2**model.KEEP_BITS
    values = alone.flatten().double()
    assert abs(torch.corrcoef(torch.stack([values[:-1], values[1:]]))[0, 1].item()) < 0.02  # neighbours


@pytest.mark.parametrize("draw", [model.keep_bits, model.random_bits], ids=["dropout", "distortions"])
def test_random_bits_of_a_batch_in_chunks_are_the_bits_of_the_whole_batch(draw):
    keys, step = torch.tensor([5, -3]), torch.tensor(11)
    whole = draw(keys, step, 0, 6, (10, 784))
    chunks = [draw(keys, step, 0, 6, (5, 784), torch.tensor(first)) for first in (0, 5)]
    assert torch.equal(torch.cat(chunks, 1), whole)


@pytest.mark.parametrize("draw", [model.keep_bits, model.random_bits], ids=["dropout", "distortions"])
def test_compiled_random_bits_equal_eager(draw):
    def bits(keys, step):
        return draw(keys, step, 2, 6, (37, 61))  # rows of a width no vector length divides: scalar tails too

    keys, step = torch.tensor([123456789012345, -5]), torch.tensor(77)
    assert torch.equal(torch.compile(bits)(keys, step), bits(keys, step))


def test_save_and_load_round_trip(tmp_path):
    params = model.init_params(FINAL, [1], torch.device("cpu"))[0]
    extra = {"preset": "final", "seed": 0, "dataset": "mnist", "classes": list("0123456789"), "note": "é/x"}
    weights.save(tmp_path / "m.safetensors", params, FINAL, extra)
    loaded, arch = weights.load(tmp_path / "m.safetensors")
    assert arch == FINAL and torch.equal(loaded, params)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        assert {k: json.loads(v) for k, v in f.metadata().items() if k != "architecture"} == extra
    # The same weights make the same bytes: safetensors alone writes the metadata in a random order.
    written = (tmp_path / "m.safetensors").read_bytes()
    keys = list(json.loads(written[8 : 8 + int.from_bytes(written[:8], "little")])["__metadata__"])
    assert keys == sorted(keys) and len(keys) == len(extra) + 1
    for _ in range(3):
        weights.save(tmp_path / "again.safetensors", params, FINAL, extra)
        assert (tmp_path / "again.safetensors").read_bytes() == written
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(MnistlabError, match="bad.safetensors: not a mnistlab model"):
        weights.load(tmp_path / "bad.safetensors")


def test_bf16_layers_grow_with_the_batch_and_never_include_the_output_layer():
    assert Engine(precision="fp32").bf16_layers(FINAL.shapes, 50_000) == ()
    bf16 = Engine(precision="bf16")  # asked for explicitly: on any CPU, native or not
    assert bf16.bf16_layers(FINAL.shapes, 50_000)[0] == 0  # a full batch: the first layer at least
    small, large = bf16.bf16_layers(FINAL.shapes, 32), bf16.bf16_layers(FINAL.shapes, 1024)
    assert set(small) <= set(large) and 5 not in large  # the 32 x 10 output layer is always too small


@pytest.mark.parametrize("batch_size", [1024, None])  # large enough for bf16 on every CPU
def test_a_models_bf16_layers_do_not_depend_on_the_stack_it_trains_in(batch_size):
    """A model's precision is decided from its own batch, so it trains alike alone or beside others."""
    x, y = torch.rand(2048, 784), torch.randint(0, 10, (2048,))
    engine = Engine(compile=False, precision="bf16")

    def bf16_layers(stack: int) -> tuple[int, ...]:
        members = [Hyperparameters(seed=s, learning_rate=1e-3, epochs=1) for s in range(stack)]
        streams = [Streams(s, s, s) for s in range(stack)]
        return Lockstep(FINAL, members, streams, (x, y), batch_size, engine).eager.keywords["bf16_layers"]

    assert bf16_layers(1) == bf16_layers(16) != ()
