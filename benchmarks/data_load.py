"""Seconds to find, decompress, verify (SHA-256) and convert all 70,000 MNIST images.

python benchmarks/data_load.py [--data-dir DIR] [--repeats N]
"""

import argparse
import statistics
import time
from pathlib import Path

from mnistlab import data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ds = data.load(args.dataset, args.data_dir, progress=False)
        times.append(time.perf_counter() - start)
    print(f"{ds.name} from {ds.folder}: {len(ds.train_labels) + len(ds.test_labels)} images, verified={ds.verified}")
    print(f"load seconds: median {statistics.median(times):.3f}, min {min(times):.3f}, max {max(times):.3f}")


if __name__ == "__main__":
    main()
