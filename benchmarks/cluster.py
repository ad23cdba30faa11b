"""Wall time of one plan of stacks on 1 and on 2 single-threaded Dask workers on loopback, and how the
study's and a sweep's plans split on this machine.

The plan: `--stacks` stacks of `--members` final models each, `--epochs` epochs per phase, compiled as
training compiles. Each worker process loads the compiled step that the warm-up stored
(`train.stored_steps`), so that neither measurement pays the cold compile.

    python benchmarks/cluster.py [--stacks 4] [--members 3] [--epochs 4] [--data-dir DIR]
"""

import argparse
import time
from pathlib import Path

from mnistlab import data
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.studies.executors import OnDask, StackTask, local_cluster
from mnistlab.train.choices import EngineOptions
from mnistlab.train.hardware import cpu_name

FINAL = Architecture(784, (128, 128, 64, 64, 32))


def plan(stacks: int, members: int, epochs: int) -> list[StackTask]:
    return [
        StackTask(
            FINAL,
            tuple(
                Hyperparameters(seed=10 * s + m, learning_rate=1e-4, epochs=epochs, dropout=0.1) for m in range(members)
            ),
            32,
            ("mnist", 10_000),
            EngineOptions("cpu", "fp32", compile=True),
            1,
            f"stack {s}",
        )
        for s in range(stacks)
    ]


def seconds(tasks: list[StackTask], workers: int, dataset) -> float:
    """Wall time of the plan on a LocalCluster of `workers` single-threaded Dask workers, started here: one
    worker runs as a Dask worker too (`executor` would train a lone worker's plan in this process)."""
    started = time.perf_counter()
    with local_cluster(workers) as client:
        assert len(list(OnDask(client).run(tasks, {("mnist", 10_000): dataset}))) == len(tasks)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=4)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    dataset = data.load("mnist", args.data_dir, progress=False)
    seconds(plan(2, args.members, 1), 2, dataset)  # warm-up: inductor's cache holds the compiled step
    one = seconds(plan(args.stacks, args.members, args.epochs), 1, dataset)
    two = seconds(plan(args.stacks, args.members, args.epochs), 2, dataset)
    print(f"{cpu_name()}: {args.stacks} stacks of {args.members} final models, {args.epochs} epochs per phase")
    print(f"1 worker:  {one:.1f} s")
    print(f"2 workers: {two:.1f} s ({two / one:.2f} of one worker's time)")


if __name__ == "__main__":
    main()
