"""Files appear whole or not at all: everything mnistlab writes goes through a temporary file
in the target's folder and a rename, so an interrupted run never leaves a half-written artifact."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` if the block succeeds, removed if not."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write bytes, or text as UTF-8, to `path` atomically."""
    if isinstance(content, str):
        content = content.encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
