"""torch's private and ahead-of-time compile APIs, behind one door.

mnistlab compiles its training step with `torch.compile(...).aot_compile()`, drops the guards of the
result (`disable_guard_check`: every call of one step has one signature, so they only cost time), and
stores it for later processes (`serialize`, `torch.compiler.load_compiled_function`). None of these is a
stable API: they exist in the torch releases this module was written for (WRITTEN_FOR), and a build of
one of them may still lack them (torch 2.11 with CUDA returned a compiled function without
`aot_compile`). Anywhere else, mnistlab compiles with plain `torch.compile`, guards kept and nothing
stored, and says so once.
"""

import functools
import io
import warnings

import torch

WRITTEN_FOR = ("2.10", "2.11", "2.12", "2.13")  # major.minor releases whose private APIs this module calls


class CompilerWarning(UserWarning):
    """torch lacks what ahead-of-time compiling needs: steps compile with guards, and are not stored."""


def caches_disabled() -> bool:
    """Whether inductor's caches are off (TORCHINDUCTOR_FORCE_DISABLE_CACHES=1): nothing is stored then."""
    return bool(getattr(torch._inductor.config, "force_disable_caches", False))


@functools.cache
def ahead_of_time() -> bool:
    """Whether this torch offers what ahead-of-time compiling and storing steps needs (warned once if not)."""
    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    offered = hasattr(torch.compiler, "load_compiled_function") and release in WRITTEN_FOR
    if not offered:
        warnings.warn(
            f"torch {torch.__version__}: mnistlab's ahead-of-time compiling was written for torch "
            f"{', '.join(WRITTEN_FOR)}; training steps compile with torch.compile's guards, and are not stored",
            CompilerWarning,
            3,
        )
    return offered


def compile_step(step_fn, args: tuple, options: dict, dynamic_args: tuple[int, ...]):
    """`step_fn` compiled for `args`, and whether the result can be stored: ahead of time without guards
    where this torch allows it, else plain torch.compile. The arguments at `dynamic_args` (tensors) keep
    their first dimension symbolic."""
    for index in dynamic_args:
        torch._dynamo.mark_dynamic(args[index], 0)
    compiled = torch.compile(step_fn, fullgraph=True, dynamic=False, options=options)
    if not (ahead_of_time() and not caches_disabled() and hasattr(compiled, "aot_compile")):
        return compiled, False
    compiled = compiled.aot_compile((args, {}))
    compiled.disable_guard_check()
    return compiled, True


def serialize(compiled) -> bytes:
    """The bytes of a step compiled ahead of time, for `load`."""
    return type(compiled).serialize(compiled).serialized_data


def load(data: bytes, f_globals: dict):
    """A step that `serialize` wrote, ready to call without guards. Loading runs the code it holds: only
    ever called on bytes this user stored (`stored_steps`)."""
    step = torch.compiler.load_compiled_function(io.BytesIO(data), f_globals=f_globals)
    step.disable_guard_check()
    return step
