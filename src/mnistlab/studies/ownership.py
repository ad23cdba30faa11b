"""Whose folder is it. mnistlab writes only into a new path, an empty folder, or a folder that it made
itself (told by the marker file it writes there, never by guesswork), and one process at a time.

Every output folder holds `mnistlab.json`: which kind of folder it is (a run, a multi-seed run, a
study, a sweep) and, for runs, the config that made it. An existing folder of another config is
refused unless the caller asks to overwrite it; anything else that is in the way is always refused,
with one line that says what is there.

While a command writes, it holds an advisory lock (`flock`) on `.NAME.lock` beside its output folder.
The kernel drops the lock when the process dies, so a crashed run never blocks the next one; a second
process finds the lock held and says which process holds it.
"""

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mnistlab.errors import MnistlabError
from mnistlab.files import json_text, parse_json, read_limited, write_atomic
from mnistlab.version import __version__

MARKER = "mnistlab.json"
MARKER_BYTES = 1 << 20  # a marker holds a config: a few kilobytes
KINDS = ("run", "seeds", "study", "sweep")


class FolderInUse(MnistlabError):
    """Another process is writing the folder."""


def marker(kind: str, config: str | None = None) -> str:
    """The marker's content for a folder of this kind, made from this config (TOML text) if a run."""
    return json_text({"made_by": "mnistlab", "version": __version__, "kind": kind, "config": config})


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder that mnistlab made, or None when there is none or it is not ours."""
    try:
        found = parse_json(read_limited(Path(folder) / MARKER, MARKER_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("made_by") != "mnistlab" or found.get("kind") not in KINDS:
        return None
    return found


def check_target(path: Path, kind: str, config: str | None, overwrite: bool) -> bool:
    """Whether `path` may become, or stay, an output folder of this kind and config; raises where it may not.

    Returns True when `path` holds a folder of ours that `overwrite` allows to be replaced: a different
    config, or another kind.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_symlink() or not path.is_dir():
        raise MnistlabError(f"{path}: a file is there, not a folder of mnistlab's; choose another --out")
    found = read_marker(path)
    if found is None:
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            return False
        listed = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise MnistlabError(f"{path}: holds files that mnistlab did not write ({listed}); choose another --out")
    if found["kind"] != kind:
        if overwrite:
            return True
        raise MnistlabError(f"{path}: holds a {found['kind']} of mnistlab's, not a {kind}; --overwrite replaces it")
    if config is not None and found.get("config") not in (None, config):
        if overwrite:
            return True
        raise MnistlabError(
            f"{path}: holds a {kind} of another config; --overwrite replaces it, or choose another --out"
        )
    return False


def prepare(path: Path, kind: str, config: str | None = None, overwrite: bool = False) -> None:
    """Make `path` an output folder of this kind: checked (see `check_target`), created, marked.

    A folder of ours that `overwrite` replaces is removed first: every file in it is mnistlab's.
    """
    path = Path(path)
    if check_target(path, kind, config, overwrite):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / MARKER, marker(kind, config))


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """Hold the lock of output folder `path` for the block; raises FolderInUse if another process holds it."""
    path = Path(path)
    lock_file = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, lock_file)
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot take its lock {lock_file.name} ({exc.strerror or exc})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv[:3])}, since {time.strftime('%H:%M:%S')})".encode())
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path, lock_file: Path) -> int:
    """The descriptor of `lock_file`, locked by this process; FolderInUse if another holds it."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUse(f"{path}: in use by {holder}; wait for it to finish, or choose another --out") from None
        # The file may have been removed by its last holder between our open and our lock: then the lock
        # guards nothing that others can see, and we take it again on the file now at that path.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
