import gzip
import struct

import numpy as np
import pytest

from mnistlab.data.idx import parse_images, parse_labels, read_bytes
from mnistlab.errors import DataError

from .helpers import write_idx


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    write_idx(tmp_path / f"i{suffix}", images)
    write_idx(tmp_path / f"l{suffix}", labels)
    raw = (tmp_path / f"i{suffix}").read_bytes()
    assert raw.startswith(b"\x1f\x8b") == (suffix == ".gz")
    np.testing.assert_array_equal(parse_images(read_bytes(tmp_path / f"i{suffix}"), "i"), images)
    np.testing.assert_array_equal(parse_labels(read_bytes(tmp_path / f"l{suffix}"), "l"), labels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _images(n=3, rows=28, cols=28, magic=2051, extra=b"", cut=0):
    body = bytes(n * rows * cols)
    data = struct.pack(">iIII", magic, n, rows, cols) + body + extra
    return data[: len(data) - cut] if cut else data


def _labels(values, magic=2049, count=None):
    return struct.pack(">iI", magic, len(values) if count is None else count) + bytes(values)


@pytest.mark.parametrize(
    ("data", "parse", "message"),
    [
        (
            _images(magic=2049),
            parse_images,
            "magic number 2049, expected 2051 for images (that is an idx file of labels)",
        ),
        (_images(magic=1234), parse_images, "magic number 1234, expected 2051"),
        (_images(cut=5), parse_images, "truncated: header promises 3 x 28 x 28 images (2368 bytes), file has 2363"),
        (_images(extra=b"\0\0"), parse_images, "2 unexpected bytes after the 3 x 28 x 28 images"),
        (_images(rows=0), parse_images, "images of 0x28 pixels"),
        (b"\0\0\x08", parse_images, "3 bytes is too short for an idx header of images"),
        (_labels([1, 2, 3], count=5), parse_labels, "truncated: header promises 5 labels (13 bytes), file has 11"),
        (_labels([1, 12, 3, 10]), parse_labels, "label 12 at index 1 is outside 0..9 (2 such labels)"),
        (_labels([1], magic=2051), parse_labels, "expected 2049 for labels (that is an idx file of images)"),
    ],
)
def test_malformed_files_give_their_own_error(data, parse, message):
    with pytest.raises(DataError) as err:
        parse(data, "bad-file")
    assert str(err.value).startswith("bad-file: ")
    assert message in str(err.value)


def test_corrupt_and_truncated_gzip(tmp_path):
    good = gzip.compress(_images())
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "flipped.gz").write_bytes(good[:12] + bytes([good[12] ^ 0xFF]) + good[13:])
    for name in ("cut.gz", "flipped.gz"):
        with pytest.raises(DataError, match=f"{name}: corrupt or truncated gzip data"):
            read_bytes(tmp_path / name)


def test_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_bytes(tmp_path / "nothing-here")
