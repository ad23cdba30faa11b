"""How this machine wants to train, measured on it once and cached: stack size, worker processes and
threads, and the smallest matmul worth running in bf16.

None of these is a property of the code, and none can be read off a single process: two
single-threaded processes side by side can each run far slower than one alone. So the calibration
measures what it would decide between, as it would run: the real, compiled step of the final model on
synthetic data, at a small and a large stack, in one process using every core and in one
single-threaded process per core, side by side. The large probe is 8 members, not more (larger stacks
cost more per model on some CPUs), and the probes' stacks mix the study's regularisers as its stacks
do. Between the two ways to use the cores, ties go to the worker processes: a plan's small stacks split
less evenly over threads than the probes do. The measurements behind each choice are in
benchmarks/README.md ("What the code's comments measured").

The cache holds one file per machine (CPU or GPU model, core count, torch version) in the user cache;
a CPU's model is its name, family, model number and stepping, and its vector instruction sets, since
its name alone ("AMD EPYC") does not tell a Zen 3 without AVX-512 from a Zen 4 with bf16.
A file that does not parse, or that describes another machine, is ignored with a warning and measured
again. What the calibration decides changes how runs group into stacks and how many threads multiply
their matrices, so the last bits of their numbers (README, Determinism); on one machine with one cache
a run gives the same bits every time. MNISTLAB_CALIBRATION=off skips it for fixed, unmeasured settings.
"""

import contextlib
import hashlib
import json
import multiprocessing
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.files import check_output, json_text, parse_json, read_limited, write_atomic
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.train.engine import EMULATED_BF16_MIN_MACS, Engine, flush_denormals
from mnistlab.train.hardware import bf16_hardware, cores, machine

ENV_VAR = "MNISTLAB_CALIBRATION"
FORMAT = 3  # 2: probes of mixed regularisers, up to 8 members on a CPU; 3: ties go to the workers
PROBE_ARCH = Architecture(784, (128, 128, 64, 64, 32))  # the lab's final model, which most runs are
PROBE_BATCH = 32
PROBE_MEMBERS = {"cpu": (4, 8), "cuda": (16, 256)}  # a small and a large stack
PROBE_STEPS = 100  # per round
PROBE_ROUNDS = 3


class CalibrationWarning(UserWarning):
    """A cached calibration was unreadable or another machine's, and is not used."""


@dataclass(frozen=True)
class Probe:
    """One measurement: `processes` side by side, each with `threads` threads, each training a stack of
    `members` models; seconds per model and step of them all (the inverse of their summed speed)."""

    processes: int
    threads: int
    members: int
    seconds_per_model_step: float


@dataclass(frozen=True)
class Calibration:
    machine: dict  # what the measurements hold for: device, cpu, cores, torch
    workers: int  # processes that train stacks side by side (1: in this process)
    threads: int  # per worker process
    threads_alone: int  # for one stack alone in this process
    stack_rows: int  # members x batch size of the largest stack worth training
    bf16_min_macs: int | None  # the smallest layer (multiply-adds per batch) that pays in bf16; None: none does
    probes: tuple[Probe, ...] = ()
    seconds: float = 0.0  # what measuring took

    def describe(self) -> str:
        lines = [f"{key:<8} {value}" for key, value in self.machine.items()]
        workers = "in this process" if self.workers == 1 else f"{self.workers} worker processes"
        lines += [
            f"workers  {workers}, {self.threads} thread{'s' if self.threads > 1 else ''} each"
            f" ({self.threads_alone} for a stack alone)",
            f"stacks   up to {self.stack_rows} rows per step ({self.stack_rows // PROBE_BATCH} models at batch 32)",
            "bf16     "
            + (
                "no layer pays"
                if self.bf16_min_macs is None
                else f"layers of {self.bf16_min_macs:,} multiply-adds per batch or more"
            ),
        ]
        if self.probes:
            lines.append(
                f"measured in {self.seconds:.0f} s, seconds per model and step of the final model at batch 32:"
            )
            lines += [
                f"  {p.processes} process(es) of {p.threads} thread(s), {p.members:>3} models each: "
                f"{p.seconds_per_model_step * 1e3:.3f} ms"
                for p in self.probes
            ]
        else:
            lines.append(f"not measured (${ENV_VAR}=off): fixed settings")
        return "\n".join(lines)


