"""The Python API as its documentation page shows it: the example runs as it stands."""

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_docs_python_example_runs(tmp_path, mnist_dir):
    section = PAGE.read_text()
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    environment = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "2 True True" in lines and "{1: 2, 2: 2}" in lines  # two seeds; one epoch of each phase each
    label = lines[lines.index("{1: 2, 2: 2}") + 1]
    assert label in list("0123456789")  # the drawn digit, read
    assert (tmp_path / "runs" / "report.html").is_file() and (tmp_path / "runs" / "provided" / "seed-1").is_dir()
