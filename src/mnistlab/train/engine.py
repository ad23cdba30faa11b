"""How to run, as opposed to what to run: device, compilation, matmul precision, CPU settings.

None of these changes what a result means, only its bits (the README's "Determinism" says how).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.spec import Architecture
from mnistlab.train.choices import DEVICES, PRECISIONS
from mnistlab.train.hardware import bf16_hardware

# Where bf16 is emulated (asked for with --precision bf16), from this size on, as AVX512-BF16 paid: the
# layers that would gain most on hardware that has it.
EMULATED_BF16_MIN_MACS = 1 << 21


@dataclass(frozen=True)
class Engine:
    """How to run, as opposed to what to run: never changes what a result means, only its bits."""

    device: torch.device = torch.device("cpu")
    compile: bool = True
    precision: str = "fp32"  # of the training matmuls: fp32 or bf16 (float32 accumulation, float32 weights)
    # In bf16, the smallest layer that runs in bf16, in multiply-adds per model and batch; None: none does.
    # A bf16 matmul pays only when its faster arithmetic outweighs what it costs per call on top of a
    # float32 one (on CPU, oneDNN reorders the weights each call, and AMX also sets up its tiles), so the
    # calibration measures it (`train.calibration`).
    bf16_min_macs: int | None = EMULATED_BF16_MIN_MACS
    # What compiling a step costs here (the calibration's): a stack that could shed pruned rows weighs it.
    compile_seconds: float = 30.0

    @classmethod
    def create(
        cls,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = True,
        bf16_min_macs: int | None = None,
        compile_seconds: float = 30.0,
    ) -> "Engine":
        """An engine for this machine: `auto` takes CUDA where PyTorch sees it, and bf16 where the device
        multiplies it natively, in the layers of at least `bf16_min_macs` (the calibration's)."""
        if device not in DEVICES:
            raise MnistlabError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
        if precision not in PRECISIONS:
            raise MnistlabError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise MnistlabError("device cuda: PyTorch sees no CUDA device here")
        chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
        least = bf16_min_macs if bf16_hardware(chosen) else EMULATED_BF16_MIN_MACS
        return cls(chosen, compile, resolve_precision(precision, chosen), least, compile_seconds)

    def bf16_layers(self, shapes: list[tuple[int, int]], batch_rows: int) -> tuple[int, ...]:
        """The layers (of these (inputs, outputs) shapes) whose matmuls run in bf16 for a model trained on
        batches of `batch_rows` rows. Decided per model, never per stack, so that a model's precision does
        not depend on the runs it happens to train beside."""
        if self.precision == "fp32" or self.bf16_min_macs is None:
            return ()
        return tuple(i for i, (n_in, n_out) in enumerate(shapes) if batch_rows * n_in * n_out >= self.bf16_min_macs)


def flush_denormals() -> None:
    """Treat denormal floats as zero, as TensorFlow does by default.

    Weights that a strong penalty drives towards zero decay into the denormal range, where x86
    arithmetic can be many times slower: after 50 epochs, 37k of l2-strong's weights (those of the
    always-blank border pixels) were denormal, and Adam's second moments of rarely used weights get
    there in any model. The setting is per thread, and worker threads take it from the thread that
    starts them: the CLI calls this first thing. `fit` calls it too, which covers its own thread only:
    a library user whose program ran parallel work before (loading data, say) should call this first
    (benchmarks/README.md, "What the code's comments measured").
    """
    torch.set_flush_denormal(True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 matmuls where the hardware has them (see the README for what that changes), else fp32."""
    if precision == "auto":
        return "bf16" if bf16_hardware(device) else "fp32"
    return precision


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`: free GPU memory, or the kernel's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def training_bytes(arch: Architecture, members: int, batch_rows: int, eval_rows: int) -> int:
    """A generous estimate of the memory a stack of `members` models of this architecture needs in training.

    Per member: the weights, Adam's two moments, a flat copy per epoch, best weights, the phase's result:
    eight copies of the parameters. Per step: each layer's input, output and their gradients over the
    batch's rows (a full batch in chunks of `batch_rows`), and the evaluation's activations.
    """
    widths = sum(n_in + n_out for n_in, n_out in arch.shapes)
    activations = 4 * batch_rows * widths + 2 * eval_rows * max(max(shape) for shape in arch.shapes)
    return 4 * members * (8 * arch.num_params + activations)


def check_memory(arch: Architecture, members: int, batch_rows: int, eval_rows: int, device) -> None:
    """Refuse, before anything is allocated, a stack that would not fit in the device's memory."""
    needed, free = training_bytes(arch, members, batch_rows, eval_rows), available_memory(device)
    if free is not None and needed > free:
        raise MnistlabError(
            f"{members} model{'s' if members > 1 else ''} of {arch.num_params:,} parameters "
            f"need{'' if members > 1 else 's'} about {_size(needed)} "
            f"to train on {device.type}, and {_size(free)} is available; make the model smaller"
        )


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
