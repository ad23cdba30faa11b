"""The lab's presets trained by Keras 3 and by mnistlab's engine, several seeds each, on this machine, and
the report that tests whether they agree (its section "Keras beside mnistlab's engine").

    python benchmarks/keras_agreement.py --data-dir ../shared/data/mnist --out /tmp/agree \
        [--presets provided powerful l2 dropout final] [--seeds 3] [--epochs N]

Keras trains each run alone, one after another; mnistlab trains its seeds in lockstep stacks as usual.
`--epochs` shortens every preset alike (both engines), for a quick look; the lab's epochs are the default.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mnistlab.train.hardware import cpu_name

PRESETS = ["provided", "powerful", "l2", "dropout", "final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    print(cpu_name())
    shortened = ["--epochs", str(args.epochs)] if args.epochs else []
    for engine in ("keras", "mnistlab"):
        started = time.perf_counter()
        command = [sys.executable, "-m", "mnistlab.cli", "study", "--presets", *args.presets, "--seeds",
                   str(args.seeds), "--engine", engine, "--data-dir", str(args.data_dir), "--quiet",
                   "--out", str(args.out / engine), *shortened]  # fmt: skip
        subprocess.run(command, check=True)
        print(f"{engine}: {time.perf_counter() - started:.0f} s", flush=True)
    report = args.out / "agreement.html"
    subprocess.run([sys.executable, "-m", "mnistlab.cli", "report", str(args.out / "keras"), str(args.out / "mnistlab"),
                    "--out", str(report)], check=True)  # fmt: skip
    text = report.with_suffix(".md").read_text()
    print(text[text.index("## Keras beside") :].split("\n## ", 1)[0])


if __name__ == "__main__":
    main()
