"""An ASHA search against the same trials trained whole: wall time, work, and the best trial of each.

1. `mnistlab sweep SEARCH --seeds 2 --epochs E` with the search's pruner (the shipped powerful-search:
   32 trials, ASHA at a reduction factor of 4).
2. The same trials (the points the search drew, read back from its sweep.csv) as a grid, which trains
   every one whole: what the search would have cost without its pruner.

It prints both wall times and their ratio, the model-epochs each trained (both phases), the pruned
trials by the epoch they were stopped after, and the best point of each with its mean validation loss
and 95% interval over the seeds. Run it on a quiet machine; the calibration is the machine's own.

First it measures what re-packing costs against what it saves, on a stack of the search's base model
at batch 32 on MNIST-sized data: an epoch of 8 rows, then (eager, and compiled with a new step) the
shedding to 4 rows, the first epoch after it, and a later one.

    python benchmarks/pruning.py [--search powerful-search] [--epochs 20] [--seeds 2] [--out DIR]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.evaluation.statistics import summarise
from mnistlab.spec import config
from mnistlab.spec import sweep as sweep_spec
from mnistlab.train import calibration
from mnistlab.train.engine import Engine
from mnistlab.train.fit import Lockstep
from mnistlab.train.hardware import cpu_name
from mnistlab.train.progress import ProgressBars
from mnistlab.train.protocol import streams


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnistlab.cli", *args, "--quiet"], check=True)
    return time.perf_counter() - started


def rows(folder: Path) -> list[dict]:
    with open(folder / "sweep.csv") as f:
        return list(csv.DictReader(f))


def same_trials(spec: sweep_spec.Sweep, found: list[dict]) -> str:
    """A grid sweep of exactly the points the search trained: its axes varied together, one value each."""
    keys = [axis.keys[0] for axis in spec.axes]
    points = list(dict.fromkeys(tuple(float(row[k]) for k in keys) for row in found))
    values = ", ".join(json.dumps(list(point)) for point in points)
    changes = ", ".join(json.dumps(change) for change in spec.overrides)
    return f'base = "{spec.base}"\nset = [{changes}]\n[[axis]]\nkeys = {json.dumps(keys)}\nvalues = [{values}]\n'


def best(found: list[dict]) -> str:
    """The point of lowest mean validation loss among the points with no pruned run, with its interval."""
    by_point: dict[str, list[float]] = {}
    for row in found:
        if row.get("pruned") != "True":
            by_point.setdefault(row["point"], []).append(float(row["validation_loss"]))
    point, losses = min(by_point.items(), key=lambda item: sum(item[1]) / len(item[1]))
    s = summarise(losses)
    interval = f" (95% interval {s.low:.4f}-{s.high:.4f})" if s.low is not None else ""
    return f"{s.mean:.4f}{interval} at {point}"


def epoch_seconds(stack: Lockstep) -> float:
    started = time.perf_counter()
    with ProgressBars.OFF.epoch(1, 1, 1) as bar:
        stack.train_epoch(bar)
    return time.perf_counter() - started


def repacking(base: str) -> None:
    """Re-packing 8 rows to 4, eager and compiled: its own cost, and an epoch before and after, beside
    what the stack's rule (`Lockstep.shed`) expected it to cost."""
    experiment = config.load(base)
    arch = experiment.architecture(inputs=784)
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(50_000, 784, generator=generator), torch.randint(0, 10, (50_000,), generator=generator)
    members = [experiment.with_seed(seed).hyperparameters for seed in range(8)]
    compile_seconds = calibration.calibration(torch.device("cpu")).compile_seconds  # what a search weighs
    for engine in (Engine(compile=False), Engine(compile=True, compile_seconds=compile_seconds)):
        stack = Lockstep(arch, members, [streams(m, 1) for m in members], train, 32, engine)
        epoch_seconds(stack)  # a compiled stack compiles its 8-row step here
        eight = epoch_seconds(stack)
        expected = stack._new_step_seconds(stack.state.rows(torch.tensor([0, 1, 2, 3])))
        started = time.perf_counter()
        stack.shed([0, 1, 2, 3], epoch_seconds=1e9, epochs_left=1)  # shed whatever it costs
        shed = time.perf_counter() - started
        first, later = epoch_seconds(stack), epoch_seconds(stack)
        kind = "compiled" if engine.compile else "eager"
        print(f"re-packing 8 rows to 4 ({kind}): {shed + first - later:.1f} s (the shedding {shed:.2f} s and the "
              f"first epoch's extra; the rule expected {expected:.1f} s); an epoch of 8 rows {eight:.1f} s, of 4 "
              f"rows {later:.1f} s: {eight - later:.1f} s saved per epoch")  # fmt: skip


def model_epochs(found: list[dict]) -> int:
    """Epochs trained over both phases: a pruned run has no phase 2."""
    return sum(int(row["epochs"]) * (1 if row.get("pruned") == "True" else 2) for row in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", default="powerful-search", help="a shipped search or a search TOML file")
    parser.add_argument("--epochs", type=int, default=20, help="each trial's budget (phase 1)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep both sweeps here (default: a temporary folder)")
    args = parser.parse_args()
    spec = sweep_spec.load(args.search)
    print(f"{cpu_name()}; {args.search}: {spec.size} trials, pruner {spec.search.pruner}, {args.seeds} seeds, "
          f"{args.epochs} epochs")  # fmt: skip
    repacking(spec.base)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        common = ["--seeds", str(args.seeds), "--epochs", str(args.epochs)]
        pruned_seconds = timed(["sweep", args.search, *common, "--out", str(out / "pruned")])
        searched = rows(out / "pruned")
        grid = out / "same-trials.toml"
        grid.write_text(same_trials(spec, searched))
        whole_seconds = timed(["sweep", str(grid), *common, "--out", str(out / "whole")])
        whole = rows(out / "whole")

    stopped: dict[int, int] = {}
    for row in searched:
        if row["pruned"] == "True" and row["seed"] == searched[0]["seed"]:
            stopped[int(row["epochs"])] = stopped.get(int(row["epochs"]), 0) + 1
    points = len({row["point"] for row in searched})
    print(f"pruned search: {pruned_seconds:.0f} s, {model_epochs(searched)} model-epochs")
    print(f"the same {points} points whole: {whole_seconds:.0f} s, {model_epochs(whole)} model-epochs")
    print(f"time pruned / whole: {pruned_seconds / whole_seconds:.2f}")
    when = ", ".join(f"{count} after epoch {epoch}" for epoch, count in sorted(stopped.items()))
    print(f"pruned: {sum(stopped.values())} of {points} points ({when or 'none'})")
    print(f"best, pruned search: {best(searched)}")
    print(f"best, whole: {best(whole)}")


if __name__ == "__main__":
    main()