def fixed(device: torch.device) -> Calibration:
    """Settings that measure nothing: this process, every core, 512-row stacks, bf16 for large layers."""
    rows = 8192 if device.type == "cuda" else 512
    least = 0 if bf16_hardware(device) == "cuda" else EMULATED_BF16_MIN_MACS
    return Calibration(machine(device), 1, cores(), cores(), rows, least)


def calibration(device: torch.device, redo: bool = False, log=print) -> Calibration:
    """This machine's calibration: the cached one, or measured now (and cached) the first time or with `redo`."""
    if os.environ.get(ENV_VAR, "").lower() == "off":
        return fixed(device)
    path = cache_path(device)
    if not redo and (cached := read(path, machine(device))) is not None:
        return cached
    log(f"calibrating this machine once (cached in {path}; `mnistlab calibrate` shows it)")
    measured = measure(device)
    try:
        check_output(path, folder=False)
        write_atomic(path, json_text({"format": FORMAT, **asdict(measured)}))
    except (OSError, MnistlabError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        warnings.warn(f"{path}: could not cache the calibration ({reason})", CalibrationWarning, 2)
    return measured


def known(device: torch.device) -> Calibration:
    """This machine's cached calibration, else the fixed settings; never measures (a worker's view)."""
    if os.environ.get(ENV_VAR, "").lower() == "off":
        return fixed(device)
    return read(cache_path(device), machine(device)) or fixed(device)


def cache_path(device: torch.device) -> Path:
    from mnistlab.data import cache_dir  # the data stage's user cache; here, so that importing stays light

    key = hashlib.sha256(json.dumps(machine(device), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "calibration" / f"{device.type}-{key}.json"


def read(path: Path, expected: dict) -> Calibration | None:
    """The calibration cached at `path` if it is a well-formed one of the `expected` machine, else None
    (with a warning, unless there is no file)."""
    if not path.exists():
        return None
    try:
        stored = parse_json(read_limited(path, 1 << 20))
        if (found_format := stored.pop("format")) != FORMAT:
            raise ValueError(f"format {found_format}, this mnistlab's is {FORMAT}")
        probes = tuple(Probe(**p) for p in stored.pop("probes"))
        found = Calibration(**stored, probes=probes)
        numbers = (found.workers, found.threads, found.threads_alone, found.stack_rows)
        if not all(isinstance(n, int) and n >= 1 for n in numbers):
            raise ValueError("counts must be positive integers")
        if not (found.bf16_min_macs is None or isinstance(found.bf16_min_macs, int)):
            raise ValueError("bf16_min_macs must be an integer or null")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(f"{path}: ignoring an unreadable calibration ({exc}); measuring again", CalibrationWarning, 3)
        return None
    if found.machine != expected:
        warnings.warn(f"{path}: ignoring the calibration of another machine ({found.machine})", CalibrationWarning, 3)
        return None
    return found


def measure(device: torch.device) -> Calibration:
    """Time the compiled training step in probe processes and decide (see the module's docstring).

    The process using every core and the first single-threaded one compile their steps at once, which
    overlaps the compiling. The other single-threaded processes would compile the very same steps, so
    they start when the first is ready and load what it stored (`stored_steps`; where nothing can be
    stored, as with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1, they compile after it): on 2 AMD vCPUs, three
    processes compiling side by side took 107-112 s, two and then a load 84-87 s. Then the groups take
    turns timing, round after round: the single-threaded processes together, the one using every core
    alone, and one single-threaded process alone."""
    start = time.perf_counter()
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
        rounds = [[] for _ in groups]
        for _ in range(PROBE_ROUNDS):
            for timed, (_, _, members, group) in zip(rounds, groups, strict=True):
                timed.append(_together(group, members))
        probes = [Probe(p, t, m, min(timed)) for (p, t, m, _), timed in zip(groups, rounds, strict=True)]
    finally:
        for probe in (every, *singles):
            probe.close()
    workers, threads, threads_alone, members = decide(tuple(probes), all_cores)
    return Calibration(
        machine(device),
        workers,
        threads,
        threads_alone,
        members * PROBE_BATCH,
        _bf16_min_macs(device),
        tuple(probes),
        time.perf_counter() - start,
    )


def decide(probes: tuple[Probe, ...], all_cores: int) -> tuple[int, int, int, int]:
    """(workers, threads per worker, threads for a stack alone, members per stack) from the probes.

    One single-threaded process per core wins unless one process using every core trains more than 10%
    faster than they do side by side (see the module's docstring). A larger stack wins only by more than
    5%: a smaller one splits the work more evenly over the workers."""

    def best(processes: int, threads: int) -> Probe | None:
        mine = [p for p in probes if (p.processes, p.threads) == (processes, threads)]
        if not mine:
            return None
        fastest = min(p.seconds_per_model_step for p in mine)
        return min((p for p in mine if p.seconds_per_model_step <= 1.05 * fastest), key=lambda p: p.members)

    shared, spread, single = best(1, all_cores), best(all_cores, 1), best(1, 1)
    threads_alone = all_cores
    if single is not None and all_cores > 1:
        same_size = [p for p in probes if (p.processes, p.threads, p.members) == (1, all_cores, single.members)]
        if same_size and single.seconds_per_model_step < same_size[0].seconds_per_model_step:
            threads_alone = 1
    if spread is not None and all_cores > 1 and spread.seconds_per_model_step <= 1.1 * shared.seconds_per_model_step:
        return all_cores, 1, threads_alone, spread.members
    return 1, all_cores, threads_alone, shared.members


def _together(group: list["_ProbeProcess"], members: int) -> float:
    """Seconds per model-step of the group's processes timing a stack of `members` at once: the inverse
    of their summed speed."""
    for probe in group:
        probe.connection.send(members)
    return 1 / sum(1 / probe.connection.recv() for probe in group)


class _ProbeProcess:
    """A process that compiles the probe step for each stack size, then times one when asked."""

    def __init__(self, context, device: torch.device, threads: int, sizes: tuple[int, ...]):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_probe_main, args=(theirs, str(device), threads, sizes), daemon=True)
        self.process.start()

    def wait_ready(self) -> None:
        message = self.connection.recv()
        if message != "ready":
            raise MnistlabError(f"calibration: a probe process failed ({message})")

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
        steps = {members: _compiled_stack(torch.device(device_name), members) for members in sizes}
    except Exception as exc:  # the parent names it in one line
        connection.send(f"{type(exc).__name__}: {exc}")
        return
    connection.send("ready")
    while (members := connection.recv()) is not None:
        connection.send(_seconds_per_model_step(steps[members], members))


def _compiled_stack(device: torch.device, members: int):
    """A warm, compiled training step of a stack of the probe model, as a no-argument callable."""
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

    def step():
        stack.compiled(stack.state, x, y, batch, totals)

    for _ in range(10):  # the first compiles
        step()
    _sync(device)
    return step


def _seconds_per_model_step(step, members: int) -> float:
    """One round of `PROBE_STEPS` steps, per model and step."""
    device = torch.device("cuda") if torch.cuda.is_initialized() else torch.device("cpu")
    _sync(device)
    started = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step()
    _sync(device)
    return (time.perf_counter() - started) / PROBE_STEPS / members


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
