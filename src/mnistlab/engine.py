"""How to run, as opposed to what to run: device, compilation, matmul precision, CPU settings.

None of these changes what a result means, only its bits (the README's "Determinism" says how).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# Every stack of a new shape compiles another variant of the training step; a study makes more than
# dynamo's default limit of 8 in one process.
RECOMPILE_LIMIT = 256


@dataclass(frozen=True)
class Engine:
    """How to run, as opposed to what to run: never changes what a result means, only its bits."""

    device: torch.device = torch.device("cpu")
    compile: bool = True
    precision: str = "fp32"  # of the training matmuls: fp32 or bf16 (float32 accumulation, float32 weights)
    progress: bool = False
    label: str = ""

    @property
    def matmul_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.precision]


def fast_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices natively (CPU: AVX512-BF16 or AMX; CUDA: Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def flush_denormals() -> None:
    """Treat denormal floats as zero, as TensorFlow does by default.

    Weights that a strong penalty drives towards zero decay into the denormal range, where x86
    arithmetic can be many times slower: after 50 epochs, 37k of l2-strong's weights (those of the
    always-blank border pixels) were denormal. Worker threads inherit the setting when they start, so
    the CLI calls this first thing; `fit` calls it too, for library use.
    """
    torch.set_flush_denormal(True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 matmuls where the hardware has them (see the README for what that changes), else fp32."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def compile_step(step_fn, device: torch.device):
    """The training step through torch.compile: one graph, fixed shapes but for the data size."""
    # On CPU a C++ wrapper around the generated kernels saves ~40 us of Python per step at batch 32.
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    return torch.compile(step_fn, fullgraph=True, dynamic=False, options=options)


def room_to_recompile():
    """A context in which dynamo may compile as many variants of the step as a study needs."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
