"""The idx file format of MNIST, read strictly.

An idx file is a big-endian header (magic number, then one uint32 per dimension) followed by the
values as raw uint8. Images are magic 2051 with (n, rows, cols); labels are magic 2049 with (n,).
Files may be gzip-compressed or raw. Every check that fails names the file and what is wrong,
because a silently misread data set poisons every number computed from it.
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mnistlab.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
NUM_CLASSES = 10
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (told by its first bytes, not its name)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def parse_images(data: bytes, name: str) -> np.ndarray:
    """uint8 array (n, rows, cols) from the bytes of an idx3 image file."""
    n, rows, cols = _parse_header(data, name, IMAGES_MAGIC, ndim=3, what="images")
    if rows == 0 or cols == 0:
        raise DataError(f"{name}: images of {rows}x{cols} pixels")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def parse_labels(data: bytes, name: str) -> np.ndarray:
    """uint8 array (n,) from the bytes of an idx1 label file; every label must be a class 0..9."""
    _parse_header(data, name, LABELS_MAGIC, ndim=1, what="labels")
    labels = np.frombuffer(data, np.uint8, offset=8)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{name}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{NUM_CLASSES - 1} ({bad.size} such labels)"
        )
    return labels


def _parse_header(data: bytes, name: str, magic: int, ndim: int, what: str) -> tuple[int, ...]:
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: {len(data)} bytes is too short for an idx header of {what}")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        kinds = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}
        hint = f" (that is an idx file of {kinds[found]})" if found in kinds else ""
        raise DataError(f"{name}: magic number {found}, expected {magic} for {what}{hint}")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise DataError(
            f"{name}: truncated: header promises {' x '.join(map(str, dims))} {what} "
            f"({expected} bytes), file has {len(data)}"
        )
    if len(data) > expected:
        raise DataError(
            f"{name}: {len(data) - expected} unexpected bytes after the {' x '.join(map(str, dims))} {what}"
        )
    return dims
