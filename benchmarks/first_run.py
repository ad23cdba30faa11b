"""A newcomer's first run against the compiler: `mnistlab run provided --epochs 1` from empty compile
caches (mnistlab's stored steps and inductor's own), as mnistlab decides (compile="auto"), beside
`--no-compile` and `--compile`, each in a fresh process, taking turns. The machine's calibration is
measured once first (or read from this user's cache) and copied into each run's empty cache.

    python benchmarks/first_run.py --data-dir ../shared/data/mnist [--rounds 2] [--epochs 1]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.train import calibration
from mnistlab.train.hardware import cpu_name


def timed(args: list[str], calibrated: Path, data_dir: Path) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        (cache / "mnistlab" / "calibration").mkdir(parents=True)
        shutil.copy(calibrated, cache / "mnistlab" / "calibration" / calibrated.name)
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "TORCHINDUCTOR_CACHE_DIR": f"{scratch}/inductor"}
        env.pop(calibration.ENV_VAR, None)
        command = [sys.executable, "-m", "mnistlab.cli", *args, "--data-dir", str(data_dir), "--quiet"]
        started = time.perf_counter()
        subprocess.run([*command, "--out", f"{scratch}/run"], env=env, check=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--preset", default="provided")
    args = parser.parse_args()
    tuned = calibration.calibration(torch.device("cpu"))
    figures = f"compile {tuned.compile_seconds:.0f} s, saving {tuned.eager_saving * 1e3:.3f} ms per model-layer-step"
    print(f"{cpu_name()}, torch {torch.__version__}; calibration: {figures}")
    run = ["run", args.preset, "--epochs", str(args.epochs)]
    ways = {"auto": run, "--no-compile": [*run, "--no-compile"], "--compile": [*run, "--compile"]}
    seconds = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way, command in ways.items():
            seconds[way].append(timed(command, calibration.cache_path(torch.device("cpu")), args.data_dir))
            print(f"  {way}: {seconds[way][-1]:.1f} s", flush=True)
    eager = statistics.median(seconds["--no-compile"])
    for way, values in seconds.items():
        median = statistics.median(values)
        print(f"{' '.join(run)} {way}: median {median:.1f} s, {median / eager:.2f}x --no-compile")


if __name__ == "__main__":
    main()
