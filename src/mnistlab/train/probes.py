"""Measuring how this machine trains: probe processes time the real training step, and the calibration
(`train.calibration`) decides from what they measured.

None of it is a property of the code, and none can be read off a single process: two single-threaded
processes side by side can each run far slower than one alone. So the probes train the real step of the
final model on synthetic data, at a small and a large stack, in one process using every core and in one
single-threaded process per core, side by side, round after round, taking turns. They also time the
same step eagerly, and how long compiling it took, for what a compiled step saves and costs.

A busy machine makes wrong measurements. Each probe reports the CPU time it got against the wall time
it took: a single-threaded probe that got much less than its core, or rounds that disagree, or a machine
busy before the probes started, say that the answer is not to be trusted as settled (`Measured.busy`).
"""

import contextlib
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.hardware import bf16_hardware, cores

PROBE_ARCH = Architecture(784, (128, 128, 64, 64, 32))  # the lab's final model, which most runs are
PROBE_BATCH = 32
PROBE_MEMBERS = {"cpu": (4, 8), "cuda": (16, 256)}  # a small and a large stack
PROBE_STEPS = 100  # per round
PROBE_ROUNDS = 3
EAGER_STEPS = 20
STARVED = 0.8  # a single-threaded probe that got less than this share of a core was crowded out
DISAGREE = 1.5  # rounds of one probe further apart than this were disturbed
BUSY_BEFORE = 0.4  # a machine whose cores were this busy before measuring is busy


@dataclass(frozen=True)
class Probe:
    """One measurement: `processes` side by side, each with `threads` threads, each training a stack of
    `members` models; seconds per model and step of them all (the inverse of their summed speed)."""

    processes: int
    threads: int
    members: int
    seconds_per_model_step: float


@dataclass(frozen=True)
class Measured:
    probes: tuple[Probe, ...]
    compile_seconds: float  # the first call of the probe's step: compiling it
    eager_saving: float  # seconds a compiled step saved over the eager one, per model, layer and step
    bf16_min_macs: int | None
    busy: str | None  # why the machine looked busy while measuring, or None
    seconds: float  # what measuring took


def measure(device: torch.device) -> Measured:
    """Time the compiled training step in probe processes.

    The process using every core and the first single-threaded one compile their steps at once, which
    overlaps the compiling. The other single-threaded processes would compile the very same steps, so
    they start when the first is ready and load what it stored (`stored_steps`). Then the groups take
    turns timing, round after round: the single-threaded processes together, the one using every core
    alone, and one single-threaded process alone."""
    start = time.perf_counter()
    busy_before = busy_share() if device.type == "cpu" else 0.0
    all_cores = cores() if device.type == "cpu" else 1
    sizes = PROBE_MEMBERS[device.type]
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no threads or state of ours
    every = _ProbeProcess(context, device, max(all_cores, 1), sizes)
    singles = [_ProbeProcess(context, device, 1, sizes)] if all_cores > 1 else []
    try:
        if singles:
            singles[0].wait_ready()
            singles += [_ProbeProcess(context, device, 1, sizes) for _ in range(all_cores - 1)]
        for probe in (every, *singles[1:]):
            probe.wait_ready()
        groups = []  # (processes, threads, members, the probe processes timed together)
        for members in sizes:
            groups.append((1, all_cores, members, [every]))
            if singles:
                groups.append((all_cores, 1, members, singles))
        if singles:
            groups.append((1, 1, sizes[0], singles[:1]))
        # Rounds taking turns, the fastest of each kept: the machine's drift falls on every group alike.
        rounds: list[list[tuple[float, float]]] = [[] for _ in groups]
        for _ in range(PROBE_ROUNDS):
            for timed, (_, _, members, group) in zip(rounds, groups, strict=True):
                timed.append(_together(group, members))
        probes = [Probe(p, t, m, min(timed)[0]) for (p, t, m, _), timed in zip(groups, rounds, strict=True)]
        eager_seconds = every.eager(sizes[0])  # alone on the machine, as the compiled rounds were
    finally:
        for probe in (every, *singles):
            probe.close()
    compiled = min(p.seconds_per_model_step for p in probes if (p.processes, p.members) == (1, sizes[0]))
    saving = max(0.0, eager_seconds / sizes[0] - compiled) / len(PROBE_ARCH.shapes)
    busy = _busy(busy_before, groups, rounds)
    return Measured(
        tuple(probes), every.compile_seconds, saving, _bf16_min_macs(device), busy, time.perf_counter() - start
    )


def _busy(before: float, groups: list, rounds: list[list[tuple[float, float]]]) -> str | None:
    """Why the measurements look disturbed by other work on the machine, or None."""
    if before > BUSY_BEFORE:
        return f"the cores were {before:.0%} busy with other work when measuring began"
    for (processes, threads, members, _), timed in zip(groups, rounds, strict=True):
        seconds, share = min(timed)
        if threads == 1 and share < STARVED:
            return f"{processes} single-threaded probe(s) of {members} models got {share:.0%} of their cores"
        slowest = max(s for s, _ in timed)
        if slowest > DISAGREE * seconds:
            return f"rounds of {processes} x {threads} thread(s), {members} models, differed {slowest / seconds:.1f}x"
    return None


