"""Where stacks train: in this process, in worker processes on this machine, or on a Dask cluster.

One code path for the three. The plan becomes `StackTask`s; `train_stack` trains one with the lab's
protocol wherever it runs and sends back a `StackOutcome` (each member's `RunResult`: metrics, history,
weights); the driver writes every run folder from it. Local workers are a Dask `LocalCluster`, so a
laptop and a cluster differ only in the address the client connects to.

Dask, rather than a process pool of our own: its scheduler re-runs the task of a worker that dies
(after 3 deaths of one task it gives up, `distributed.scheduler.allowed-failures`), results come back
to the driver without a shared filesystem, and `dask scheduler` / `dask worker ADDRESS` is all a
cluster takes. The driver sends each data set once to every worker (`Client.scatter`), as bytes with
their checksum, which the worker checks before it trains (`data.PackedDataset`).
"""

import collections
import contextlib
import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from functools import partial

import torch

from mnistlab.data import Dataset, PackedDataset
from mnistlab.errors import MnistlabError
from mnistlab.extras import installed, require
from mnistlab.records import RunResult
from mnistlab.spec import Architecture, Hyperparameters, leaders
from mnistlab.studies import pruning
from mnistlab.studies.progress import TOPIC
from mnistlab.studies.pruning import StackPruning
from mnistlab.train import calibration, keras_engine
from mnistlab.train.choices import EngineOptions
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.hardware import cores, machine
from mnistlab.train.progress import ProgressBars, Report
from mnistlab.train.protocol import planned_steps, train_protocol
from mnistlab.version import __version__

CLUSTER_ENV_VAR = "MNISTLAB_CLUSTER"
PlanReport = Callable[[int, int, int], None]  # (stack key, model-epochs done, model-epochs planned)
Trained = tuple["StackTask", "StackOutcome"]


def unheard(key: int, done: int, planned: int) -> None:
    """A plan's progress that nobody follows."""


CONNECT_SECONDS = 10
RESENDS = 3  # times the driver sends a data set again after the cluster lost every copy


@dataclass(frozen=True)
class StackTask:
    """One stack to train: what the members share, each member's numbers, and how to run it. The engine
    is named, not built: a worker resolves `auto` for its own device."""

    arch: Architecture
    members: tuple[Hyperparameters, ...]
    batch_size: int | None
    source: tuple[str, int]  # the data set: (name, validation size)
    engine: EngineOptions
    threads: int  # wherever it trains, so that a stack trained again elsewhere gives the same bits
    label: str
    key: int = 0  # the stack's number in its plan, which its progress counts are told under
    plan: str = ""  # the plan's own token: counts of other plans on a shared cluster are not this one's
    pruning: StackPruning | None = None  # a pruned search's round, and the trial of each member


@dataclass
class StackOutcome:
    """What a trained stack sends back."""

    results: list[RunResult]  # by member
    engine: Engine  # as the worker resolved it
    threads: int
    host: str
    device_name: str
    trained_by: str  # mnistlab's engine, or Keras with its version and backend


def train_stack(
    task: StackTask, data: Dataset | PackedDataset, progress: bool = False, report: Report | None = None
) -> StackOutcome:
    """Train one stack here (in the driver or in a worker) with the lab's protocol. Its epoch counts go
    to `report`, or from a Dask worker to the driver as events (`studies.progress`)."""
    dataset = _unpacked(data) if isinstance(data, PackedDataset) else data
    if report is None and (worker := _worker()) is not None:

        def report(done: int, planned: int) -> None:
            worker.log_event(TOPIC, {"plan": task.plan, "key": task.key, "done": done, "planned": planned})

    _undo_malloc_trim()
    was = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    with _without_worker_profiler():
        try:
            flush_denormals()
            device = Engine.create(task.engine.device).device
            tuned = calibration.known(device)  # this machine's, if it has been measured; never measured here
            bars = ProgressBars(task.label, enabled=progress, report=report)
            if task.engine.engine == "keras":
                engine, trained_by = (
                    Engine(torch.device("cpu"), compile=False, precision="fp32"),
                    keras_engine.version(),
                )
                train = keras_engine.train_protocol
            else:
                engine, trained_by = _engine(task, tuned, dataset.split_sizes()), f"mnistlab {__version__}"
                judge = pruning.judge(task.pruning) if task.pruning else None
                train = partial(train_protocol, engine=engine, judge=judge)
            results = train(task.arch, list(task.members), dataset.on(engine.device), task.batch_size, progress=bars)
        finally:
            torch.set_num_threads(was)
    return StackOutcome(results, engine, task.threads, platform.node(), machine(engine.device)["model"], trained_by)


