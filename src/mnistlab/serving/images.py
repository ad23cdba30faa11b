"""Any picture of a digit, made into what the model was trained on, the way MNIST itself was made.

MNIST's digits were fitted into a 20x20 box with their aspect ratio kept, anti-aliased, and centred by
their centre of mass in a 28x28 frame, light ink on black. Skipping that is why draw-a-digit demos read
small or off-centre digits as "1" and fail on dark ink on light paper. `to_mnist` does each step; it
serves the command line, the server and the tests alike. No torch here: an ONNX predictor runs without it.
"""

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnistlab.errors import MnistlabError
from mnistlab.files import regular_file

MAX_PIXELS = 40_000_000  # a decompression-bomb guard: a photo of 40 megapixels still passes
WORKING_SIDE = 1024  # pixels: larger pictures are scaled down first (a 20x20 digit needs no more)
FRAME, BOX = 28, 20
CENTRE = 14.0  # MNIST's mean centre of mass, row and column (measured: 13.99, 14.00)
MIN_INK = 0.15  # ink must stand this far (of the full range) above the background, or there is no digit
INK_FLOOR = 0.3  # chosen on 1,000 synthetic photos: 0.1 keeps noise (78.6%), 0.2 96.7%, 0.3 97.1%


class ImageError(MnistlabError):
    """A file or upload that is not an image mnistlab can read."""


def read(source: Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file or its bytes (PNG, JPEG, BMP, GIF, WebP, ...) as greyscale float32 in [0, 1], upright
    as its EXIF orientation says (a phone photo), and with a transparent background made paper: white
    behind dark ink, black behind light ink. A picture over `max_pixels` is refused before it is
    decoded; one wider or taller than WORKING_SIDE is scaled down to it: a digit needs no more."""
    name = name or str(source)
    if not isinstance(source, bytes):
        if not Path(source).exists():
            raise ImageError(f"{name}: no such file")
        if Path(source).is_dir():
            raise ImageError(f"{name}: a folder, not an image")
        if not regular_file(source):
            raise ImageError(f"{name}: not a regular file (a pipe or a device?); give an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,}")
            image.seek(0)  # the first frame of an animation
            image = ImageOps.exif_transpose(image)
            image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
            grey = _on_paper(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: not an image that Pillow can read ({type(exc).__name__})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: cannot read the image ({exc})") from None
    return grey


def _on_paper(image: Image.Image) -> np.ndarray:
    """Greyscale in [0, 1], a transparent background filled with the paper the ink stands out on: the
    mean of the opaque pixels says whether the ink is dark or light. (Pillow's plain conversion drops
    the alpha, so black ink on a transparent PNG, whose hidden colour is black, read as no digit.)"""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    grey, alpha = (np.asarray(band, dtype=np.float32) / 255.0 for band in image.convert("LA").split())
    opaque = alpha > 0.5
    if not opaque.any():
        return np.zeros_like(grey)
    paper = 1.0 if grey[opaque].mean() < 0.5 else 0.0
    return grey * alpha + paper * (1 - alpha)


@dataclass(frozen=True)
class Prepared:
    """An image as the model sees it, or None where it holds no ink."""

    pixels: np.ndarray | None  # (28, 28) float32 in [0, 1], light ink on black, as in training
    inverted: bool  # the picture had dark ink on a light background


def to_mnist(grey: np.ndarray) -> Prepared:
    """Greyscale [0, 1] of any size to a 28x28 MNIST digit (see the module's docstring)."""
    inverted = bool(np.median(_border(grey)) > 0.5)
    ink = (1.0 - grey) if inverted else grey.astype(np.float32)
    if min(ink.shape) > 2 * FRAME:
        ink = ndimage.median_filter(ink, size=3)  # a photo's sensor noise and JPEG speckle
    ink = np.clip(ink - np.median(_border(ink)), 0, None)
    if ink.max() < MIN_INK:
        return Prepared(None, inverted)
    # Full ink is what most of the strokes reach; what stays below a third of it is paper, noise, shadow.
    ink = np.clip(ink / np.percentile(ink[ink > 0.5 * ink.max()], 90), 0, 1)
    ink[ink < INK_FLOOR] = 0
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # The longest side to 20 pixels, aspect kept, anti-aliased.
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    box = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    box = np.clip(box, 0, 1)
    # Into 28x28, then moved by whole pixels so that the centre of mass falls where MNIST's does: (14, 14).
    frame = np.zeros((FRAME, FRAME), np.float32)
    top, left = (FRAME - box.shape[0]) // 2, (FRAME - box.shape[1]) // 2
    frame[top : top + box.shape[0], left : left + box.shape[1]] = box
    centre_row, centre_col = ndimage.center_of_mass(frame)
    frame = ndimage.shift(frame, (round(CENTRE - centre_row), round(CENTRE - centre_col)), order=0, mode="constant")
    return Prepared(frame / max(frame.max(), 1e-6), inverted)


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
