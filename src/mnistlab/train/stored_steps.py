"""Compiled training steps kept on disk, so that a process does not compile what another one already did.

Compiling a step costs 18-30 s of Python on a 2-vCPU AMD EPYC, and torch's own caches cannot spare it
for a step compiled ahead of time (`aot_compile` names every graph with a fresh id, and so misses
inductor's graph cache every time). Every worker process of a plan, every `mnistlab run` and every
study paid it again. The ahead-of-time compiled step can be serialised instead: a later process loads
it in about 4 s (its generated C++ is still in inductor's cache; about 20 s where that cache is gone).

What is stored is a pickle of generated code, and loading it runs that code, exactly as inductor's own
on-disk cache and Python's __pycache__ do. So it is trusted only where only this user could have
written it: the folder is made private (0700) and must be owned by this user and writable by nobody
else, as must the file; otherwise nothing is loaded or stored, with a warning. Nothing that arrives
from elsewhere (a download, a run folder, a Dask message) is ever loaded as a step.

A stored step is found by a digest of everything its graph is specialised on: the step's signature
(`steps._signature`: the function and the values bound into it, every tensor's shape, strides and
dtype, the thread count), mnistlab's source code, torch's and Python's versions, and the instruction
set the kernels were generated for. A step loaded from disk runs the same kernels as the one compiled
here, so it gives the same bits. TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 turns this off with torch's caches.
"""

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

from mnistlab.files import atomic_path
from mnistlab.train import compiler
from mnistlab.train.hardware import instruction_set

SUFFIX = ".step"
KEEP = 64  # stored steps; the oldest beyond these are removed when a new one is stored


class StoredStepWarning(UserWarning):
    """A stored step could not be used (an unsafe folder, a file that does not load); it is compiled instead."""


def folder() -> Path:
    from mnistlab.data import cache_dir  # the user cache of the data stage; here, so that importing stays light

    return cache_dir() / "compiled"


def digest(signature: tuple, device: torch.device) -> str:
    """The file name of the step of this signature on this machine, for this code."""
    parts = (_stable(signature), _code(), torch.__version__, sys.version, instruction_set(device))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def has(name: str) -> bool:
    """Whether a step `name` is stored (it may still fail to load)."""
    return (folder() / f"{name}{SUFFIX}").is_file()


def load(name: str, f_globals: dict):
    """The stored step `name`, ready to call, or None (not stored, not safe to trust, or not loadable)."""
    path = folder() / f"{name}{SUFFIX}"
    if not path.is_file() or not _private(path.parent) or not _private(path):
        return None
    try:
        return compiler.load(path.read_bytes(), f_globals)
    except Exception as exc:  # a file of another torch, truncated, ...: compiled again, and replaced
        reason = f"{path}: a stored compiled step that does not load ({type(exc).__name__}); compiling it again"
        warnings.warn(reason, StoredStepWarning, 3)
        return None


def store(name: str, step) -> None:
    """Keep an ahead-of-time compiled step for later processes; never fails the training that made it."""
    where = folder()
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(where):
            return
        data = compiler.serialize(step)
        with atomic_path(where / f"{name}{SUFFIX}") as part:
            part.write_bytes(data)
            part.chmod(0o600)
        _prune(where)
    except Exception as exc:  # a full disk, a step torch cannot serialise: the next process compiles again
        warnings.warn(f"{where}: could not store a compiled step ({type(exc).__name__}: {exc})", StoredStepWarning, 3)


def _private(path: Path) -> bool:
    """Whether `path` belongs to this user and nobody else may write it (warned once per path if not)."""
    if not hasattr(os, "geteuid"):
        return False  # no owners to check: store nothing
    status = path.stat()
    if status.st_uid == os.geteuid() and not status.st_mode & 0o022:
        return True
    _warn_unsafe(str(path))
    return False


@functools.cache
def _warn_unsafe(path: str) -> None:
    warnings.warn(
        f"{path}: another user could write there; compiled steps are not stored or loaded", StoredStepWarning, 4
    )


def _prune(where: Path) -> None:
    stored = sorted(where.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in stored[KEEP:]:
        old.unlink(missing_ok=True)


def _stable(value):
    """`value` with functions named rather than located, so that its repr is the same in every process."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (tuple, list)):
        return tuple(_stable(item) for item in value)
    return value


@functools.cache
def _code() -> str:
    """A digest of mnistlab's source: a step compiled from other code is another step."""
    package = Path(__file__).resolve().parents[1]
    sha = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        sha.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()
