"""The `mnistlab` command. Thin: it parses arguments, calls the library and prints."""

import argparse
import sys
import warnings
from pathlib import Path

from mnistlab import __version__, data
from mnistlab.errors import MnistlabError


def main(argv: list[str] | None = None) -> int:
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

    data_cmd = commands.add_parser("data", help="inspect, verify or fetch a data set")
    data_sub = data_cmd.add_subparsers(required=True, metavar="ACTION")
    info = data_sub.add_parser("info", help="where the files are, whether checksums pass, counts per class")
    _data_options(info)
    info.set_defaults(func=_data_info)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=sorted(data.CATALOG),
        default=None,
        help="a catalogued data set (default: mnist, or whatever the files in --data-dir are)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding the four idx files")
    parser.add_argument("--validation-size", type=int, default=10_000, metavar="N")


def _load(args: argparse.Namespace) -> data.Dataset:
    return data.load(args.dataset, args.data_dir, validation_size=args.validation_size)


def _data_info(args: argparse.Namespace) -> None:
    ds = _load(args)
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mnistlab: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
