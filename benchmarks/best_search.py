"""The recipe search behind the `best` preset: a sweep file's points, trained on the 50k split and scored
on the 10k validation split only (phase 1 of the protocol; the test set is never read).

Points that share an architecture train as one lockstep stack, every seed of every point a member, so
a GPU trains a whole architecture's grid at once. Prints one row per point, best first: mean validation
error over the seeds, each seed's, and the final training loss; writes the same as CSV with --csv.

    python benchmarks/best_search.py benchmarks/best-search.toml [--seeds 2] [--device auto]
                                     [--data-dir DIR] [--csv FILE] [--set key=value ...]
"""

import argparse
import csv
import statistics
import time
from pathlib import Path

from mnistlab import data
from mnistlab.spec import config, sweep
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.fit import fit
from mnistlab.train.protocol import streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep file: its points are the recipes")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="an override of every point, e.g. train.epochs=5")
    args = parser.parse_args()
    flush_denormals()

    search = sweep.load(args.sweep)
    engine = Engine.create(args.device)
    dataset = data.load("mnist", args.data_dir, progress=False)
    train, validation = (tuple(t.to(engine.device) for t in dataset.split(s)) for s in ("train", "validation"))
    stacks: dict[tuple, list] = {}
    for point in search.points():
        experiment = config.load(search.base, [*search.overrides, *args.set, *point.overrides()])
        for seed in range(args.seeds):
            stacks.setdefault(experiment.lockstep_key(), []).append((point, experiment.with_seed(seed)))
    print(f"{len(search.points())} points x {args.seeds} seeds in {len(stacks)} stacks on {engine.device}", flush=True)

    errors: dict[str, list[float]] = {}
    losses: dict[str, list[float]] = {}
    for runs in stacks.values():
        arch = runs[0][1].architecture(dataset.train_images.shape[1], len(dataset.classes))
        members = [experiment.hyperparameters for _, experiment in runs]
        start = time.perf_counter()
        fits = fit(arch, members, [streams(m, 1) for m in members], train, validation, runs[0][1].batch_size, engine)
        seconds = time.perf_counter() - start
        print(f"{arch.hidden} crop {arch.crop} ({arch.num_params:,} parameters): {len(members)} models, "
              f"{max(m.epochs for m in members)} epochs, {seconds:.0f} s", flush=True)  # fmt: skip
        for (point, _), fitted in zip(runs, fits, strict=True):
            errors.setdefault(point.label, []).append(1 - fitted.history[-1].eval_accuracy)
            losses.setdefault(point.label, []).append(fitted.history[-1].loss)

        print_table(errors, losses)  # after every stack: a search cut short still reports

    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["point", "seed", "validation_error", "training_loss"])
            for label in errors:
                for seed, (error, loss) in enumerate(zip(errors[label], losses[label], strict=True)):
                    writer.writerow([label, seed, f"{error:.6f}", f"{loss:.6f}"])


def print_table(errors: dict[str, list[float]], losses: dict[str, list[float]]) -> None:
    ranked = sorted(errors, key=lambda label: statistics.mean(errors[label]))
    print("\n| validation error | per seed | training loss | point |\n|---|---|---|---|")
    for label in ranked:
        per_seed = " ".join(f"{e:.2%}" for e in errors[label])
        print(f"| {statistics.mean(errors[label]):.2%} | {per_seed} | {statistics.mean(losses[label]):.4f} | {label} |")
    print(flush=True)


if __name__ == "__main__":
    main()
