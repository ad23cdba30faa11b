"""Test digits made to look like photos and scans of handwriting, for the robustness check: the digit
reader must read these as well as it reads MNIST itself (benchmarks/serving.py, tests/test_serving.py)."""

import io

import numpy as np
from PIL import Image
from scipy import ndimage


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """One 28x28 MNIST digit (float in [0, 1], light ink on black) as a JPEG of a page: scaled up, dark
    ink on light paper, off-centre, sometimes thicker strokes, slightly rotated, noisy, compressed."""
    ink = digit.astype(np.float32)
    if rng.random() < 0.3:
        ink = ndimage.grey_dilation(ink, size=(2, 2))  # a thicker pen
    ink = ndimage.rotate(ink, rng.uniform(-12, 12), reshape=True, order=1, mode="constant")
    side = int(rng.integers(160, 360))  # the page
    size = int(side * rng.uniform(0.3, 0.6))  # the digit's frame on it
    scaled = (
        np.asarray(
            Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        )
        / 255.0
    )
    page = np.zeros((side, side), np.float32)
    top, left = (int(rng.integers(0, side - size + 1)) for _ in range(2))
    page[top : top + size, left : left + size] = scaled
    paper, pen = rng.uniform(0.8, 0.97), rng.uniform(0.05, 0.3)
    grey = paper - (paper - pen) * page + rng.normal(0, rng.uniform(0.01, 0.05), page.shape)
    out = io.BytesIO()
    Image.fromarray((np.clip(grey, 0, 1) * 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(30, 85)))
    return out.getvalue()
