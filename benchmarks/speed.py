"""Training speed of the lab report's final model, against the machine's matmul floor and tf.keras.

Seconds per epoch over the 50k split (median of the epochs after the first, which compiles), with the
validation pass each epoch included, for one model and for 7 in lockstep, in fp32 and bf16 matmuls.
The floor is the epoch's arithmetic divided by this machine's sustained fp32 matmul rate, measured in
the same run. With TensorFlow installed, the same model in tf.keras runs back to back.

Every measurement runs in a process of its own that, as the `mnistlab` command does, flushes denormals
before anything starts a thread: what one measurement leaves behind (TensorFlow's thread pools, worker
threads started without the flush) would slow the next by 10-15%.

    python benchmarks/speed.py [--data-dir DIR] [--batches 32 128 1024 full] [--stacks 1 7]
                               [--precisions fp32 bf16] [--epochs 4] [--device cpu|cuda]
                               [--keras] [--study [--keep DIR]]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from mnistlab import data
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.fit import fit
from mnistlab.train.hardware import bf16_hardware
from mnistlab.train.protocol import streams

FINAL = Architecture(784, (128, 128, 64, 64, 32))


def epoch_gflop(arch: Architecture, train_rows: int, eval_rows: int) -> float:
    """Multiply-adds x 2 of one epoch: forward, kernel gradients, input gradients below the first layer
    (the engine does not compute the gradient of the images), and the validation forward pass."""
    weights = sum(n_in * n_out for n_in, n_out in arch.shapes)
    first = arch.shapes[0][0] * arch.shapes[0][1]
    return 2 * (train_rows * (3 * weights - first) + eval_rows * weights) / 1e9


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 4096, repeats: int = 5) -> float:
    """Sustained GFLOP/s of one large square matmul, median of `repeats`."""
    a, b = (torch.rand(size, size, device=device).to(dtype) for _ in "ab")
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def mnistlab_epoch(dataset, batch: int | None, stack: int, precision: str, epochs: int, device: str) -> float:
    members = [
        Hyperparameters(seed=s, learning_rate=1e-4, epochs=epochs, input_dropout=0.1, dropout=0.1) for s in range(stack)
    ]
    seeds = [streams(m, phase=1) for m in members]
    engine = Engine.create(device, precision)
    train, validation = (tuple(t.to(engine.device) for t in dataset.split(s)) for s in ("train", "validation"))
    fits = fit(FINAL, members, seeds, train, validation, batch, engine)
    return statistics.median(e.seconds for e in fits[0].history[1:])


def keras_epoch(dataset, batch: int | None, epochs: int) -> float:
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # after the validation pass
            self.times.append(time.perf_counter() - self.start)

    layers = [keras.Input((784,))]
    for width in FINAL.hidden:
        layers += [keras.layers.Dropout(0.1), keras.layers.Dense(width, activation="relu")]
    layers += [keras.layers.Dropout(0.1), keras.layers.Dense(10, activation="softmax")]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), validation = dataset.split("train"), dataset.split("validation")
    timer = Timer()
    timer.times = []
    model.fit(x.numpy(), y.numpy(), batch_size=batch or len(y), epochs=epochs, verbose=0, callbacks=[timer],
              validation_data=tuple(t.numpy() for t in validation))  # fmt: skip
    return statistics.median(timer.times[1:])


def measure(what: list[str], args: argparse.Namespace) -> list[float]:
    """Run `--measure WHAT...` in a fresh process of this script and return the numbers it prints."""
    command = [sys.executable, __file__, "--measure", *what, "--epochs", str(args.epochs), "--device", args.device]
    command += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(what)} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return [float(word) for word in result.stdout.split()]


def measure_here(what: list[str], args: argparse.Namespace) -> list[float]:
    if what == ["matmul"]:
        device = Engine.create(args.device).device
        # Emulated bf16 (no AVX512-BF16, AMX or GPU) multiplies a 4096-square in minutes, not milliseconds.
        bf16 = matmul_rate(torch.bfloat16, device) if bf16_hardware(device) else float("nan")
        return [matmul_rate(torch.float32, device), bf16]
    dataset = data.load("mnist", args.data_dir, progress=False)
    engine, batch_name, *rest = what
    batch = None if batch_name == "full" else int(batch_name)
    if engine == "keras":
        return [keras_epoch(dataset, batch, args.epochs)]
    stack, precision = rest
    return [mnistlab_epoch(dataset, batch, int(stack), precision, args.epochs, args.device)]


def command_seconds(args: list[str], data_dir: Path | None, precision: str, out: Path, device: str) -> float:
    """Wall time of one `mnistlab` command writing into the fresh folder `out` (compiled steps stay stored)."""
    command = [sys.executable, "-m", "mnistlab.cli", *args, "--out", str(out), "--quiet"]
    command += ["--precision", precision] + (["--data-dir", str(data_dir)] if data_dir else [])
    command += ["--device", device]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def batch32_epochs(study: Path) -> int:
    """The epochs a one-seed study trained at batch 32 with the final model's 131,818 parameters, both phases,
    each training counted once (`final` is `dropout`): what tf.keras would train for the same study."""
    trainings = {}
    for metrics_file in study.glob("*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        config = tomllib.loads((metrics_file.parent / "config.toml").read_text())
        if metrics["parameters"] == FINAL.num_params and config["train"]["batch_size"] == 32:
            config.pop("description")
            trainings[json.dumps(config, sort_keys=True)] = sum(metrics["epochs"].values())
    return sum(trainings.values())


def studies(args: argparse.Namespace, keras: float | None, keep: Path) -> None:
    """`mnistlab study` and `run final`, 1 seed and 5, one after the other, and the study against tf.keras."""
    for precision in args.precisions:
        for name, command in (("mnistlab study", ["study"]), ("mnistlab run final", ["run", "final"])):
            out = keep / f"{precision}-{command[-1]}"
            one = command_seconds(command, args.data_dir, precision, out / "seeds-1", args.device)
            five = command_seconds([*command, "--seeds", "5"], args.data_dir, precision, out / "seeds-5", args.device)
            print(f"{name} ({precision}): 1 seed {one:.0f} s, 5 seeds {five:.0f} s ({five / one:.2f}x)", flush=True)
            if command == ["study"] and keras:
                epochs = batch32_epochs(out / "seeds-1")
                seconds = epochs * keras
                print(f"  tf.keras for its {epochs} batch-32 epochs of the final model ({keras:.2f} s each, this run):")
                print(f"  {seconds:.0f} s, {seconds / one:.1f}x the study's time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--batches", nargs="*", default=["32", "128", "1024", "full"], help="none: skip the table")
    parser.add_argument("--stacks", nargs="+", type=int, default=[1, 7])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--epochs", type=int, default=4, help="per measurement; the first is not counted")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--keras", action="store_true", help="also tf.keras (needs tensorflow)")
    parser.add_argument("--study", action="store_true", help="also time study and run final, 1 and 5 seeds")
    parser.add_argument("--keep", type=Path, default=None, help="keep what those commands write, below this folder")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # one measurement, in a process of its own
    args = parser.parse_args()
    if args.measure:
        flush_denormals()
        print(*measure_here(args.measure, args))
        return

    fp32, bf16 = measure(["matmul"], args)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    native = "bf16 not native here" if math.isnan(bf16) else f"bf16 {bf16:.0f} GFLOP/s"
    print(f"sustained matmul (4096^2): fp32 {fp32:.0f} GFLOP/s, {native}")
    gflop = epoch_gflop(FINAL, 50_000, 10_000)
    print(f"one epoch of the final model: {gflop:.1f} GFLOP (50k training rows, 10k validation rows)")
    print(f"fp32 floor: {gflop / fp32:.3f} s per model-epoch\n")

    if args.batches:
        print("| batch | models | precision | s/epoch | s/epoch per model | GFLOP/s | x fp32 floor | tf.keras s/epoch "
              "| keras/mnistlab |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    keras_32 = None  # tf.keras' batch-32 epoch, for the study's ratio
    for batch_name in args.batches:
        keras = measure(["keras", batch_name], args)[0] if args.keras else None
        keras_32 = keras if batch_name == "32" else keras_32
        for stack in args.stacks:
            for precision in args.precisions:
                (seconds,) = measure(["mnistlab", batch_name, str(stack), precision], args)
                per_model = seconds / stack
                row = [batch_name, str(stack), precision, f"{seconds:.3f}", f"{per_model:.3f}",
                       f"{gflop / per_model:.0f}", f"{per_model / (gflop / fp32):.2f}"]  # fmt: skip
                compare = keras is not None and stack == 1
                row += [f"{keras:.3f}", f"{keras / seconds:.1f}"] if compare else ["", ""]
                print("| " + " | ".join(row) + " |", flush=True)

    if args.study:
        print()
        if args.keras and keras_32 is None:
            keras_32 = measure(["keras", "32"], args)[0]
        with tempfile.TemporaryDirectory() as scratch:
            studies(args, keras_32, args.keep or Path(scratch))


if __name__ == "__main__":
    main()
