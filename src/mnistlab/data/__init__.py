"""MNIST-format data: the idx file format, the catalogued data sets, downloads, and the lab's splits."""

from mnistlab.data.catalog import CATALOG, FILES, Catalogued
from mnistlab.data.dataset import (
    ENV_VAR,
    SPLITS,
    Dataset,
    Splits,
    UnverifiedDataWarning,
    cache_dir,
    load,
    locate,
    size_label,
)

__all__ = [
    "CATALOG",
    "ENV_VAR",
    "FILES",
    "SPLITS",
    "Catalogued",
    "Dataset",
    "Splits",
    "UnverifiedDataWarning",
    "cache_dir",
    "load",
    "locate",
    "size_label",
]
