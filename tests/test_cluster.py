"""Training on a real Dask cluster: a `dask scheduler` and two single-threaded `dask worker` processes on
127.0.0.1, started and stopped here, every wait bounded in time."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from mnistlab.cli import main
from mnistlab.studies.folder import SeedRun
from mnistlab.train.choices import EngineOptions
from mnistlab.train.hardware import cores

DASK = Path(sys.executable).with_name("dask")
# Two seeds of the provided model make two stacks on two workers; eager steps, no compile per worker.
PLAN = ["study", "--presets", "provided", "--seeds", "2", "--epochs", "2", "--no-compile", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _cluster(workers: int = 2):
    """A scheduler and `workers` workers without nannies (a killed worker stays dead), on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # Without a dashboard, a scheduler and a worker still serve HTTP (health, metrics), on every
    # interface unless given an address.
    http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), *http], **quiet)
    procs = {}
    try:
        for index in range(workers):
            name = f"w{index}"
            procs[name] = subprocess.Popen(
                [DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-nanny", *http,
                 "--host", "127.0.0.1", "--death-timeout", "60"],
                **quiet,
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=90)
            assert _listening([scheduler.pid, *(p.pid for p in procs.values())]) == {"127.0.0.1"}
            yield address, client, procs
    finally:
        for proc in [*procs.values(), scheduler]:
            proc.kill()
            proc.wait(timeout=30)


