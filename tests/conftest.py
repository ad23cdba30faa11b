"""Shared fixtures. Tests that need the real data sets read them from ../shared/data beside the
checkout (or $MNISTLAB_DATA for MNIST); outside CI they skip when the data is absent, in CI
(CI=true) they fail, so a misconfigured CI cannot pass by skipping."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from mnistlab import data

from .helpers import write_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _real_data_dir(name: str) -> Path:
    env = os.environ.get(data.ENV_VAR)
    candidates = [Path(env).resolve()] if env and name == "mnist" else []  # tests run commands elsewhere
    candidates.append(SHARED_DATA / name)
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    message = f"real {name} data not found in {', '.join(map(str, candidates))}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """A user cache of the session's own ($XDG_CACHE_HOME, which the commands the tests start inherit):
    the tests never touch the user's, and a step one test compiled loads in the next (stored_steps)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _real_data_dir("mnist")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return _real_data_dir("fashion-mnist")


@pytest.fixture
def data_env(mnist_dir, monkeypatch):
    """The real MNIST where the CLI looks for it."""
    monkeypatch.setenv(data.ENV_VAR, str(mnist_dir))


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> data.Dataset:
    return data.load("mnist", mnist_dir, progress=False)


def make_idx_folder(folder: Path, n_train=60, n_test=20, shape=(28, 28), gz=True, seed=0) -> dict:
    """Write a small random idx data set in MNIST's file layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), array)
    return arrays


@pytest.fixture(scope="session")
def small_mnist(mnist) -> data.Dataset:
    """The first 6,000 training images (the last 1,000 of them for validation) and 1,000 test images."""
    return dataclasses.replace(
        mnist,
        train_images=mnist.train_images[:6000],
        train_labels=mnist.train_labels[:6000],
        test_images=mnist.test_images[:1000],
        test_labels=mnist.test_labels[:1000],
        validation_size=1000,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist_dir) -> Path:
    """A finished run folder of the provided model, one epoch at batch 1000, eagerly: seconds to train.
    Tests that change it work on a copy."""
    from mnistlab import api

    out = tmp_path_factory.mktemp("tiny") / "provided"
    api.run("provided", epochs=1, set=["train.batch_size=1000"], compile=False, data_dir=mnist_dir, out=out)
    return out


# Tests run with fixed settings, not a measured calibration: the same plan on every machine, and no
# minute of measuring in the first test that trains. tests/test_calibration.py measures on purpose.
os.environ.setdefault("MNISTLAB_CALIBRATION", "off")
