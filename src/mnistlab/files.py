"""Files appear whole or not at all: everything mnistlab writes goes through a temporary file
in the target's folder and a rename, so an interrupted run never leaves a half-written artifact."""

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

# In every report and figure mnistlab writes, near its start: a later run knows the file is its own to replace.
MARK = "made by mnistlab"


def temporary_sibling(path: Path, tag: str = "part") -> Path:
    """An unused name beside `path`, hidden, for building it before a rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` if the block succeeds, removed if not."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write bytes, or text as UTF-8, to `path` atomically."""
    if isinstance(content, str):
        content = content.encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