@contextlib.contextmanager
def _without_worker_profiler() -> Iterator[None]:
    """Pause a Dask worker's statistical profiler while it trains a stack.

    Every 10 ms it samples the Python stack of each running task, holding the GIL; the training loop
    calls a compiled step every 1-3 ms, and lost about a tenth of its speed to it (benchmarks/README.md,
    "What the code's comments measured"). Outside a worker, or with profiling off, nothing to do."""
    worker = _worker()
    sampling = worker and worker.periodic_callbacks.get("profile")
    if sampling is None:
        yield
        return
    worker.loop.add_callback(sampling.stop)  # the callback belongs to the worker's event loop
    try:
        yield
    finally:
        worker.loop.add_callback(sampling.start)


def _engine(task: StackTask, tuned: calibration.Calibration, sizes: dict[str, int]) -> Engine:
    """The engine the task asked for, on this machine: `compile="auto"` compiles where the stack's planned
    steps win the compile back, as this machine's calibration measured it."""
    asked, rows = task.engine, len(set(leaders(list(task.members))))
    compiles = asked.compile
    if compiles == "auto":
        steps, rows_per_step = planned_steps(list(task.members), (sizes["train"], sizes["full"]), task.batch_size)
        compiles = tuned.compiles(len(task.arch.shapes), rows, steps, rows_per_step)
    return Engine.create(asked.device, asked.precision, bool(compiles), tuned.bf16_min_macs, tuned.compile_seconds)