def busy_share(seconds: float = 0.5) -> float:
    """How busy the machine's cores are with work other than this process's, over `seconds` (from
    /proc/stat, this process sleeping meanwhile); 0 where that cannot be read."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle and iowait, total

    try:
        idle_before, total_before = sample()
        time.sleep(seconds)
        idle_after, total_after = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total_after - total_before
    return 0.0 if total <= 0 else 1 - (idle_after - idle_before) / total


def _together(group: list["_ProbeProcess"], members: int) -> tuple[float, float]:
    """Seconds per model-step of the group's processes timing a stack of `members` at once (the inverse
    of their summed speed), and the least share of its threads' time that any of them got."""
    for probe in group:
        probe.connection.send(members)
    answers = [probe.connection.recv() for probe in group]
    return 1 / sum(1 / seconds for seconds, _ in answers), min(share for _, share in answers)


class _ProbeProcess:
    """A process that compiles the probe step for each stack size, then times one when asked."""

    def __init__(self, context, device: torch.device, threads: int, sizes: tuple[int, ...]):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_probe_main, args=(theirs, str(device), threads, sizes), daemon=True)
        self.process.start()
        self.compile_seconds = 0.0

    def wait_ready(self) -> None:
        message = self.connection.recv()
        if not (isinstance(message, tuple) and message[0] == "ready"):
            raise MnistlabError(f"calibration: a probe process failed ({message})")
        self.compile_seconds = message[1]

    def eager(self, members: int) -> float:
        """Seconds per step of the stack of `members` run eagerly."""
        self.connection.send(("eager", members))
        return self.connection.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def _probe_main(connection, device_name: str, threads: int, sizes: tuple[int, ...]) -> None:
    try:
        torch.set_num_threads(threads)
        flush_denormals()
        device = torch.device(device_name)
        steps = {members: _stack(device, members) for members in sizes}
    except Exception as exc:  # the parent names it in one line
        connection.send(f"{type(exc).__name__}: {exc}")
        return
    connection.send(("ready", steps[sizes[0]][2]))
    while (members := connection.recv()) is not None:
        if isinstance(members, tuple):  # ("eager", members): a few to warm up, then timed
            eager = steps[members[1]][1]
            _seconds(eager, 5, device)
            connection.send(_seconds(eager, EAGER_STEPS, device))
            continue
        process_time, wall = time.process_time(), time.perf_counter()
        seconds = _seconds(steps[members][0], PROBE_STEPS, device) / members
        share = (time.process_time() - process_time) / max(1e-9, (time.perf_counter() - wall) * threads)
        connection.send((seconds, share))


def _stack(device: torch.device, members: int):
    """A warm, compiled training step of a stack of the probe model and its eager twin, as no-argument
    callables, and the seconds the first compiled call took (compiling it)."""
    from mnistlab.train.fit import Lockstep, Totals
    from mnistlab.train.protocol import streams

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4096, PROBE_ARCH.inputs, generator=generator).to(device)
    y = torch.randint(0, PROBE_ARCH.classes, (4096,), generator=generator).to(device)
    regularisers = ({}, {"l2": 1e-4}, {"l1": 1e-5}, {"dropout": 0.1})  # as the study's stacks mix them
    stack_members = [
        Hyperparameters(seed=s, learning_rate=1e-4, epochs=1, **regularisers[s % len(regularisers)])
        for s in range(members)
    ]
    seeds = [streams(m, 1) for m in stack_members]
    stack = Lockstep(PROBE_ARCH, stack_members, seeds, (x, y), PROBE_BATCH, Engine(device, precision="fp32"))
    totals = Totals(torch.zeros(members, device=device), torch.zeros(members, device=device))
    batch = torch.randint(0, 4096, (members, PROBE_BATCH), generator=generator).to(device)
    started = time.perf_counter()
    stack.compiled(stack.state, x, y, batch, totals)
    _sync(device)
    compile_seconds = time.perf_counter() - started
    for _ in range(10):
        stack.compiled(stack.state, x, y, batch, totals)
    _sync(device)
    return (
        lambda: stack.compiled(stack.state, x, y, batch, totals),
        lambda: stack.eager(stack.state, x, y, batch, totals),
        compile_seconds,
    )


def _seconds(step, count: int, device: torch.device) -> float:
    """Seconds per call of `step`, over `count` calls."""
    _sync(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return (time.perf_counter() - started) / count


def _bf16_min_macs(device: torch.device) -> int | None:
    """The smallest of the probe model's layers (at batches of 32 to 4,096 rows) whose matmul is at least
    10% faster in bf16 than in float32, as multiply-adds; None where none is (or bf16 is not native)."""
    hardware = bf16_hardware(device)
    if hardware is None:
        return None
    if hardware == "cuda":
        return 0
    sizes = sorted(
        (rows * n_in * n_out, rows, n_in, n_out) for rows in (32, 256, 4096) for n_in, n_out in PROBE_ARCH.shapes
    )
    for macs, rows, n_in, n_out in sizes:
        a, b = torch.rand(1, rows, n_in), torch.rand(1, n_in, n_out)
        fp32 = _matmul_seconds(a, b)
        bf16 = _matmul_seconds(a.to(torch.bfloat16), b)
        if bf16 < 0.9 * fp32:
            return macs
    return None


def _matmul_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.to(a.dtype)
    torch.bmm(a, b)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            torch.bmm(a, b).float()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
