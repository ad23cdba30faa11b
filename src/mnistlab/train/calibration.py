"""How this machine wants to train, measured on it and cached: stack size, worker processes and threads,
the smallest matmul worth running in bf16, and when compiling a step pays for itself.

The probes (`train.probes`) measure what the calibration decides between, as it would run. Between the
two ways to use the cores, ties go to the worker processes: a plan's small stacks split less evenly over
threads than the probes do (benchmarks/README.md, "What the code's comments measured"). A compiled step
saves time on every step and costs a compile once: a stack compiles only when its planned steps save
more than the compile costs (`compiles`), so a one-epoch smoke run trains eagerly and a study compiles.

A busy machine makes wrong measurements, and a calibration is cached. So a measurement the probes found
disturbed (`Measured.busy`) is cached as provisional, used, and measured again by the first command that
finds the machine quiet. Real runs check it too: stacks that train much faster than the probes said the
layout could say the probes were slowed, and make it provisional again (`record`).

The cache holds one file per machine (CPU or GPU model, core count, torch version) in the user cache.
A file that does not parse, or that describes another machine, is ignored with a warning and measured
again. What the calibration decides changes how runs group into stacks, how many threads multiply their
matrices and which steps compile, so the last bits of their numbers (docs, Determinism); on one machine
with one settled calibration a run gives the same bits every time. MNISTLAB_CALIBRATION=off uses fixed,
unmeasured settings.
"""

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.files import check_output, json_text, parse_json, read_limited, write_atomic
from mnistlab.spec import Architecture
from mnistlab.train.engine import EMULATED_BF16_MIN_MACS
from mnistlab.train.hardware import bf16_hardware, cores, machine
from mnistlab.train.probes import PROBE_ARCH, PROBE_BATCH, Probe, busy_share, measure

ENV_VAR = "MNISTLAB_CALIBRATION"
FORMAT = 4  # 3: ties go to the workers; 4: compile economics, provisional measurements, achieved rates
FIXED_COMPILE_SECONDS, FIXED_EAGER_SAVING = 30.0, 1e-4  # unmeasured: a cold compile, 0.1 ms per model-layer
FASTER = 1.5  # real stacks this much faster than the probes said mean the probes were slowed
ACHIEVED_KEPT = 32


class CalibrationWarning(UserWarning):
    """A cached calibration was unreadable or another machine's, and is not used."""


