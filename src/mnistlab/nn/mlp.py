"""The multi-layer perceptron of the lab report, as a stack of M independent models.

Every model mnistlab trains is a member of a stack: M models of one architecture whose weights
have a leading member axis, so that the presets and seeds that differ only in numbers (penalties,
dropout rates, seeds) train together with batched matmuls. A single model is a stack of one.

Whole models (evaluation, best weights, files) are flat (M, P) tensors; training works on each
layer's (kernel (M, in, out), bias (M, 1, out)) pair. `layers` gives those pairs as views into flat
parameters and `flat` joins pairs back. The backward pass is written out by hand (it is short for an
MLP) so that one training step, Adam included, is a single graph that `torch.compile` fuses, with no
autograd bookkeeping per step. `test_model.py` checks it against autograd.

Keras conventions throughout, so the report's recipes behave as they did in Keras: Glorot-uniform
kernels and zero biases, inverted dropout *before* each Dense layer, L1/L2 penalties on kernels only
(`l1 * sum|W| + l2 * sum W**2`), softmax cross-entropy.
"""

import math
from dataclasses import dataclass

import torch

from mnistlab.spec import Architecture, Hyperparameters, StepWork

EVAL_ELEMENTS = 1 << 22  # floats of activations per evaluation chunk (16 MB)


@dataclass(frozen=True)
class Regularization:
    """Per-member numbers of a stack, as (M,) tensors; dropout rates are (M, layers), before each Dense."""

    dropout: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    label_smoothing: torch.Tensor

    @classmethod
    def of(cls, arch: Architecture, members: list[Hyperparameters], device: torch.device) -> "Regularization":
        rates = [[m.input_dropout] + [m.dropout] * len(arch.hidden) for m in members]
        return cls(
            dropout=torch.tensor(rates, dtype=torch.float32, device=device),
            l1=torch.tensor([m.l1 for m in members], dtype=torch.float32, device=device),
            l2=torch.tensor([m.l2 for m in members], dtype=torch.float32, device=device),
            label_smoothing=torch.tensor([m.label_smoothing for m in members], dtype=torch.float32, device=device),
        )

    def dropout_members(self) -> tuple[tuple[int, ...], ...]:
        """Per layer, the members that drop out before it: only they draw dropout masks."""
        rates = self.dropout.cpu()
        return tuple(tuple(torch.nonzero(rates[:, layer]).flatten().tolist()) for layer in range(rates.shape[1]))


def layers(params: torch.Tensor, arch: Architecture) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(kernel (M, in, out), bias (M, 1, out)) views of each Dense layer in flat (M, P) parameters."""
    views, offset = [], 0
    for n_in, n_out in arch.shapes:
        kernel = params[:, offset : offset + n_in * n_out].view(-1, n_in, n_out)
        offset += n_in * n_out
        bias = params[:, offset : offset + n_out].view(-1, 1, n_out)
        offset += n_out
        views.append((kernel, bias))
    return views


def init_params(arch: Architecture, seeds: list[int], device: torch.device) -> torch.Tensor:
    """Glorot-uniform kernels and zero biases, member m drawn from its own seed alone."""
    params = torch.zeros(len(seeds), arch.num_params)
    for member, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        for kernel, _ in layers(params[member : member + 1], arch):
            limit = math.sqrt(6.0 / (kernel.shape[1] + kernel.shape[2]))
            kernel.uniform_(-limit, limit, generator=generator)
    return params.to(device)


def _activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(z)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    return torch.tanh(z)


def _activation_grad(a: torch.Tensor, activation: str) -> torch.Tensor:
    """d activation / dz, from the activation's output a."""
    if activation == "relu":
        return (a > 0).to(a.dtype)
    if activation == "sigmoid":
        return a * (1 - a)
    return 1 - a * a


