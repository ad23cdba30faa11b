"""Wall time of a sweep against the separate runs it replaces, and of a shipped sweep against tf.keras.

1. A 16-point L2 sweep of the powerful model at one seed, `mnistlab sweep`, against `mnistlab run` once
   per point, each in a process of its own as a user would type them. The runs are many: `--runs K`
   of them are timed and their mean multiplied by 16 (say so beside the figure).
2. With `--shipped NAME --seeds N`: that shipped sweep at full length, and the time tf.keras would need
   for the same epochs, from its measured seconds per epoch on this machine (`--keras-epoch`; the
   README's AMD EPYC figure is 12.3 s for the powerful model at batch 32).

    python benchmarks/sweep.py [--epochs 3] [--runs 2] [--shipped l2-sweep --seeds 3 --keras-epoch 12.3]
"""

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistlab.spec import sweep as sweep_spec
from mnistlab.train.hardware import cpu_name

L2_16 = """description = "16 L2 factors of the powerful model"
base = "powerful"
[[axis]]
key = "model.l2"
log_range = [1e-6, 1e-1]
points = 16
"""


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnistlab.cli", *args, "--quiet"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="per phase, for the 16-point comparison")
    parser.add_argument("--runs", type=int, default=2, help="separate runs timed, of the 16")
    parser.add_argument("--shipped", default=None, help="also time this shipped sweep at full length")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keras-epoch", type=float, default=12.3, help="tf.keras seconds per epoch here")
    args = parser.parse_args()
    print(cpu_name())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        spec = scratch / "l2-16.toml"
        spec.write_text(L2_16)
        points = sweep_spec.load(str(spec)).points()
        swept = timed(["sweep", str(spec), "--epochs", str(args.epochs), "--out", str(scratch / "sweep")])
        alone = [
            timed(["run", "powerful", "--set", point.overrides()[0], "--epochs", str(args.epochs),
                   "--out", str(scratch / f"run-{i}")])
            for i, point in enumerate(points[: args.runs])
        ]  # fmt: skip
        separate = 16 * sum(alone) / len(alone)
        print(f"16-point L2 sweep, {args.epochs} epochs per phase, one seed: {swept:.0f} s")
        print(f"16 separate runs: {separate:.0f} s ({args.runs} timed: {', '.join(f'{a:.0f}' for a in alone)} s)")
        print(f"sweep / separate runs: {swept / separate:.2f}")
        if args.shipped:
            out = scratch / args.shipped
            seconds = timed(["sweep", args.shipped, "--seeds", str(args.seeds), "--out", str(out)])
            with open(out / "sweep.csv") as f:
                epochs = sum(2 * int(row["epochs"]) for row in csv.DictReader(f))  # both phases
            keras = epochs * args.keras_epoch
            print(f"{args.shipped}, {args.seeds} seeds: {seconds:.0f} s for {epochs} epochs; tf.keras at "
                  f"{args.keras_epoch} s per epoch: {keras:.0f} s ({keras / seconds:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