def _listening(pids: list[int]) -> set[str]:
    """The addresses these processes listen on (TCP, IPv4 and IPv6)."""
    return {
        conn.laddr.ip
        for pid in pids
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def test_local_worker_processes_listen_on_loopback_only():
    from mnistlab.studies.executors import executor

    with executor(None, 2, progress=False, log=lambda line: None) as local:
        assert local.workers == 2
        processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
        assert _listening([p.pid for p in processes]) == {"127.0.0.1"}


def _metrics(folder: Path) -> dict:
    """Each seed's scores (not its wall time), by seed folder."""
    return {p.parent.name: SeedRun.load(p.parent).metrics.scores for p in sorted(folder.rglob("metrics.json"))}


def _threads(folder: Path) -> set[int]:
    """The threads each seed's run trained with."""
    return {SeedRun.load(p.parent).folder.read_environment()["threads"] for p in folder.rglob("metrics.json")}


def _busy(client) -> list[str]:
    """The workers training a stack now."""
    return [address for address, keys in client.processing().items() if keys]


def _drive_and_kill(plan: list[str], address: str, client, procs: dict, out: Path, moment) -> None:
    """Run the plan from another process, kill -9 the worker that `moment(client)` names when it names
    one, and see the driver finish."""
    driver = subprocess.Popen([sys.executable, "-m", "mnistlab.cli", *plan, "--cluster", address, "--out", str(out)])
    killed = None
    deadline = time.monotonic() + 120
    while not killed and time.monotonic() < deadline and driver.poll() is None:
        if worker := moment(client):
            killed = client.scheduler_info(n_workers=-1)["workers"][worker]["name"]
            os.kill(procs[killed].pid, signal.SIGKILL)
        time.sleep(0.1)
    assert driver.wait(timeout=300) == 0
    assert killed, "the moment to kill a worker never came"
    assert procs[killed].wait(timeout=10) == -signal.SIGKILL
    assert not list(out.rglob(".*.building"))


def _a_second_into_a_stack(client) -> str | None:
    if busy := _busy(client):
        time.sleep(1.0)
        return busy[0]
    return None


def test_a_study_runs_on_a_cluster_and_survives_a_killed_worker(tmp_path, data_env):
    with _cluster() as (address, client, procs):
        assert main([*PLAN, "--cluster", address, "--out", str(tmp_path / "calm")]) == 0
        calm = _metrics(tmp_path / "calm")
        assert sorted(calm) == ["seed-0", "seed-1"]
        assert _threads(tmp_path / "calm") == {max(1, cores() // 2)}  # each worker's share, two workers here

        # The same plan again, driven from another process; kill -9 the first worker seen training.
        _drive_and_kill(PLAN, address, client, procs, tmp_path / "hit", _a_second_into_a_stack)
        # Every run once, with the numbers of the undisturbed run: its stack was trained again elsewhere,
        # with the threads of the plan, not both cores of a worker now alone (other bits on an Intel Xeon).
        assert _metrics(tmp_path / "hit") == calm
        assert _threads(tmp_path / "hit") == {max(1, cores() // 2)}


# Two stacks of unequal length (two architectures): one worker is left idle while the other trains.
UNEQUAL = ["study", "--presets", "provided", "powerful", "--epochs", "8", "--set", "train.batch_size=256",
           "--no-compile", "--quiet"]  # fmt: skip


def _holding_the_last_copy(client) -> str | None:
    """The worker still training, once it holds the only copy of the data set the driver sent (the other
    idle, its copy dropped)."""
    holders = {w for key, workers in client.who_has().items() if "PackedDataset" in str(key) for w in workers}
    busy = _busy(client)
    return busy[0] if len(busy) == 1 and holders == set(busy) else None


def test_a_worker_killed_with_the_last_copy_of_the_data_loses_nothing(tmp_path, data_env):
    # Once a worker has nothing left to train, Dask drops its copy of the data set, so the worker still
    # training holds the only one, and its death takes the data set along: the driver sends it again.
    with _cluster() as (address, client, procs):
        assert main([*UNEQUAL, "--cluster", address, "--out", str(tmp_path / "calm")]) == 0
        calm = _metrics(tmp_path / "calm")
        assert sorted(calm) == ["powerful", "provided"]
        _drive_and_kill(UNEQUAL, address, client, procs, tmp_path / "hit", _holding_the_last_copy)
        assert _metrics(tmp_path / "hit") == calm


def test_a_scheduler_that_cannot_be_reached_is_one_line(tmp_path, data_env, capsys, monkeypatch):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MNISTLAB_CLUSTER", address)  # as --cluster would give it
    assert main([*PLAN, "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mnistlab: error: cannot reach the Dask scheduler at {address}")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("workers", [0, -2])
def test_workers_must_be_positive(tmp_path, data_env, capsys, workers):
    assert main(["run", "provided", "--workers", str(workers), "--out", str(tmp_path / "r")]) == 1
    assert "workers must be a whole number, at least 1" in capsys.readouterr().err


def _profiler_running_while_training_and_after() -> tuple[bool, bool]:
    from distributed import get_worker

    from mnistlab.studies.executors import _without_worker_profiler

    sampling = get_worker().periodic_callbacks["profile"]
    with _without_worker_profiler():
        time.sleep(0.5)  # the pause is scheduled on the worker's event loop
        during = sampling.is_running()
    time.sleep(0.5)
    return during, sampling.is_running()


def test_a_worker_samples_no_stacks_while_it_trains():
    from distributed import Client, LocalCluster

    # In this process over inproc://: nothing listens.
    local = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with local, Client(local) as client:
        assert client.submit(_profiler_running_while_training_and_after).result(timeout=30) == (False, True)


_SPANS = []  # (label, start, end, worker) of each stack _sleep_for_label trained


def _sleep_for_label(task, data, progress=False):
    """A stand-in for training (Dask copies what it is sent, so it notes into this module's list): a
    stack sleeps its label's seconds."""
    from distributed import get_worker

    start = time.monotonic()
    time.sleep(float(task.label))
    _SPANS.append((task.label, start, time.monotonic(), get_worker().name))
    return task.label


class _Bytes:
    def pack(self):
        return b"data"


def test_stacks_go_to_the_first_free_worker_in_the_plans_order(monkeypatch):
    from dataclasses import replace

    from distributed import Client, LocalCluster

    from mnistlab.spec import Architecture
    from mnistlab.studies import executors

    _SPANS.clear()
    monkeypatch.setattr(executors, "train_stack", _sleep_for_label)
    engine = EngineOptions("cpu", "fp32", compile=False)
    base = executors.StackTask(Architecture(784, (8,)), (), 32, ("mnist", 0), engine, 1, "")
    seconds = ["0.8", "0.3", "0.6", "0.2", "0.1"]  # the plan's order: the third should follow the second
    tasks = [replace(base, label=s) for s in seconds]
    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    with local, Client(local) as client:
        results = [outcome for _, outcome in executors.OnDask(client).run(tasks, {("mnist", 0): _Bytes()})]
    assert sorted(results) == sorted(seconds)
    spans = sorted(_SPANS, key=lambda span: span[1])
    assert [label for label, *_ in spans] == seconds  # started in the plan's order
    for label, start, _, _ in spans:  # never more stacks at once than worker threads
        assert sum(s <= start < e for _, s, e, _ in spans) <= 2, label
    where = {label: worker for label, _, _, worker in spans}
    assert where["0.6"] == where["0.3"] != where["0.8"]  # the first worker free took the next stack
