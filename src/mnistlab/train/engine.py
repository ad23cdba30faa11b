"""How to run, as opposed to what to run: device, compilation, matmul precision, CPU settings.

None of these changes what a result means, only its bits (the README's "Determinism" says how).
"""

from dataclasses import dataclass, fields, is_dataclass
from functools import partial
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.spec import Architecture
from mnistlab.train import stored_steps
from mnistlab.train.choices import DEVICES, PRECISIONS

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

    @classmethod
    def create(
        cls, device: str = "auto", precision: str = "auto", compile: bool = True, bf16_min_macs: int | None = None
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
        return cls(chosen, compile, resolve_precision(precision, chosen), least)

    def bf16_layers(self, shapes: list[tuple[int, int]], batch_rows: int) -> tuple[int, ...]:
        """The layers (of these (inputs, outputs) shapes) whose matmuls run in bf16 for a model trained on
        batches of `batch_rows` rows. Decided per model, never per stack, so that a model's precision does
        not depend on the runs it happens to train beside."""
        if self.precision == "fp32" or self.bf16_min_macs is None:
            return ()
        return tuple(i for i, (n_in, n_out) in enumerate(shapes) if batch_rows * n_in * n_out >= self.bf16_min_macs)


def bf16_hardware(device: torch.device) -> str | None:
    """How the device multiplies bf16 matrices natively: "cuda", "amx", "avx512_bf16", or None (it does not)."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    names = set(cpu_info().get("flags", "").split())
    if "amx_bf16" in names:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in names else None


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...); empty where
    there is no such file."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = (line.partition(":") for line in first.splitlines())
    return {key.strip(): value.strip() for key, _, value in fields}


def flush_denormals() -> None:
    """Treat denormal floats as zero, as TensorFlow does by default.

    Weights that a strong penalty drives towards zero decay into the denormal range, where x86
    arithmetic can be many times slower: after 50 epochs, 37k of l2-strong's weights (those of the
    always-blank border pixels) were denormal, and Adam's second moments of rarely used weights get
    there in any model. The setting is per thread, and worker threads take it from the thread that
    starts them: the CLI calls this first thing. `fit` calls it too, which covers its own thread only:
    a library user whose program ran parallel work before (loading data, say) should call this first.
    A batch-32 epoch of the final model measured 0.59 s with the flush on every thread, 0.67 s without
    it on the worker thread.
    """
    torch.set_flush_denormal(True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 matmuls where the hardware has them (see the README for what that changes), else fp32."""
    if precision == "auto":
        return "bf16" if bf16_hardware(device) else "fp32"
    return precision


def compile_step(step_fn):
    """The training step through torch.compile, as a callable that compiles on its first call.

    `step_fn(state, x, y, ...)` takes the stack's state, then data whose row count varies (the 50k and
    60k rows of the two phases, a full batch's chunks): those rows stay symbolic in the graph. Every
    other shape is fixed, as are the Python values bound into `step_fn` (a `functools.partial`).
    """
    return _LazyStep(step_fn)


class _LazyStep:
    """Compiles with torch's ahead-of-time API (`aot_compile`) on the first call's arguments, then calls
    the compiled graph without dynamo: no frame hook, no guards. Guards are what let torch.compile tell
    a call that needs another graph from one that does not; here the compiled graphs are kept per
    signature (`_signature`) of the step and its arguments instead, and every later call of one
    `_LazyStep` has that signature: the same state, data of the same width and dtype, batches of the
    same shape. That saves ~90 us of a ~400 us batch-32 step of one model (see benchmarks/README.md)."""

    def __init__(self, step_fn):
        self.step_fn, self.compiled = step_fn, None

    def __call__(self, state, x, y, *rest):
        if self.compiled is None:
            self.compiled = _compiled(self.step_fn, (state, x, y, *rest))
        return self.compiled(state, x, y, *rest)


_COMPILED = {}  # signature -> compiled step, for the life of the process: phase 2 reuses phase 1's


def _compiled(step_fn, args: tuple):
    signature = _signature(step_fn, args)
    if signature not in _COMPILED:
        _COMPILED[signature] = _stored_or_compiled(step_fn, args, signature)
    return _COMPILED[signature]


def _stored_or_compiled(step_fn, args: tuple, signature: tuple):
    """The step as an earlier process compiled and stored it (`stored_steps`), else compiled here and stored."""
    state, x, y, *_ = args
    # aot_compile refuses when caches are off, and some torch builds (2.11 with CUDA) do not offer it on
    # what torch.compile returns: then the guards stay, and nothing is stored.
    ahead = not torch._inductor.config.force_disable_caches
    name = stored_steps.digest(signature, x.device) if ahead else None
    traced = step_fn.func if isinstance(step_fn, partial) else step_fn
    if name and (stored := stored_steps.load(name, traced.__globals__)) is not None:
        return stored
    torch._dynamo.mark_dynamic(x, 0)
    torch._dynamo.mark_dynamic(y, 0)
    # The step's row indices come from our own permutations, and the signature fixes every
    # input's size and strides: the generated code need not check them again on every call.
    options = {"assert_indirect_indexing": False, "size_asserts": False}
    if x.device.type == "cpu":
        options["cpp_wrapper"] = True  # a C++ wrapper around the kernels: ~40 us less Python per step
    compiled = torch.compile(step_fn, fullgraph=True, dynamic=False, options=options)
    if hasattr(compiled, "aot_compile") and ahead:
        compiled = compiled.aot_compile((args, {}))
        compiled.disable_guard_check()
        stored_steps.store(name, compiled)
    return compiled


def _signature(step_fn, args: tuple) -> tuple:
    """What a compiled step is specialised on: the step function with the values bound into it, and
    every tensor's dtype, device, size and strides, but for the rows of the data (args 1 and 2), and the
    thread count."""

    def describe(value, rows_vary=False):
        if isinstance(value, torch.Tensor):
            size = (None, *value.shape[1:]) if rows_vary else tuple(value.shape)
            return (value.dtype, value.device, size, value.stride()[1:] if rows_vary else value.stride())
        if isinstance(value, (tuple, list)):
            return tuple(describe(item) for item in value)
        if is_dataclass(value) and not isinstance(value, type):
            return (type(value), *(describe(getattr(value, f.name)) for f in fields(value)))
        return value

    bound = (step_fn.func, tuple(sorted(step_fn.keywords.items()))) if isinstance(step_fn, partial) else step_fn
    # Inductor writes its CPU kernels for the thread count of the moment (the calibration changes it).
    threads = torch.get_num_threads()
    return (bound, threads, *(describe(arg, rows_vary=index in (1, 2)) for index, arg in enumerate(args)))


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