def _worker():
    """The Dask worker running this code, or None."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # no Dask, or not in a worker
        return None


# glibc's mallopt parameters (malloc.h) and the values mnistlab gives them in a Dask worker.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGE_TRIM, LARGEST_MMAP = 64 << 20, 32 << 20  # glibc's largest mmap threshold is 32 MB


def _undo_malloc_trim() -> None:
    """Give glibc back its own heap policy in a Dask worker (and only there).

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so that they return freed memory to
    the system. Setting it also turns off glibc's adaptive mmap threshold: every buffer the compiled
    step allocates is then a fresh mmap, page-faulted in and unmapped again, and training ran at half
    speed (benchmarks/README.md, "What the code's comments measured"). Large thresholds for both keep
    those buffers on the heap. The driver's and a user's own process are never touched."""
    if _worker() is None or "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP)
    libc.mallopt(M_TRIM_THRESHOLD, LARGE_TRIM)


_UNPACKED: dict[str, Dataset] = {}  # per worker process: its data sets, by checksum


def _unpacked(packed: PackedDataset) -> Dataset:
    if packed.sha256 not in _UNPACKED:
        _UNPACKED.clear()  # a worker keeps the last data set only: a sweep over two holds two at most briefly
        _UNPACKED[packed.sha256] = packed.unpack()
    return _UNPACKED[packed.sha256]


class InProcess:
    """Stacks one after the other in this process, with progress bars if asked."""

    workers = 1

    def __init__(self, progress: bool = False, threads_alone: int | None = None):
        self.progress = progress
        self.threads_alone = threads_alone or cores()

    def threads(self, stacks: int) -> int:
        """Threads per stack: every core, or what suits a stack alone (the calibration's `threads_alone`)
        when the plan is just one."""
        return self.threads_alone if stacks == 1 else cores()

    def run(self, tasks: list[StackTask], datasets: dict, report: PlanReport = unheard) -> Iterator[Trained]:
        for task in tasks:
            told = partial(report, task.key)
            yield task, train_stack(task, datasets[task.source], self.progress, told)


class OnDask:
    """Stacks as tasks of a Dask client: a LocalCluster's or a remote scheduler's. Results come back as
    stacks finish, in any order.

    The driver hands out one stack per worker thread and the next, in the plan's order, as each comes
    back: the largest first, each to the first worker free. Submitted all at once, the tasks (which
    depend on the scattered data, so Dask does not queue them) were assigned to workers up front and
    ran in that order: a long stack could wait behind a short one on a worker that had finished first
    (benchmarks/README.md, "What the code's comments measured")."""

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(1, len(self._workers()))

    def threads(self, stacks: int) -> int:
        """Threads per stack, however many the plan has: a worker's share of its machine's cores, its
        cores over the Dask threads of every worker there (`dask worker --nworkers 2 --nthreads 1` on 2
        cores: one each), the smallest share of the cluster as it is now. Every stack of a plan trains
        with it, wherever it lands: a worker that decided when it trained, as it used to, took every
        core for a stack it trained again after the other worker was killed, and the matmuls' sums split
        differently."""
        # Worker address -> its machine's cores; a worker that cannot answer (dying) is left out.
        machine_cores = self.client.run(cores, on_error="ignore")
        workers = self._workers()
        slots = collections.Counter()
        for worker in workers.values():
            slots[worker["host"]] += worker["nthreads"]
        shares = [
            machine_cores[address] // slots[w["host"]] for address, w in workers.items() if address in machine_cores
        ]
        return max(1, min(shares, default=1))

    def _workers(self) -> dict[str, dict]:
        """What the scheduler knows of each worker now, by address (one round trip)."""
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def run(self, tasks: list[StackTask], datasets: dict, report: PlanReport = unheard) -> Iterator[Trained]:
        from distributed import as_completed

        plans = {task.plan for task in tasks}

        def heard(event) -> None:  # on the client's event loop, as each epoch of a stack ends
            _, message = event
            if message.get("plan") in plans:
                report(message["key"], message["done"], message["planned"])

        self.client.subscribe_topic(TOPIC, heard)

        packed = {key: ds.pack() for key, ds in datasets.items()}
        sent = {key: self._send(data) for key, data in packed.items()}
        resent = collections.Counter()
        waiting, running, done = iter(tasks), {}, as_completed()

        def submit(task: StackTask) -> None:
            future = self.client.submit(train_stack, task, sent[task.source], pure=False)
            running[future] = task, sent[task.source]
            done.add(future)

        def submit_more():
            """Submit until every worker thread has a stack (workers that joined count from now)."""
            threads = max(1, sum(w["nthreads"] for w in self._workers().values()))
            while len(running) < threads and (task := next(waiting, None)):
                submit(task)

        submit_more()
        try:
            for future in done:
                task, data = running.pop(future)
                if future.cancelled() and data.cancelled():
                    # The cluster lost the data set: Dask keeps one copy of scattered data that no
                    # waiting task needs (its memory manager drops the others), cannot compute it
                    # again, and forgets it when the worker holding that copy dies, cancelling the
                    # stacks that need it. The driver still has it: send it again, train them again.
                    if data is sent[task.source]:
                        resent[task.source] += 1
                        if resent[task.source] > RESENDS:
                            raise MnistlabError(f"{task.label}: the cluster lost its data set {RESENDS + 1} times")
                        sent[task.source] = self._send(packed[task.source])
                    submit(task)
                    continue
                submit_more()  # before the driver writes this stack's folders: no worker waits on it
                yield task, _result(future, task)
        finally:
            self.client.unsubscribe_topic(TOPIC)
            for future in running:
                future.cancel()

    def _send(self, data: PackedDataset):
        """The data set on every worker (one copy each), as a future of the cluster's."""
        return self.client.scatter(data, broadcast=True, hash=False)


def _result(future, task: StackTask) -> StackOutcome:
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker as exc:
        raise MnistlabError(f"{task.label}: every worker that trained it died ({exc})") from None
    except CancelledError as exc:  # by the scheduler, or another client of it
        raise MnistlabError(f"{task.label}: the cluster cancelled it ({exc})") from None


@contextlib.contextmanager
def executor(
    cluster: str | None,
    workers: int,
    progress: bool,
    log: Callable[[str], None],
    threads_alone: int | None = None,
) -> Iterator[InProcess | OnDask]:
    """The executor for a plan: the Dask cluster at `cluster`; else `workers` local worker processes, when
    more than one; else this process, with `threads_alone` threads (every core if None) for a plan of one
    stack. Each task says how many threads it trains with (`threads`)."""
    if cluster:
        require("training on a Dask cluster", "distributed")
        with _connect(cluster) as client:
            log(f"training on the Dask cluster at {cluster} ({OnDask(client).workers} workers)")
            yield OnDask(client)
    elif workers > 1 and not installed("distributed"):
        log(
            f"training in this process: {workers} worker processes would be faster here, as the calibration "
            "found; pip install 'mnistlab[cluster]' gives them"
        )
        yield InProcess(progress, None)
    elif workers > 1:
        log(f"training in {workers} local worker processes")
        with local_cluster(workers) as client:
            yield OnDask(client)
    else:
        yield InProcess(progress, threads_alone)


@contextlib.contextmanager
def local_cluster(workers: int):
    """A client of `workers` single-threaded Dask worker processes on this machine, stopped on exit."""
    from distributed import Client, LocalCluster

    # Loopback only, no dashboard: nothing listens beyond this machine. The scheduler serves HTTP
    # (health, metrics) even without a dashboard, by default on port 8787: a free port instead, so
    # that two studies side by side do not contend for it.
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        ) as local,
        Client(local) as client,
    ):
        yield client


@contextlib.contextmanager
def _connect(address: str):
    from distributed import Client

    try:
        client = Client(address, timeout=f"{CONNECT_SECONDS}s")
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MnistlabError(f"cannot reach the Dask scheduler at {address}: {reason}") from None
    with client:
        yield client
