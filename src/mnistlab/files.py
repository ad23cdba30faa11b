"""Every file mnistlab reads or writes goes through here.

Writing: files appear whole or not at all, through a temporary file in the target's folder and a
rename, so an interrupted run never leaves a half-written artifact. Before any work starts, each
output path is checked (`check_output`): a path the operating system would refuse (a read-only or
immutable folder, a name too long, a file where a folder belongs) is one line naming it, not a
traceback after an hour of training.

Reading: only regular files (a FIFO or a device would block or never end), of bounded size.
"""

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from mnistlab.errors import MnistlabError

# In every report and figure mnistlab writes, near its start: a later run knows the file is its own to replace.
MARK = "made by mnistlab"
# Bytes of a file name that mnistlab's helper files add to a target's name: the lock `.NAME.lock` and
# the temporary siblings `.NAME.0123abcd.building` (see `temporary_sibling`), with room to spare.
NAME_HEADROOM = 32
MAX_DEPTH = 16  # nesting of lists and tables in any config or JSON mnistlab reads


class OutputError(MnistlabError):
    """An output path that mnistlab may not or cannot write."""


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


def json_text(value, indent: int = 2) -> str:
    """`value` as indented JSON. NaN and infinity are refused (ValueError): they are not JSON, and a file
    that holds them cannot be read back by other tools."""
    return json.dumps(value, indent=indent, allow_nan=False) + "\n"


def check_output(path: Path, *, folder: bool) -> Path:
    """Refuse, before any work, an output path that cannot be written: returns it, its parent created.

    `folder`: whether the output is a folder (a run, a study, a sweep) or a file (a report, an export).
    What is already at the path is not judged here, but for its type: whose it is, and whether it may
    be replaced, is the caller's rule (`studies.ownership`, the report's marks).
    """
    path = Path(path)
    name = path.name
    if name in ("", ".", ".."):
        raise OutputError(f"{path}: not a name for a new {'folder' if folder else 'file'}")
    limit = _name_max(path)
    if len(os.fsencode(name)) + NAME_HEADROOM > limit:
        raise OutputError(
            f"{path}: a name of {len(os.fsencode(name))} bytes is too long; the file system takes {limit}, and "
            f"mnistlab needs {NAME_HEADROOM} of them for its lock and temporary files"
        )
    try:
        found = path.lstat()
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise _refused(path, exc) from None
    if found is not None and not stat.S_ISLNK(found.st_mode):
        if folder and not stat.S_ISDIR(found.st_mode):
            raise OutputError(f"{path}: a file is there, not a folder of mnistlab's; choose another --out")
        if not folder and stat.S_ISDIR(found.st_mode):
            raise OutputError(f"{path}: a folder is there, not a file; name a file")
        if not folder and not stat.S_ISREG(found.st_mode):
            raise OutputError(f"{path}: not a regular file; name a file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".mnistlab-probe-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise _refused(path, exc) from None
    return path


def _name_max(path: Path) -> int:
    """The longest file name, in bytes, the file system of `path`'s nearest existing folder takes."""
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _refused(path: Path, exc: OSError) -> OutputError:
    where = Path(exc.filename) if exc.filename else path
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), where)
        return OutputError(f"{path}: cannot write there: {blocking} is a file, not a folder")
    return OutputError(f"{path}: cannot write there ({where}: {reason})")


def is_ours(path: Path) -> bool:
    """Whether mnistlab wrote this file: every report, figure and export carries MARK near its start."""
    if not regular_file(path):
        return False
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(4096)
    except OSError:
        return False


def regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (following links): not a folder, FIFO, socket or device."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_limited(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; OSError otherwise (its strerror says why)."""
    path = Path(path)
    with open(path, "rb", opener=_nonblocking) as f:
        status = os.fstat(f.fileno())
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if status.st_size > limit:
            raise OSError(errno.EFBIG, f"{status.st_size:,} bytes, over the limit of {limit:,}", str(path))
        return f.read(limit + 1)[:limit]


def _nonblocking(path, flags):
    # Opening a FIFO for reading blocks until a writer comes; non-blocking, it opens and is then refused.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def depth(value) -> int:
    """How deeply lists and tables nest in a parsed value: 0 for a scalar."""
    deepest, level, todo = 0, 0, [(value, 0)]
    while todo:
        value, level = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list | tuple):
            deepest = max(deepest, level + 1)
            if level + 1 > MAX_DEPTH:
                return level + 1
            todo += [(item, level + 1) for item in value]
    return deepest


def parse_json(text: str | bytes):
    """JSON as Python values; ValueError for what is not strict JSON: NaN or infinity, or lists and
    objects nested more than MAX_DEPTH deep (which would exhaust the parser's stack)."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} deep")
    return value


def parse_toml(text: str) -> dict:
    """TOML as Python values; tomllib's error for bad TOML, ValueError for nesting deeper than MAX_DEPTH."""
    import tomllib

    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} deep")
    return value
