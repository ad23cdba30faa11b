import shutil
import warnings

import numpy as np
import pytest
import torch

from mnistlab import data
from mnistlab.data.download import sha256_hex
from mnistlab.data.idx import parse_labels, read_bytes
from mnistlab.errors import DataError

from .conftest import make_idx_folder
from .helpers import write_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_loads_verified_with_published_counts(mnist_dir):
    ds = data.load("mnist", mnist_dir, progress=False)
    assert ds.verified and ds.name == "mnist" and ds.image_shape == (28, 28)
    assert ds.class_counts("full") == MNIST_TRAIN_COUNTS
    assert ds.class_counts("test") == MNIST_TEST_COUNTS
    sizes = {split: len(ds.split(split)[1]) for split in data.SPLITS}
    assert sizes == {"train": 50_000, "validation": 10_000, "full": 60_000, "test": 10_000}
    # The validation split is the tail of the training file, as Keras' validation_split takes it.
    assert torch.equal(ds.split("validation")[0], ds.train_images[50_000:])
    x, y = ds.split("train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (50_000, 784)
    assert x.min() == 0.0 and x.max() == 1.0


def test_real_fashion_mnist_is_identified_and_verified(fashion_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a catalogued data set loads without a warning
        ds = data.load(None, fashion_dir, progress=False)
    assert ds.name == "fashion-mnist" and ds.verified
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.class_counts("full") == [6000] * 10 and ds.class_counts("test") == [1000] * 10


def test_checksum_mismatch_names_file_and_both_digests(tmp_path, mnist_dir):
    folder = tmp_path / "mnist"
    shutil.copytree(mnist_dir, folder)
    labels = parse_labels(read_bytes(folder / "t10k-labels-idx1-ubyte.gz"), "x").copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError) as err:
        data.load("mnist", folder, progress=False)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert data.CATALOG["mnist"].sha256["t10k-labels-idx1-ubyte"] in message
    assert sha256_hex(read_bytes(folder / "t10k-labels-idx1-ubyte.gz")) in message


def test_unknown_data_set_loads_unverified_with_one_warning(tmp_path):
    arrays = make_idx_folder(tmp_path / "mine", gz=False)
    with pytest.warns(data.UnverifiedDataWarning, match="checksums skipped"):
        ds = data.load(None, tmp_path / "mine", validation_size=10, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load(None, tmp_path / "mine", validation_size=10, progress=False)  # said once
    assert not ds.verified and ds.name == "mine"
    pixels = (ds.split("validation")[0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(pixels, arrays["train-images-idx3-ubyte"][50:].reshape(10, -1))
    assert ds.split("train")[1].tolist() == arrays["train-labels-idx1-ubyte"][:50].tolist()


def test_named_data_set_rejects_other_files(tmp_path):
    make_idx_folder(tmp_path / "other")
    with pytest.raises(DataError, match="SHA-256 of decompressed bytes is .*, expected .* \\(published for mnist\\)"):
        data.load("mnist", tmp_path / "other", download=False, progress=False)


def test_image_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(59, np.uint8))
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(DataError, match="has 60 images but .* has 59 labels"):
        data.load(None, tmp_path / "d", validation_size=10, progress=False)


def test_missing_files_and_bad_validation_size(tmp_path):
    make_idx_folder(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        data.load(None, tmp_path / "d")
    make_idx_folder(tmp_path / "e")
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(DataError, match="validation size 60"):
        data.load(None, tmp_path / "e", validation_size=60)


def test_folder_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert data.locate("mnist") == (tmp_path / "cache" / "mnistlab" / "mnist", "the user cache")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.locate("mnist") == (tmp_path / "env", "$MNISTLAB_DATA")
    (tmp_path / "env" / "fashion-mnist").mkdir(parents=True)  # or one folder per data set
    assert data.locate("fashion-mnist") == (tmp_path / "env" / "fashion-mnist", "$MNISTLAB_DATA")
    assert data.locate("mnist", tmp_path / "flag") == (tmp_path / "flag", "--data-dir")