def crop(x: torch.Tensor, arch: Architecture) -> torch.Tensor:
    """Images (..., inputs) without the border the architecture cuts: (..., features). Images that
    arrive cropped (distorted training images, `train.augment`) pass as they are."""
    if x.shape[-1] == arch.features:
        return x
    side, cut = arch.side, arch.crop
    square = x.reshape(*x.shape[:-1], side, side)[..., cut : side - cut, cut : side - cut]
    return square.reshape(*x.shape[:-1], arch.features)


def logits(params: torch.Tensor, arch: Architecture, x: torch.Tensor) -> torch.Tensor:
    """(M, n, classes) logits of every member for inputs x of shape (n, inputs), dropout off."""
    h = crop(x, arch)
    for index, (kernel, bias) in enumerate(layers(params, arch)):
        z = torch.matmul(h, kernel) + bias  # (n, in) @ (M, in, out) broadcasts over members
        h = _activate(z, arch.activation) if index < len(arch.hidden) else z
    return h


@torch.no_grad()
def probabilities(params: torch.Tensor, arch: Architecture, x: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """(n, classes) softmax probabilities of one model of flat (P,) parameters, dropout off, in chunks."""
    parts = [logits(params.view(1, -1), arch, x[i : i + chunk])[0] for i in range(0, len(x), chunk)]
    return torch.softmax(torch.cat(parts), dim=1)


def flat(per_layer) -> torch.Tensor:
    """(M, P) flat parameters (or gradients) from per-layer (kernel, bias) pairs, the inverse of `layers`."""
    return torch.cat([tensor.flatten(1) for pair in per_layer for tensor in pair], dim=1)


def penalty(weights, reg: Regularization) -> torch.Tensor:
    """(M,) L1 + L2 penalty on the kernels of per-layer (kernel, bias) weights, as Keras adds it to the loss."""
    total = torch.zeros(len(reg.l1), device=reg.l1.device)
    for kernel, _ in weights:
        per_weight = reg.l1.view(-1, 1, 1) * kernel.abs() + reg.l2.view(-1, 1, 1) * kernel.square()
        # Row sums first: a reduction over each kernel row walks the kernel as Adam's update does, so the
        # compiler computes it inside that pass; summed over (1, 2) at once, it took a pass of its own.
        total = total + per_weight.sum(2).sum(1)
    return total


def add_penalty_grad(kernel: torch.Tensor, grad: torch.Tensor, reg: Regularization, work: StepWork):
    """A kernel's gradient with its L1/L2 penalty's added; terms that no member has are skipped."""
    if work.l1:
        grad = grad + reg.l1.view(-1, 1, 1) * torch.sign(kernel)
    if work.l2:
        grad = grad + 2 * reg.l2.view(-1, 1, 1) * kernel
    return grad


def mean_grads(weights, reg: Regularization, grads, rows: int, work: StepWork):
    """Per layer, the (kernel, bias) gradient of a batch's mean loss, penalty included, from
    `batch_grads`' sums over its `rows` rows."""
    return [
        (add_penalty_grad(kernel, grad_kernel / rows, reg, work), grad_bias / rows)
        for (kernel, _), (grad_kernel, grad_bias) in zip(weights, grads, strict=True)
    ]


def eval_chunk_rows(arch: Architecture, members: int) -> int:
    """Rows per chunk of an evaluation: activations small enough for the allocator to reuse, not map afresh."""
    return max(1024, EVAL_ELEMENTS // (members * max(arch.inputs, *arch.hidden)))


@torch.no_grad()
def evaluate(
    params: torch.Tensor, arch: Architecture, reg: Regularization, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) clean loss (penalty included, as Keras' evaluate reports it) and accuracy on (x, y)."""
    nll = torch.zeros(params.shape[0], device=params.device)
    correct = torch.zeros(params.shape[0], device=params.device)
    chunk = eval_chunk_rows(arch, params.shape[0])
    for start in range(0, len(y), chunk):
        out = logits(params, arch, x[start : start + chunk])
        target = y[start : start + chunk].expand(out.shape[0], -1)
        nll += torch.nn.functional.cross_entropy(out.transpose(1, 2), target, reduction="none").sum(1)
        correct += (out.argmax(-1) == target).sum(1)
    return nll / len(y) + penalty(layers(params, arch), reg), correct / len(y)


# Random draws are pure functions of (member key, step, layer, position), so a member draws the same
# whether it trains alone or in a stack, eager or compiled, and the compiler generates them inside the
# fused kernels with no memory traffic. A stream is SplitMix64 of the key and a counter.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # the constants as signed int64: torch has no uint64 math
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_LOWBIAS1, _LOWBIAS2 = 0x7FEB352D, 0x846CA68B - (1 << 32)  # lowbias32's multipliers, as signed int32
KEEP_BITS = 24  # masks compare 24 random bits against round(rate * 2**24)


def _shift_right(x: torch.Tensor, n: int, width: int = 64) -> torch.Tensor:
    return (x >> n) & ((1 << (width - n)) - 1)  # logical, not arithmetic, shift


def _splitmix64(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    z = keys + counter * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32: a bijection on 32 bits with near-ideal avalanche, in int32 arithmetic."""
    x = (x ^ _shift_right(x, 16, 32)) * _LOWBIAS1
    x = (x ^ _shift_right(x, 15, 32)) * _LOWBIAS2
    return x ^ _shift_right(x, 16, 32)


def random_bits(
    keys: torch.Tensor, step: torch.Tensor, layer: int, num_layers: int, shape, first_row=0
) -> torch.Tensor:
    """(M, rows, cols) int64 of KEEP_BITS uniform random bits for each member's key (M,): SplitMix64 of
    each position's own counter. The distortions draw these: a few dozen per image.

    Rows count from `first_row`, so a batch processed in chunks draws the bits it would draw whole.
    """
    rows, cols = shape
    position = torch.arange(rows * cols, device=keys.device, dtype=torch.int64).view(1, rows, cols)
    counter = ((step * num_layers + layer) << 32) + position + first_row * cols
    return _shift_right(_splitmix64(keys.view(-1, 1, 1), counter), 64 - KEEP_BITS)


def keep_bits(keys: torch.Tensor, step: torch.Tensor, layer: int, num_layers: int, shape, first_row=0) -> torch.Tensor:
    """(M, rows, cols) int32 of KEEP_BITS uniform random bits for each member's key (M,), for dropout masks.

    A mask is drawn for every activation a member drops (38k per batch-32 step of the dropout model, 60M
    per full batch), so these are cheap 32-bit hashes: two lowbias32 rounds of the position, keyed by
    the two halves of one SplitMix64 per member, step and layer. AVX2 has no 64-bit multiply (at::vec
    multiplies int64 lane by lane), so a SplitMix64 per position made the dropout step markedly slower
    (benchmarks/README.md). Within one stream, positions never collide (each round is a bijection).
    Rows count from `first_row`.
    """
    rows, cols = shape
    stream = _splitmix64(keys, ((step * num_layers + layer) << 32)).view(-1, 1, 1)
    low, high = stream.to(torch.int32), _shift_right(stream, 32).to(torch.int32)
    position = (torch.arange(rows * cols, device=keys.device) + first_row * cols).to(torch.int32)
    mixed = _lowbias32(_lowbias32(position.view(1, rows, cols) ^ low) ^ high)
    return _shift_right(mixed, 32 - KEEP_BITS, 32)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b in a's dtype (float32 accumulation), the result in float32.

    A stack of one in bf16 takes a plain mm: oneDNN's batched bf16 kernel first copies an operand that
    arrives transposed, as the kernel gradient's does, which made a 50k-row step's first layer twice as
    slow. In float32, bmm is the faster of the two for the small matmuls of small batches.
    """
    b = b.to(a.dtype)
    if a.dtype == torch.bfloat16 and a.shape[0] == 1:
        return torch.mm(a[0], b[0]).float().unsqueeze(0)
    return torch.bmm(a, b).float()


def _scale_members(h: torch.Tensor, chosen: slice | list[int], scale: torch.Tensor) -> torch.Tensor:
    """h (M, rows, cols) with the chosen members (all of them, as a slice, or a list) times their scale."""
    if isinstance(chosen, slice):
        return h * scale
    index = torch.tensor(chosen, device=h.device)
    return h.index_copy(0, index, h.index_select(0, index) * scale)


def batch_grads(
    weights: list[tuple[torch.Tensor, torch.Tensor]],
    arch: Architecture,
    reg: Regularization,
    x: torch.Tensor,
    y: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor,
    dropout_members: tuple[tuple[int, ...], ...],
    bf16_layers: tuple[int, ...] = (),
    first_row=0,
    smoothing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data term of one training batch for every member, summed over its rows: cross-entropy (M,),
    correct predictions (M,), and per layer the gradient of the cross-entropy as (kernel (M, in, out),
    bias (M, 1, out)): shaped as the weights.

    `weights` are per layer (kernel (M, in, out), bias (M, 1, out)). x is (M, B, inputs) and y (M, B):
    each member sees its own batch. Sums, not means, so that a batch can be processed in chunks (rows
    counted from `first_row`) and added up. `dropout_members` (see `Regularization.dropout_members`)
    says which members drop out before each layer; no other member draws masks there. The layers in
    `bf16_layers` run their matmuls in bf16, as autocast would: their input is rounded once, for the
    forward matmul and the kernel gradient alike. All else stays float32. With `smoothing`, each
    member's targets are smoothed by its `reg.label_smoothing`, and the loss is against those targets.
    """
    num_layers = len(weights)
    inputs, masks, outputs = [], {}, []  # per layer: what fed the kernel, (members, dropout scales), activations
    h = crop(x, arch)
    for index, (kernel, bias) in enumerate(weights):
        dropping = dropout_members[index]
        if dropping:
            # Only the members that drop out hash masks: in the study's stack of six, one member of six.
            chosen = slice(None) if len(dropping) == len(keys) else list(dropping)
            rate = reg.dropout[chosen, index].view(-1, 1, 1)
            threshold = torch.round(rate * (1 << KEEP_BITS)).to(torch.int32)
            keep = keep_bits(keys[chosen], step, index, num_layers, h.shape[1:], first_row) >= threshold
            masks[index] = (chosen, keep.to(h.dtype) / (1 - rate))
            h = _scale_members(h, *masks[index])
        if index in bf16_layers:
            h = h.to(torch.bfloat16)
        inputs.append(h)
        z = _matmul(h, kernel) + bias
        h = _activate(z, arch.activation) if index < num_layers - 1 else z
        outputs.append(h)

    log_probs = torch.log_softmax(h, dim=-1)
    nll = -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    correct = (h.argmax(-1) == y).sum(1)
    target = torch.nn.functional.one_hot(y, arch.classes).to(h.dtype)
    if smoothing:
        amount = reg.label_smoothing.view(-1, 1, 1)
        target = target * (1 - amount) + amount / arch.classes
        nll = -(target * log_probs).sum(-1)
    grad_z = log_probs.exp() - target

    grads = []
    for index in reversed(range(num_layers)):
        kernel, _ = weights[index]
        rounded = grad_z.to(inputs[index].dtype)
        grads.append((_matmul(inputs[index].transpose(1, 2), rounded), grad_z.sum(1, keepdim=True)))
        if index > 0:
            grad_h = _matmul(rounded, kernel.transpose(1, 2))
            if index in masks:
                grad_h = _scale_members(grad_h, *masks[index])
            grad_z = grad_h * _activation_grad(outputs[index - 1], arch.activation)

    return nll.sum(1), correct, grads[::-1]
