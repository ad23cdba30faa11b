"""MNIST-format data: the idx file format, the catalogued data sets, downloads, and the lab's splits.

The catalog (names, checksums, splits) loads without torch; the loader (`dataset`) on first use of its names.
"""

from mnistlab.data.catalog import CATALOG, FILES, SPLITS, Catalogued, size_label

_DATASET = (
    "ENV_VAR",
    "Dataset",
    "PackedDataset",
    "Splits",
    "UnverifiedDataWarning",
    "cache_dir",
    "load",
    "locate",
)
__all__ = ["CATALOG", "FILES", "SPLITS", "Catalogued", "size_label", *_DATASET]


def __getattr__(name: str):
    if name in _DATASET:
        from mnistlab.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'mnistlab.data' has no attribute {name!r}")
