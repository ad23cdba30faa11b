"""Milliseconds per model and training step of the study's stacks, by stack size, in one process.

A stack of M members cycles through the study's batch-32 presets of the final model (powerful, l2, l1,
dropout, early-stopping, l2-strong; or those given), a seed for each round of them, on the real 50k
split and the real batches of an epoch. The sizes take turns, round after round, so that the
machine's drift falls on all of them alike; the calibration's probe of the same size runs beside them.
The first step's time is the compile, or the load of a stored step (`train.stored_steps`).

    python benchmarks/stack_step.py [--sizes 2 4 6 8 16] [--presets NAME...] [--threads N] [--rounds 5]
                                    [--data-dir DIR]
"""

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from mnistlab import data
from mnistlab.spec import config
from mnistlab.train import hardware
from mnistlab.train import probes as probe_stacks
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.fit import Lockstep, Totals, epoch_batches
from mnistlab.train.protocol import streams

PRESETS = ("powerful", "l2", "l1", "dropout", "early-stopping", "l2-strong")
STEPS = 300  # per round and size


def study_stack(dataset, experiments: list, members: int):
    """The first step's seconds, and one round of `STEPS` real steps of a stack of `members` as a callable
    returning ms per model-step."""
    hyperparameters = [
        dataclasses.replace(experiments[i % len(experiments)].hyperparameters, seed=i // len(experiments))
        for i in range(members)
    ]
    arch = experiments[0].architecture(inputs=dataset.train_images.shape[1], classes=len(dataset.classes))
    x, y = dataset.train_images[:50_000], dataset.train_labels[:50_000]
    seeds = [streams(h, phase=1) for h in hyperparameters]
    stack = Lockstep(arch, hyperparameters, seeds, (x, y), 32, Engine(torch.device("cpu"), precision="fp32"))
    totals = Totals(torch.zeros(members), torch.zeros(members))
    batches = list(epoch_batches(stack.shufflers, 50_000, 32, torch.device("cpu")))
    started = time.perf_counter()
    stack.compiled(stack.state, x, y, batches[0], totals)
    first = time.perf_counter() - started
    turn = iter(range(1, len(batches) - 1))

    def round_ms() -> float:
        started = time.perf_counter()
        for _ in range(STEPS):
            stack.compiled(stack.state, x, y, batches[next(turn)], totals)
        return (time.perf_counter() - started) / STEPS / members * 1e3

    return first, round_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 6, 8, 16])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="batch-32 presets of the final model")
    parser.add_argument("--threads", type=int, default=hardware.cores())
    parser.add_argument("--rounds", type=int, default=5, help="at most 5: an epoch has 1,562 full batches")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flush_denormals()
    dataset = data.load("mnist", args.data_dir, progress=False)
    print(f"{hardware.cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    experiments = [config.load(name) for name in args.presets]
    rounds, probes = {}, {}
    for members in args.sizes:
        first, rounds[members] = study_stack(dataset, experiments, members)
        probes[members] = probe_stacks._stack(torch.device("cpu"), members)[0]
        print(f"stack of {members}: first step {first:.1f} s (compiled, or loaded where stored)", flush=True)
    study = {m: [] for m in args.sizes}
    probe = {m: [] for m in args.sizes}
    for _ in range(args.rounds):
        for members in args.sizes:
            study[members].append(rounds[members]())
            seconds = probe_stacks._seconds(probes[members], probe_stacks.PROBE_STEPS, torch.device("cpu"))
            probe[members].append(seconds / members * 1e3)
    print("\n| members | study's stack, ms per model-step (median, range) | calibration's probe |")
    print("|---|---|---|")
    for m in args.sizes:
        print(
            f"| {m} | {statistics.median(study[m]):.3f} ({min(study[m]):.3f}-{max(study[m]):.3f})"
            f" | {statistics.median(probe[m]):.3f} ({min(probe[m]):.3f}-{max(probe[m]):.3f}) |"
        )


if __name__ == "__main__":
    main()
