"""MNIST-format data sets: where the files are, whether they are the published ones, and the splits.

Files are looked for, in order, in `data_dir`, in $MNISTLAB_DATA, then in a per-user cache folder.
A named data set whose files are missing there is downloaded from its public mirrors. Named data sets
are verified against the published SHA-256 of their decompressed bytes; any other idx data set in a
folder works too, unverified, with a warning.

The splits follow the lab report's protocol (Keras' `validation_split`): `train` is the first
60,000 - validation_size training images, `validation` the last validation_size, `full` all of them,
`test` the 10,000 test images. Images come out as float32 in [0, 1] of shape (n, rows*cols), labels
as int64, all in memory: the whole data set is 220 MB as float32 and every later stage wants it so.
"""

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mnistlab.data.catalog import CATALOG, FILES, SPLITS, Catalogued, size_label  # noqa: F401 (re-exported)
from mnistlab.data.download import fetch, sha256_hex
from mnistlab.data.idx import parse_images, parse_labels, read_bytes
from mnistlab.errors import DataError

ENV_VAR = "MNISTLAB_DATA"


@dataclass(frozen=True)
class Splits:
    """The four splits' (images, labels) on one device, as training takes them."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    full: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


@dataclass
class Dataset:
    """The four files of an MNIST-format data set, loaded and checked."""

    name: str  # a catalog name, or the folder's name for an unnamed data set
    classes: tuple[str, ...]
    folder: Path
    folder_origin: str  # how the folder was chosen: --data-dir, $MNISTLAB_DATA or the cache
    files: dict[str, Path]  # role -> the file read
    verified: bool  # checksums matched the published ones
    image_shape: tuple[int, int]
    train_images: torch.Tensor = field(repr=False)  # (60000, rows*cols) float32 in [0, 1]
    train_labels: torch.Tensor = field(repr=False)  # (60000,) int64
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    validation_size: int = 10_000

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `train`, `validation`, `full` or `test`; views, never copies."""
        n_train = len(self.train_labels) - self.validation_size
        if name == "train":
            return self.train_images[:n_train], self.train_labels[:n_train]
        if name == "validation":
            return self.train_images[n_train:], self.train_labels[n_train:]
        if name == "full":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}")

    def split_sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)[1]) for name in SPLITS}

    def on(self, device: torch.device) -> Splits:
        """Every split, moved to `device` once."""
        return Splits(*(tuple(t.to(device) for t in self.split(name)) for name in SPLITS))

    def class_counts(self, split: str) -> list[int]:
        return torch.bincount(self.split(split)[1], minlength=len(self.classes)).tolist()

    def pack(self) -> "PackedDataset":
        """The data set as it travels to a worker process or machine: bytes, a quarter of the floats."""
        arrays = tuple(
            (t * 255).round().to(torch.uint8).numpy() if t.is_floating_point() else t.to(torch.uint8).numpy()
            for t in (self.train_images, self.train_labels, self.test_images, self.test_labels)
        )
        return PackedDataset(replace(self, **dict.fromkeys(_TENSORS, torch.empty(0))), arrays, _sha256(arrays))


_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class PackedDataset:
    """A data set in transit: its description, its images and labels as uint8 arrays, and their SHA-256,
    which `unpack` checks where the data is used. Images are bytes over 255 on both sides, so the floats
    a worker trains on are those the driver loaded, bit for bit."""

    described: Dataset  # the data set without its tensors
    arrays: tuple[np.ndarray, ...]  # train images, train labels, test images, test labels
    sha256: str

    def unpack(self) -> Dataset:
        if _sha256(self.arrays) != self.sha256:
            raise DataError(f"{self.described.name}: the data set sent to this worker fails its checksum")
        train_x, train_y, test_x, test_y = self.arrays
        tensors = (_to_float(train_x), _labels(train_y), _to_float(test_x), _labels(test_y))
        return replace(self.described, **dict(zip(_TENSORS, tensors, strict=True)))


