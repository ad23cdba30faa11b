"""What the tests build their inputs with: idx files written as MNIST's are, and the naive resize that a
draw-a-digit demo does, which the digit reader is measured against."""

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from mnistlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from mnistlab.files import write_atomic
from mnistlab.serving.images import FRAME


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 images (n, rows, cols) or labels (n,) as idx, gzip-compressed when path ends in .gz.

    The file appears whole or not at all: it is written beside its target and renamed into place.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}.get(array.ndim)
    if magic is None:
        raise ValueError(f"idx arrays are (n, rows, cols) images or (n,) labels, not shape {array.shape}")
    content = struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        content = gzip.compress(content, compresslevel=6, mtime=0)
    write_atomic(path, content)


def naive(grey: np.ndarray) -> np.ndarray:
    """What a demo that skips MNIST's making does: resize the whole picture to 28x28. For comparison only."""
    image = Image.fromarray((grey * 255).astype(np.uint8)).resize((FRAME, FRAME), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return 1.0 - pixels if np.median(pixels) > 0.5 else pixels
