"""The compiled training step: compiled once per signature, kept for the process, stored for the next.

A step is compiled on its first call's arguments (`compiler.compile_step`), ahead of time where torch
allows it, and then called without dynamo: no frame hook, no guards. Guards are what let torch.compile
tell a call that needs another graph from one that does not; here the compiled graphs are kept per
signature (`_signature`) of the step and its arguments instead, and every later call of one
`CompiledStep` must have that signature: the same state, data of the same width and dtype, batches of
the same shape. That saves about a quarter of a batch-32 step of one model (benchmarks/README.md). A
call of another shape, which the unguarded graph would read out of bounds, raises StepSignatureError
(the epoch's short last batch runs eagerly for that reason).
"""

from collections import OrderedDict
from dataclasses import fields, is_dataclass
from functools import partial

import torch

from mnistlab.errors import MnistlabError
from mnistlab.train import compiler, stored_steps

KEPT = 16  # compiled steps kept in memory per process; a plan's stacks have a handful of signatures


class StepSignatureError(MnistlabError):
    """A compiled step called with arguments of another shape or dtype than it was compiled for."""


def compile_step(step_fn):
    """The training step through torch.compile, as a callable that compiles on its first call.

    `step_fn(state, x, y, ...)` takes the stack's state, then data whose row count varies (the 50k and
    60k rows of the two phases, a full batch's chunks): those rows stay symbolic in the graph. Every
    other shape is fixed, as are the Python values bound into `step_fn` (a `functools.partial`).
    """
    return CompiledStep(step_fn)


class CompiledStep:
    """A step that compiles on its first call and checks every later call against that call's shapes."""

    def __init__(self, step_fn):
        self.step_fn, self.compiled, self.state, self.shapes = step_fn, None, None, None

    def __call__(self, state, x, y, *rest):
        shapes = _shapes(x, y, rest)
        if self.compiled is None:
            self.compiled, self.state, self.shapes = _compiled(self.step_fn, (state, x, y, *rest)), state, shapes
        elif shapes != self.shapes or (state is not self.state and not _same_state(state, self.state)):
            raise StepSignatureError(
                f"a compiled training step called with {_described(shapes)}, where it was compiled for "
                f"{_described(self.shapes)}: another shape needs a step of its own (or the eager step)"
            )
        return self.compiled(state, x, y, *rest)


def readiness(step_fn, args: tuple) -> str:
    """What a compiled step for these arguments would take now: "kept" (compiled in this process),
    "stored" (to load from disk), or "compile"."""
    signature = _signature(step_fn, args)
    if signature in _COMPILED:
        return "kept"
    name = None if compiler.caches_disabled() else stored_steps.digest(signature, args[1].device)
    return "stored" if name and compiler.ahead_of_time() and stored_steps.has(name) else "compile"


def _shapes(x, y, rest) -> tuple:
    """What a call may not change: the data's width and dtypes, and every other argument's shape."""
    return (x.dtype, tuple(x.shape[1:])), (y.dtype, tuple(y.shape[1:])), *(_shape(r) for r in rest)


def _shape(value):
    if isinstance(value, torch.Tensor):
        return value.dtype, tuple(value.shape)
    if isinstance(value, tuple | list):
        return tuple(_shape(item) for item in value)
    return value


def _same_state(a, b) -> bool:
    return _describe(a) == _describe(b)


def _described(shapes: tuple) -> str:
    """Shapes as an error message gives them: "torch.int64 [2, 32]", ..."""

    def one(item) -> str:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.dtype):
            return f"{str(item[0]).removeprefix('torch.')} {list(item[1])}"
        if isinstance(item, tuple):
            return "(" + ", ".join(map(one, item)) + ")"
        return repr(item)

    return ", ".join(map(one, shapes))


_COMPILED: OrderedDict = OrderedDict()  # signature -> compiled step, the KEPT last used: phase 2 reuses phase 1's


def _compiled(step_fn, args: tuple):
    signature = _signature(step_fn, args)
    if signature in _COMPILED:
        _COMPILED.move_to_end(signature)
    else:
        _COMPILED[signature] = _stored_or_compiled(step_fn, args, signature)
        while len(_COMPILED) > KEPT:
            _COMPILED.popitem(last=False)
    return _COMPILED[signature]


def _stored_or_compiled(step_fn, args: tuple, signature: tuple):
    """The step as an earlier process compiled and stored it (`stored_steps`), else compiled here and stored."""
    state, x, y, *_ = args
    name = None if compiler.caches_disabled() else stored_steps.digest(signature, x.device)
    traced = step_fn.func if isinstance(step_fn, partial) else step_fn
    if name and compiler.ahead_of_time() and (stored := stored_steps.load(name, traced.__globals__)) is not None:
        return stored
    # The step's row indices come from our own permutations, and the signature fixes every
    # input's size and strides: the generated code need not check them again on every call.
    options = {"assert_indirect_indexing": False, "size_asserts": False}
    if x.device.type == "cpu":
        options["cpp_wrapper"] = True  # a C++ wrapper around the kernels: ~40 us less Python per step
    compiled, storable = compiler.compile_step(step_fn, args, options, dynamic_args=(1, 2))
    if name and storable:
        stored_steps.store(name, compiled)
    return compiled


def _describe(value, rows_vary=False):
    if isinstance(value, torch.Tensor):
        size = (None, *value.shape[1:]) if rows_vary else tuple(value.shape)
        return (value.dtype, value.device, size, value.stride()[1:] if rows_vary else value.stride())
    if isinstance(value, (tuple, list)):
        return tuple(_describe(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value), *(_describe(getattr(value, f.name)) for f in fields(value)))
    return value


def _signature(step_fn, args: tuple) -> tuple:
    """What a compiled step is specialised on: the step function with the values bound into it, and
    every tensor's dtype, device, size and strides, but for the rows of the data (args 1 and 2), and the
    thread count."""
    bound = (step_fn.func, tuple(sorted(step_fn.keywords.items()))) if isinstance(step_fn, partial) else step_fn
    # Inductor writes its CPU kernels for the thread count of the moment (the calibration changes it).
    threads = torch.get_num_threads()
    return (bound, threads, *(_describe(arg, rows_vary=index in (1, 2)) for index, arg in enumerate(args)))
