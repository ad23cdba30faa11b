"""The `mnistlab` command. Thin: it parses arguments, calls the library and prints."""

import argparse
import signal
import sys
import time
import warnings
from pathlib import Path

from mnistlab import __version__, api, data
from mnistlab.errors import MnistlabError
from mnistlab.train.engine import DEVICES, PRECISIONS, flush_denormals


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before any parallel work starts the threads that inherit it
    # SIGTERM unwinds like Ctrl-C, so that a half-built run folder is removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace runs of another config that mnistlab wrote in --out"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
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
    for name, description in api.presets().items():
        print(f"{name:<18} {description}")


def _training(args: argparse.Namespace) -> dict:
    """The options `run` and `study` share, as the library takes them."""
    return {
        "overrides": args.overrides,
        "seed": args.seed,
        "seeds": args.seeds,
        "overwrite": args.overwrite,
        "epochs": args.epochs,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "progress": not args.quiet and sys.stderr.isatty(),
        "log": (lambda _: None) if args.quiet else print,
    }


def _run(args: argparse.Namespace) -> None:
    api.run(args.preset, out=args.out, **_training(args))


def _study(args: argparse.Namespace) -> None:
    api.study(args.presets, out=args.out, **_training(args))


def _report(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    html, md = api.report(args.folders, args.out)
    print(f"report: {html} and {md} in {time.perf_counter() - start:.1f} s")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mnistlab: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