@dataclass(frozen=True)
class Achieved:
    """What a real stack reached: its layout (one of `processes` side by side, with `threads` threads),
    and the multiply-adds per second of its training steps, over the whole stack."""

    processes: int
    threads: int
    members: int
    macs_per_second: float


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
    compile_seconds: float = FIXED_COMPILE_SECONDS  # compiling a training step
    eager_saving: float = FIXED_EAGER_SAVING  # seconds a compiled step saves, per model, layer and step
    provisional: str | None = None  # why this is not settled: measured again when the machine is quiet
    measured_at: str = ""  # when the probes ran
    achieved: tuple[Achieved, ...] = ()

    def compiles(self, layers: int, members: int, steps: int, rows: int = PROBE_BATCH) -> bool:
        """Whether a stack of `members` models of `layers` Dense layers, planned for `steps` steps of `rows`
        rows each (a batch, or a full batch's chunk), wins back a compile: what its compiled steps save
        over the eager ones, against half what compiling costs. Half: a compiled step is stored, and the
        next process of the machine loads it. The saving grows with the rows a step fuses (the probe's
        steps are batches of 32), which overstates it for a full batch's chunks: they compile."""
        saving = self.eager_saving * layers * members * max(1.0, rows / PROBE_BATCH)
        return 2 * steps * saving > self.compile_seconds

    def break_even_epochs(self, arch: Architecture = PROBE_ARCH, members: int = 1) -> float:
        """Epochs of both phases at batch 32 (50k and 60k images) from which such a stack compiles."""
        steps_per_epoch = -(-50_000 // PROBE_BATCH) + -(-60_000 // PROBE_BATCH)
        return self.compile_seconds / (2 * self.eager_saving * len(arch.shapes) * members * steps_per_epoch)

    def describe(self) -> str:
        lines = [f"{key:<8} {value}" for key, value in self.machine.items()]
        workers = "in this process" if self.workers == 1 else f"{self.workers} worker processes"
        bf16 = "no layer pays" if self.bf16_min_macs is None else f"layers of {self.bf16_min_macs:,} multiply-adds"
        lines += [
            f"workers  {workers}, {self.threads} thread{'s' if self.threads > 1 else ''} each"
            f" ({self.threads_alone} for a stack alone)",
            f"stacks   up to {self.stack_rows} rows per step ({self.stack_rows // PROBE_BATCH} models at batch 32)",
            f"bf16     {bf16}{' per batch or more' if self.bf16_min_macs is not None else ''}",
            f"compile  a step takes {self.compile_seconds:.0f} s to compile and saves {self.eager_saving * 1e3:.3f} ms"
            " per model, layer and step: a stack compiles when that wins the compile back; the final model"
            f" alone from {self.break_even_epochs():.1f} epochs (both phases, batch 32), four of them from"
            f" {self.break_even_epochs(members=4):.1f}; shorter runs train eagerly",
        ]
        if self.probes:
            source = f"measured {self.measured_at} in {self.seconds:.0f} s" if self.measured_at else "measured"
            lines.append(f"{source}; seconds per model and step of the final model at batch 32:")
            lines += [
                f"  {p.processes} process(es) of {p.threads} thread(s), {p.members:>3} models each: "
                f"{p.seconds_per_model_step * 1e3:.3f} ms"
                for p in self.probes
            ]
        else:
            lines.append(f"not measured (${ENV_VAR}=off): fixed settings, and the compile figures above are guesses")
        if self.provisional:
            lines.append(f"PROVISIONAL: {self.provisional}; measured again when this machine is quiet")
        if self.achieved:
            lines.append(f"real stacks since: {len(self.achieved)}, their speed against the probes':")
            lines += [f"  {line}" for line in _achieved_lines(self)]
        return "\n".join(lines)


def fixed(device: torch.device) -> Calibration:
    """Settings that measure nothing: this process, every core, 512-row stacks, bf16 for large layers."""
    rows = 8192 if device.type == "cuda" else 512
    least = 0 if bf16_hardware(device) == "cuda" else EMULATED_BF16_MIN_MACS
    return Calibration(machine(device), 1, cores(), cores(), rows, least)


def calibration(device: torch.device, redo: bool = False, log=print) -> Calibration:
    """This machine's calibration: the cached one; measured now (and cached) the first time, with `redo`,
    or where the cached one is provisional and the machine is quiet now."""
    if os.environ.get(ENV_VAR, "").lower() == "off":
        return fixed(device)
    path = cache_path(device)
    cached = None if redo else read(path, machine(device))
    if cached is not None and not (cached.provisional and busy_share() < 0.25):
        return cached
    if cached is not None:
        log(f"measuring this machine again: the last calibration was provisional ({cached.provisional})")
    else:
        log(f"calibrating this machine (cached in {path}; `mnistlab calibrate` shows it)")
    measured = from_probes(device)
    if measured.provisional:
        log(f"calibration provisional: {measured.provisional}; it is measured again when the machine is quiet")
    store(path, measured)
    return measured


def from_probes(device: torch.device) -> Calibration:
    """Measure (`probes.measure`) and decide."""
    found = measure(device)
    all_cores = cores() if device.type == "cpu" else 1
    workers, threads, threads_alone, members = decide(found.probes, all_cores)
    return Calibration(
        machine(device),
        workers,
        threads,
        threads_alone,
        members * PROBE_BATCH,
        found.bf16_min_macs,
        found.probes,
        found.seconds,
        found.compile_seconds,
        found.eager_saving if found.eager_saving > 0 else FIXED_EAGER_SAVING,
        found.busy,
        time.strftime("%Y-%m-%d %H:%M"),
    )


def store(path: Path, tuned: Calibration) -> None:
    """Cache the calibration; a cache that cannot be written is a warning, never a failure."""
    try:
        check_output(path, folder=False)
        write_atomic(path, json_text({"format": FORMAT, **asdict(tuned)}))
    except (OSError, MnistlabError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        warnings.warn(f"{path}: could not cache the calibration ({reason})", CalibrationWarning, 3)


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
        achieved = tuple(Achieved(**a) for a in stored.pop("achieved"))
        found = Calibration(**stored, probes=probes, achieved=achieved)
        numbers = (found.workers, found.threads, found.threads_alone, found.stack_rows)
        if not all(isinstance(n, int) and n >= 1 for n in numbers):
            raise ValueError("counts must be positive integers")
        if not (found.bf16_min_macs is None or isinstance(found.bf16_min_macs, int)):
            raise ValueError("bf16_min_macs must be an integer or null")
        if not (found.compile_seconds >= 0 and found.eager_saving > 0):
            raise ValueError("the compile figures must be positive")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(f"{path}: ignoring an unreadable calibration ({exc}); measuring again", CalibrationWarning, 3)
        return None
    if found.machine != expected:
        warnings.warn(f"{path}: ignoring the calibration of another machine ({found.machine})", CalibrationWarning, 3)
        return None
    return found


def decide(probes: tuple[Probe, ...], all_cores: int) -> tuple[int, int, int, int]:
    """(workers, threads per worker, threads for a stack alone, members per stack) from the probes.

    One single-threaded process per core wins unless one process using every core trains more than 10%
    faster than they do side by side. A larger stack wins only by more than 5%: a smaller one splits the
    work more evenly over the workers."""

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


def macs_per_model_step(arch: Architecture, batch_rows: int) -> int:
    """Multiply-adds of one model's training step: the forward matmuls, and twice as many backward."""
    return 3 * batch_rows * sum(n_in * n_out for n_in, n_out in arch.shapes)


def record(device: torch.device, stacks: list[Achieved]) -> Calibration | None:
    """Keep what real stacks of a plan reached beside the cached calibration; where stacks of the probe's
    size ran much faster than the probes measured their layout, the probes were slowed: the calibration
    becomes provisional, and is measured again when the machine is quiet. Returns the new calibration,
    or None where there is no cached one."""
    if os.environ.get(ENV_VAR, "").lower() == "off" or not stacks:
        return None
    path = cache_path(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        cached = read(path, machine(device))
    if cached is None:
        return None
    updated = replace(cached, achieved=(*cached.achieved, *stacks)[-ACHIEVED_KEPT:])
    faster = [ratio for _, ratio in _ratios(updated) if ratio > FASTER]
    if faster and not updated.provisional:
        reason = f"real stacks trained {max(faster):.1f}x as fast as the probes measured: the probes were slowed"
        updated = replace(updated, provisional=reason)
    store(path, updated)
    return updated


def _ratios(tuned: Calibration) -> list[tuple[Achieved, float]]:
    """Each real stack of a layout the probes measured, and its speed over the probes'."""
    probe_macs = macs_per_model_step(PROBE_ARCH, PROBE_BATCH)
    ratios = []
    for real in tuned.achieved:
        probes = [p for p in tuned.probes if (p.processes, p.threads) == (real.processes, real.threads)]
        if probes:
            measured = max(probe_macs / (p.seconds_per_model_step * p.processes) for p in probes)  # per process
            ratios.append((real, real.macs_per_second / measured))
    return ratios


def _achieved_lines(tuned: Calibration) -> list[str]:
    return [
        f"{real.processes} process(es) of {real.threads} thread(s), {real.members} models: "
        f"{real.macs_per_second / 1e9:.1f} GMAC/s, {ratio:.2f}x the probes'"
        for real, ratio in _ratios(tuned)[-5:]
    ]
