"""Progress wherever training runs: one live bar for a plan on local workers, fed by Dask events as each
stack's epochs end; plain lines when the output is not a terminal."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

STUDY = ["study", "--presets", "provided", "final", "--epochs", "3", "--set", "train.batch_size=200", "--no-compile"]


def _in_a_terminal(args: list[str], env: dict, seconds: float = 300) -> str:
    """What a command prints to a pseudo-terminal of 120 columns, both streams, until it exits."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistlab.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    output, deadline = b"", time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0, output.decode(errors="replace")[-2000:]
    finally:
        process.kill()
        os.close(master)
    return output.decode(errors="replace")


def test_a_study_on_two_local_workers_shows_one_bar_that_advances_before_the_first_stack_ends(tmp_path, mnist_dir):
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    text = _in_a_terminal([*STUDY, "--workers", "2", "--out", str(tmp_path / "s")], env)
    assert "training in 2 local worker processes" in text
    first_run = text.index("test accuracy")
    counts = [(int(m[1]), int(m[2])) for m in re.finditer(r"training:\s+\d+%\|[^|]*\| (\d+)/(\d+) ", text)]
    before = [done for done, _ in counts if text.index(f"| {done}/") < first_run]
    assert len(set(before)) >= 2 and max(before) > 0, text[:3000]
    assert counts[-1] == (12, 12)  # 2 models x 3 epochs x 2 phases
    assert "runs 2/2" in text and text.count("test accuracy") == 2


def test_without_a_terminal_there_is_no_bar_and_a_line_per_stack_and_per_run(tmp_path, mnist_dir):
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", *STUDY, "--workers", "2", "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "training:" not in done.stderr + done.stdout and "\r" not in done.stderr + done.stdout
    lines = done.stdout.splitlines()
    assert sum(line.startswith("training 1 in lockstep") for line in lines) == 2
    assert sum(line.endswith(("provided: test accuracy", "final: test accuracy")) or "test accuracy" in line
               for line in lines) == 2  # fmt: skip