def _sha256(arrays: tuple[np.ndarray, ...]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnistlab"


def locate(name: str | None, data_dir: Path | None = None) -> tuple[Path, str]:
    """The folder to read `name` from and how it was chosen (see the module's docstring)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    if env := os.environ.get(ENV_VAR):
        # $MNISTLAB_DATA holds the four files, or one folder per data set.
        root = Path(env).expanduser()
        nested = root / (name or "mnist")
        return (nested if nested.is_dir() else root), f"${ENV_VAR}"
    return cache_dir() / (name or "mnist"), "the user cache"


def load(
    name: str | None = "mnist",
    data_dir: Path | None = None,
    validation_size: int = 10_000,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Find, fetch if needed, verify and load a data set.

    `name` is a catalog name, or None to identify the files in `data_dir` by their checksums (an
    unknown data set then loads unverified, with a warning).
    """
    if name is not None and name not in CATALOG:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(CATALOG)} (or --data-dir DIR)")
    if name is None and data_dir is None:
        name = "mnist"
    folder, origin = locate(name, data_dir)
    files = _find_files(folder)
    missing = [stem for stem, path in files.items() if path is None]
    if missing:
        if name is None or not download:
            raise DataError(_missing_message(folder, missing))
        _download(CATALOG[name], folder, missing, progress)
        files = _find_files(folder)

    contents = _read_all(files)
    digests = _digests(contents)
    entry, verified = _identify(name, folder, files, digests)
    train_x, train_y = _pair(contents, files, "train")
    test_x, test_y = _pair(contents, files, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{folder}: training images are {'x'.join(map(str, train_x.shape[1:]))}, "
            f"test images {'x'.join(map(str, test_x.shape[1:]))}"
        )
    if not 0 < validation_size < len(train_y):
        raise DataError(f"validation size {validation_size} must be between 1 and {len(train_y) - 1}")
    return Dataset(
        name=entry.name if entry else folder.name,
        classes=entry.classes if entry else tuple(str(c) for c in range(10)),
        folder=folder,
        folder_origin=origin,
        files={role: files[stem] for role, stem in FILES.items()},
        verified=verified,
        image_shape=tuple(train_x.shape[1:]),
        train_images=_to_float(train_x),
        train_labels=_labels(train_y),
        test_images=_to_float(test_x),
        test_labels=_labels(test_y),
        validation_size=validation_size,
    )


def _find_files(folder: Path) -> dict[str, Path | None]:
    found = {}
    for stem in FILES.values():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found[stem] = next((p for p in candidates if p.is_file()), None)
    return found


def _missing_message(folder: Path, missing: list[str]) -> str:
    if not folder.is_dir():
        return f"{folder}: no such folder"
    return f"{folder}: missing {', '.join(missing)} (gzip-compressed .gz or raw)"


def _download(entry: Catalogued, folder: Path, missing: list[str], progress: bool) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stem in missing:
            fetch(f"{stem}.gz", entry.mirrors, folder / f"{stem}.gz", entry.sha256[stem], progress)
    except (DataError, OSError) as exc:
        wanted = ", ".join(f"{stem}.gz" for stem in FILES.values())
        raise DataError(
            f"{entry.name} is not in {folder} and could not be downloaded ({exc}). "
            f"Put {wanted} there, or point --data-dir or ${ENV_VAR} at a folder holding them"
        ) from None


def _read_all(files: dict[str, Path]) -> dict[str, bytes]:
    # zlib and hashlib release the GIL, so four threads decompress and hash the files in parallel.
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        return dict(zip(files, pool.map(read_bytes, files.values()), strict=True))


def _digests(contents: dict[str, bytes]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=len(contents)) as pool:
        return dict(zip(contents, pool.map(sha256_hex, contents.values()), strict=True))


_warned_unverified: set[Path] = set()


def _identify(
    name: str | None, folder: Path, files: dict[str, Path], digests: dict[str, str]
) -> tuple[Catalogued | None, bool]:
    """The catalog entry these files are, and whether they passed its checksums."""
    if name is None:
        # An unnamed folder is the catalog entry that any of its files matches, else unknown.
        name = next((n for n, e in CATALOG.items() if set(digests.values()) & set(e.sha256.values())), None)
        if name is None:
            if folder not in _warned_unverified:
                _warned_unverified.add(folder)
                warnings.warn(
                    f"{folder}: not a catalogued data set; checksums skipped", UnverifiedDataWarning, stacklevel=3
                )
            return None, False
    entry = CATALOG[name]
    for stem, digest in digests.items():
        if digest != entry.sha256[stem]:
            raise DataError(
                f"{files[stem]}: SHA-256 of decompressed bytes is {digest}, "
                f"expected {entry.sha256[stem]} (published for {name})"
            )
    return entry, True


def _pair(contents: dict[str, bytes], files: dict[str, Path], part: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[f"{part}_images"], FILES[f"{part}_labels"]
    images = parse_images(contents[images_stem], str(files[images_stem]))
    labels = parse_labels(contents[labels_stem], str(files[labels_stem]))
    if len(images) != len(labels):
        raise DataError(
            f"{files[images_stem]} has {len(images)} images but {files[labels_stem].name} has {len(labels)} labels"
        )
    return images, labels


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)).div_(255.0)


class UnverifiedDataWarning(UserWarning):
    """Loaded a data set that has no published checksums."""
