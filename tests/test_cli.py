import subprocess
import sys

from mnistlab.cli import main

from .conftest import make_idx_folder


def test_data_info_on_real_mnist(mnist_dir, capsys):
    assert main(["data", "info", "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert "checksums  pass" in out
    full = next(line for line in out.splitlines() if line.startswith("full"))
    assert full.split()[1:] == ["60000", "5923", "6742", "5958", "6131", "5842", "5421", "5918", "6265", "5851", "5949"]


def test_data_info_unknown_folder_warns_once(tmp_path, capsys):
    make_idx_folder(tmp_path / "digits")
    assert main(["data", "info", "--data-dir", str(tmp_path / "digits"), "--validation-size", "10"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("mnistlab: warning:") == 1 and "checksums skipped" in captured.err
    validation = next(line for line in captured.out.splitlines() if line.startswith("validation"))
    assert validation.split()[1] == "10"


def test_bad_data_is_one_line_and_nonzero(tmp_path):
    make_idx_folder(tmp_path / "d")
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    result = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", "data", "info", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("mnistlab: error: ") and "t10k-images-idx3-ubyte.gz" in result.stderr
    assert "Traceback" not in result.stderr
