"""Nothing lost: mnistlab never replaces what it did not write, one process writes a folder at a time,
memory is checked before training, and a full disk or an interrupt leaves no partial run."""

import errno
import os
import signal
import subprocess
import sys
import time

from mnistlab.cli import main
from mnistlab.studies import write as run_folder
from mnistlab.studies.folder import SeedRun

FAST = ["--epochs", "1", "--set", "train.batch_size=1000", "--no-compile", "--quiet"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnistlab: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_users_folder_is_never_replaced(tmp_path, data_env, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "notes.txt").write_text("three years of work")
    assert main(["run", "provided", *FAST, "--out", str(mine)]) == 1
    assert "holds files that mnistlab did not write (notes.txt)" in _one_line_error(capsys)
    assert main(["run", "provided", *FAST, "--out", str(mine), "--overwrite"]) == 1  # not even when asked
    assert main(["study", "--presets", "provided", *FAST, "--out", str(mine)]) == 1
    assert main(["run", "provided", *FAST, "--seeds", "2", "--out", str(mine)]) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (
        mine / "notes.txt"
    ).read_text() == "three years of work"


def test_a_file_given_as_out_is_never_replaced(tmp_path, data_env, capsys):
    file = tmp_path / "draft.txt"
    file.write_text("keep me")
    assert main(["run", "provided", *FAST, "--out", str(file)]) == 1
    assert "a file is there" in _one_line_error(capsys)
    assert file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["draft.txt"]


def test_a_run_of_another_config_is_replaced_only_when_asked(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    assert main(["run", "provided", *FAST, "--out", str(out)]) == 0
    first = SeedRun.load(out).metrics
    assert main(["run", "provided", *FAST, "--out", str(out)]) == 0  # the same config: trained again
    assert SeedRun.load(out).metrics.scores == first.scores
    assert main(["run", "provided", *FAST, "--seed", "3", "--out", str(out)]) == 1
    assert "of another config" in _one_line_error(capsys) and SeedRun.load(out).seed == 0
    assert main(["run", "provided", *FAST, "--seed", "3", "--out", str(out), "--overwrite"]) == 0
    assert SeedRun.load(out).seed == 3


def test_a_study_refuses_finished_runs_of_another_config(tmp_path, data_env, capsys):
    args = ["study", "--presets", "provided", *FAST, "--out", str(tmp_path / "s")]
    assert main(args) == 0
    assert main([*args, "--set", "train.learning_rate=0.01"]) == 1
    assert "s/provided: holds a run of another config" in _one_line_error(capsys)
    assert main([*args, "--set", "train.learning_rate=0.01", "--overwrite"]) == 0
    assert SeedRun.load(tmp_path / "s" / "provided").folder.read_config()["train"]["learning_rate"] == 0.01


def test_report_never_replaces_a_file_it_did_not_write(tmp_path, data_env, capsys):
    assert main(["run", "provided", *FAST, "--out", str(tmp_path / "run")]) == 0
    page = tmp_path / "index.html"
    page.write_text("<html>my homepage</html>")
    assert main(["report", str(tmp_path / "run"), "--out", str(page)]) == 1
    assert "index.html: exists and is not a report of mnistlab's" in _one_line_error(capsys)
    assert page.read_text() == "<html>my homepage</html>" and not (tmp_path / "index.md").exists()
    report = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "--out", str(report)]) == 0
    assert main(["report", str(tmp_path / "run"), "--out", str(report)]) == 0  # its own report: replaced


def test_a_model_too_large_for_memory_is_refused_before_training(tmp_path, data_env, capsys):
    out = tmp_path / "huge"
    assert main(["run", "provided", *FAST, "--set", "model.hidden=[100000000]", "--out", str(out)]) == 1
    err = _one_line_error(capsys)
    assert "1 model of 79,500,000,010 parameters needs about " in err and "TB to train on" in err
    assert "is available; make the model smaller" in err
    assert not out.exists()


def test_a_full_disk_leaves_no_partial_run(tmp_path, data_env, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.weights, "save", disk_full)  # the run's largest file
    assert main(["run", "provided", *FAST, "--out", str(tmp_path / "run")]) == 1
    assert "run: could not write the run (No space left on device)" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def _mnistlab(*args: str, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnistlab.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_processes_on_one_study_folder(tmp_path, mnist_dir):
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    out = tmp_path / "s"
    # Batch 50 keeps the first training for seconds after it takes the lock, longer than the second
    # takes to start (at batch 1000, half a second longer on an AMD EPYC).
    args = ["study", "--presets", "provided", "--epochs", "3", "--set", "train.batch_size=50", "--no-compile"]
    first = _mnistlab(*args, "--out", str(out), env=env)
    try:
        _wait_for(lambda: (tmp_path / ".s.lock").exists(), 60)
        second = subprocess.run(
            [sys.executable, "-m", "mnistlab.cli", *args, "--out", str(out)], env=env, capture_output=True, text=True
        )
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"in use by process {first.pid} (" in second.stderr and second.stderr.count("\n") == 1
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert SeedRun.load(out / "provided").metrics.epochs == {"phase1": 3, "phase2": 3}
    assert not (tmp_path / ".s.lock").exists()

    # A holder that dies without a word leaves a lock file behind, but no lock: the next one goes ahead.
    killed = _mnistlab(*args, "--set", "train.learning_rate=0.01", "--out", str(tmp_path / "t"), env=env)
    _wait_for(lambda: (tmp_path / ".t.lock").exists(), 60)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert (tmp_path / ".t.lock").exists()
    again = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", *args, "--epochs", "1", "--out", str(tmp_path / "t")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr


def test_sigterm_during_a_study_keeps_finished_runs_and_leaves_no_partial_one(tmp_path, mnist_dir):
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_dir)}
    out = tmp_path / "s"
    # Two architectures: two stacks, trained one after the other in this process (local workers would
    # train them side by side and could finish both before the signal). The costlier final goes first;
    # provided at batch 50 then takes seconds even on the fastest CPU, so the signal lands inside it.
    args = ["study", "--presets", "provided", "final", "--set", "train.batch_size=50", "--no-compile"]
    args += ["--set", "train.epochs=2", "--workers", "1", "--out", str(out)]
    process = _mnistlab(*args, env=env)
    try:
        _wait_for(lambda: (out / "final" / "metrics.json").exists(), 300)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 130
        assert "mnistlab: interrupted" in process.stderr.read()
    finally:
        process.kill()
    finished = [p for p in out.iterdir() if (p / "metrics.json").exists()]
    assert [p.name for p in finished] == ["final"] and SeedRun.load(finished[0]).metrics.epochs["phase2"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["final", "mnistlab.json"]  # nothing half-built
    assert not (tmp_path / ".s.lock").exists()
    # Run again: it resumes, and trains only what is left.
    again = subprocess.run([sys.executable, "-m", "mnistlab.cli", *args], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "1 of 2 runs already finished" in again.stdout
