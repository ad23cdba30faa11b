"""The `mnistlab` command. Thin: it parses arguments, calls the library and prints."""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from mnistlab import __version__, config, data, report, runs
from mnistlab.engine import PRECISIONS, Engine, flush_denormals, resolve_precision
from mnistlab.errors import ConfigError, MnistlabError


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before any parallel work starts the threads that inherit it
    parser = _parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        args.func(args)
    except MnistlabError as exc:
        print(f"mnistlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mnistlab: interrupted", file=sys.stderr)
        return 130
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnistlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    data_cmd = commands.add_parser("data", help="inspect and verify a data set")
    data_actions = data_cmd.add_subparsers(required=True, metavar="ACTION")
    info = data_actions.add_parser("info", help="where the files are, whether checksums pass, counts per class")
    _data_options(info)
    info.add_argument("--validation-size", type=int, default=10_000, metavar="N")
    info.set_defaults(func=_data_info)

    presets = commands.add_parser("presets", help="list the shipped experiment presets")
    presets.set_defaults(func=_presets)

    run = commands.add_parser("run", help="train a preset or TOML config with the report's two-phase protocol")
    run.add_argument("preset", metavar="PRESET|FILE.toml")
    run.add_argument("--out", type=Path, default=None, help="run folder (default: runs/NAME)")
    _training_options(run)
    run.set_defaults(func=_run)

    study = commands.add_parser("study", help="run the report's experiments, skipping finished ones")
    study.add_argument("--presets", nargs="+", default=None, metavar="NAME", help="default: every preset")
    study.add_argument("--out", type=Path, default=Path("study"), help="study folder (default: study)")
    _training_options(study)
    study.set_defaults(func=_study)

    report = commands.add_parser("report", help="write the HTML report (and its Markdown twin) for run folders")
    report.add_argument("folders", nargs="+", type=Path, metavar="RUN_DIR", help="run, multi-seed or study folders")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default: report.html)")
    report.set_defaults(func=_report)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=sorted(data.CATALOG),
        default=None,
        help="a catalogued data set (default: mnist, or what the files in --data-dir are)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding the four idx files")


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.l2=1e-4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the (first) seed; default: the config's")
    parser.add_argument("--epochs", type=int, default=None, help="shorthand for --set train.epochs=N")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train N seeds (seed, seed+1, ...) in lockstep, in folders seed-K",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="of the training matmuls; auto: bf16 where the hardware has it natively",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="run the training step eagerly instead of through torch.compile",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    _data_options(parser)


def _data_info(args: argparse.Namespace) -> None:
    ds = data.load(args.dataset, args.data_dir, validation_size=args.validation_size)
    print(f"data set   {ds.name}")
    print(f"folder     {ds.folder}  (from {ds.folder_origin})")
    check = "pass (SHA-256 of the decompressed bytes)" if ds.verified else "skipped: no published checksums"
    print(f"checksums  {check}")
    for role, path in ds.files.items():
        print(f"  {role:<13} {path.name}")
    print(f"images     {ds.image_shape[0]}x{ds.image_shape[1]}, {len(ds.classes)} classes")
    width = max(6, *(len(c) for c in ds.classes))
    print()
    print(f"{'split':<11}{'images':>7}  " + " ".join(f"{c:>{width}}" for c in ds.classes))
    for split in data.SPLITS:
        counts = ds.class_counts(split)
        print(f"{split:<11}{sum(counts):>7}  " + " ".join(f"{n:>{width}}" for n in counts))


def _presets(args: argparse.Namespace) -> None:
    for name in config.preset_names():
        print(f"{name:<18} {config.load(name).description}")


def _run(args: argparse.Namespace) -> None:
    experiment = config.load(args.preset, _overrides(args))
    _execute(args, _entries(experiment, args.out or Path("runs") / experiment.name, args.seeds))


def _study(args: argparse.Namespace) -> None:
    names = args.presets or config.preset_names()
    experiments = [config.load(name, _overrides(args)) for name in names]
    entries = [entry for e in experiments for entry in _entries(e, args.out / e.name, args.seeds)]
    todo = [entry for entry in entries if not runs.is_finished(entry.folder)]
    if len(todo) < len(entries) and not args.quiet:
        print(f"{len(entries) - len(todo)} of {len(entries)} runs already finished in {args.out}")
    if todo:
        _execute(args, todo)
    html, md = report.build([args.out], args.out / "report.html")
    if not args.quiet:
        print(f"report: {html} (and {md.name})")


def _report(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    html, md = report.build(args.folders, args.out)
    print(f"report: {html} and {md} in {time.perf_counter() - start:.1f} s")


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set, with the shorthands --dataset, --epochs and --seed applied last."""
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f'dataset="{args.dataset}"')
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return overrides


def _entries(experiment: config.Experiment, folder: Path, seeds: int) -> list[runs.Entry]:
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if seeds == 1:
        return [runs.Entry(experiment, folder)]
    first = experiment.seed
    return [runs.Entry(experiment.with_seed(s), folder / f"seed-{s}") for s in range(first, first + seeds)]


def _execute(args: argparse.Namespace, entries: list[runs.Entry]) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MnistlabError("--device cuda: PyTorch sees no CUDA device here")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    precision = resolve_precision(args.precision, torch.device(device))
    engine = Engine(torch.device(device), args.compile, precision, progress=not args.quiet and sys.stderr.isatty())
    log = (lambda *_: None) if args.quiet else print
    runs.execute(entries, engine, args.data_dir, identify=bool(args.data_dir and not args.dataset), log=log)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mnistlab: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
