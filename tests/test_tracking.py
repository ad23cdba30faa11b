"""Runs in MLflow: a real tracking server (SQLite store, artifacts served by it) started on 127.0.0.1 by
the test, runs read back through MLflow's client, and an unreachable server refused before training."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mnistlab.cli import main

FAST = ["--no-compile", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow.log", "w")  # noqa: SIM115 (closed below, after the server)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # at most a minute
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
        else:
            pytest.fail("the MLflow server did not answer within a minute")
        yield address
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "l2.toml"
    path.write_text(
        'base = "provided"\nset = ["train.epochs=2", "train.batch_size=1000"]\n'
        '[[axis]]\nkey = "model.l2"\nvalues = [0.0, 1e-3]\n'
    )
    return path


def test_a_sweep_is_a_parent_run_with_its_runs_as_children(tmp_path, data_env, tracking_server, capsys):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "sweep"
    command = ["sweep", str(_sweep_file(tmp_path)), "--seeds", "2", "--out", str(out), *FAST]
    assert main([*command, "--track", tracking_server]) == 0

    client = MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name("mnistlab")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("mnistlab.kind") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 4  # 2 points x 2 seeds
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert {"report/report.html", "sweep.csv"} <= _artifacts(client, parent.info.run_id)

    for run in children:
        folder = Path(run.data.tags["mnistlab.folder"])
        metrics = json.loads((folder / "metrics.json").read_text())
        assert run.data.params["model.l2"] in ("0.0", "0.001") and run.data.params["train.epochs"] == "2"
        assert run.data.tags["mnistlab.seed"] == str(metrics["seed"]) and run.data.tags["mnistlab.preset"]
        environment = json.loads((folder / "environment.json").read_text())
        assert run.data.tags["mnistlab.device"] == "cpu" and run.data.tags["mnistlab.engine"] == environment["engine"]
        assert run.data.tags["mnistlab.stack_size"] == str(environment["stack_size"])
        assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
        with open(folder / "history.csv") as f:
            phase1 = [row for row in csv.DictReader(f) if row["phase"] == "1"]
        logged = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, round(m.value, 4)) for m in sorted(logged, key=lambda m: m.step)] == [
            (int(row["epoch"]), round(float(row["eval_loss"]), 4)) for row in phase1
        ]
        assert len(client.get_metric_history(run.info.run_id, "retrain_test_accuracy")) == 2
        assert {"validation_curves.png", "config.toml", "metrics.json"} <= _artifacts(client, run.info.run_id)

    assert main([*command, "--track", tracking_server]) == 0  # nothing trains again, nothing is logged twice
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)
    assert "View run" not in capsys.readouterr().out  # mnistlab's own line, not MLflow's per run


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_an_unreachable_server_is_one_line_before_any_training(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["run", "provided", "--epochs", "1", "--out", str(out), "--track", address, *FAST]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"mnistlab: error: --track {address}: no MLflow tracking server answers there")
    assert "\n" not in error and "Traceback" not in error
    assert not out.exists()
