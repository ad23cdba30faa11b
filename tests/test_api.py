"""The Python API as the README shows it: its example runs as it stands."""

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_readmes_python_example_runs(tmp_path, mnist_dir):
    section = PAGE.read_text()
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    environment = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["0", "1"] and all(line.endswith(" 50000") for line in lines[:2])
    assert 0.8 < float(lines[0].split()[1]) < 1
    assert "ConfusedPair(" in lines[3]
    assert (tmp_path / "runs" / "report.html").is_file() and (tmp_path / "runs" / "provided" / "seed-1").is_dir()
