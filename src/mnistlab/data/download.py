"""Fetch a data file from its mirrors, keeping it only once its checksum is right.

Each mirror is tried in turn. The bytes stream into a temporary file beside the target, with a
progress bar on a terminal, and are renamed into place only after the SHA-256 of the decompressed
content matches the published one: a cut connection, a proxy's error page or a stale mirror can
never leave a file that later looks valid.
"""

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mnistlab.data.idx import read_bytes
from mnistlab.errors import DataError
from mnistlab.files import atomic_path

TIMEOUT_S = 30
_CHUNK = 1 << 16


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(file_name: str, mirrors: tuple[str, ...], dest: Path, sha256: str, progress: bool = True) -> None:
    """Download `file_name` from the first mirror that serves it with the right content, into `dest`."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file_name
        try:
            with atomic_path(dest) as tmp:
                _stream(url, tmp, progress)
                digest = sha256_hex(read_bytes(tmp))
                if digest != sha256:
                    raise DataError(f"{url}: SHA-256 of decompressed bytes is {digest}, expected {sha256}")
            return
        except (OSError, http.client.HTTPException, DataError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
    raise DataError(f"could not download {file_name}; " + "; ".join(failures))


def _stream(url: str, path: Path, progress: bool) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=url.rsplit("/", 1)[-1],
            disable=not progress or None,
            leave=False,
        ) as bar:
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DataError(f"{url}: connection closed after {received} of {total} bytes")


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} bytes of a chunk"  # chunked transfer
    if isinstance(exc, DataError):
        return str(exc).split(": ", 1)[-1]
    return str(exc) or type(exc).__name__
