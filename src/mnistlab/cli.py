"""mnistlab reproduces a classic lab report on MLPs for MNIST (Keras, 2020) from one command: every
experiment, its figures, our numbers beside the published ones, and what seed noise says of them.
Then it reads digits from pictures with the models it trained.

examples:
  mnistlab study                        the whole study, then its report: study/report.html
  mnistlab run provided --epochs 1      a first run in seconds (runs/provided)
  mnistlab sweep l2-sweep --seeds 3     one of the lab's claims as a curve, with seeds
  mnistlab serve runs/final             draw digits in the browser at http://127.0.0.1:8000/

Point MNISTLAB_DATA (or --data-dir) at a folder of MNIST's four idx files, or let mnistlab download them.
Each command has its own --help.
"""

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from mnistlab.data.catalog import CATALOG
from mnistlab.errors import MnistlabError
from mnistlab.extras import require
from mnistlab.train.choices import DEVICES, ENGINES, PRECISIONS
from mnistlab.version import __version__


def main(argv: list[str] | None = None) -> int:
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
    except BrokenPipeError:  # the reader of our output went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nowhere
        return 141
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (and where to look for help) rather than the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistlab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")

    data_cmd = commands.add_parser("data", help="inspect and verify a data set", description="Inspect a data set.")
    data_actions = data_cmd.add_subparsers(required=True, metavar="ACTION", title="actions")
    info = data_actions.add_parser(
        "info",
        help="where the files are, whether checksums pass, counts per class",
        description="Where the data set's files are, whether their checksums pass, and the images per class "
        "in each split.",
    )
    _data_options(info)
    info.add_argument(
        "--validation-size",
        type=int,
        default=10_000,
        metavar="N",
        help="images held out for validation (default: 10000)",
    )
    info.set_defaults(func=_data_info)

    presets = commands.add_parser(
        "presets", help="list the shipped experiments", description="The shipped experiments."
    )
    presets.set_defaults(func=_presets)

    calibrate = commands.add_parser(
        "calibrate",
        help="how this machine trains fastest: measured once, cached",
        description="Measure how this machine trains fastest (worker processes, threads, stack size, bf16), once; "
        "later commands read the cached answer.",
    )
    calibrate.add_argument("--redo", action="store_true", help="measure again, replacing the cached answer")
    calibrate.add_argument("--device", choices=DEVICES, default="auto", help="the device to calibrate (default: auto)")
    calibrate.set_defaults(func=_calibrate)

    run = commands.add_parser(
        "run",
        help="train one experiment with the lab's two-phase protocol",
        description="Train one experiment: phase 1 on 50k images with validation on 10k, phase 2 on all 60k with "
        "the test set. Writes a run folder (metrics, history, weights, figures, error analysis).",
        epilog="example: mnistlab run final --seeds 3 --set model.l2=1e-4",
    )
    run.add_argument("preset", metavar="PRESET|FILE.toml", help="a preset (mnistlab presets) or a config file")
    run.add_argument("--out", type=Path, default=None, help="the run folder (default: runs/NAME)")
    _training_options(run)
    run.set_defaults(func=_run)

    study = commands.add_parser(
        "study",
        help="every experiment of the lab report, then its report",
        description="Train every experiment of the lab report (or those named), skipping runs already "
        "finished, then write the report: OUT/report.html.",
    )
    study.add_argument(
        "--presets", nargs="+", default=None, metavar="NAME", help="the experiments (default: the lab report's)"
    )
    study.add_argument("--out", type=Path, default=Path("study"), help="the study folder (default: study)")
    _training_options(study)
    study.set_defaults(func=_study)

    sweep = commands.add_parser(
        "sweep",
        help="train a sweep's points and draw its validation curve",
        description="Train every point of a sweep (a shipped one, mnistlab sweeps, or a sweep file), skipping "
        "finished ones, then write sweep.csv and the report with its validation curve.",
    )
    sweep.add_argument("sweep", metavar="SWEEP|FILE.toml", help="a shipped sweep or a sweep file")
    sweep.add_argument("--out", type=Path, default=None, help="the sweep folder (default: sweeps/NAME)")
    _training_options(sweep)
    sweep.set_defaults(func=_sweep)

    sweeps = commands.add_parser("sweeps", help="list the shipped sweeps", description="The shipped sweeps.")
    sweeps.set_defaults(func=_sweeps)

    report = commands.add_parser(
        "report",
        help="the HTML report (and its Markdown twin) of run folders",
        description="Write a self-contained HTML report and its Markdown twin over run, multi-seed, study or "
        "sweep folders. Nothing is trained.",
    )
    report.add_argument(
        "folders", nargs="+", type=Path, metavar="FOLDER", help="run, multi-seed, study or sweep folders"
    )
    report.add_argument(
        "--out", type=Path, default=Path("report.html"), help="the HTML file, or FILE.md (default: report.html)"
    )
    report.set_defaults(func=_report)

    predict = commands.add_parser(
        "predict",
        help="read digits in pictures with a trained model",
        description="Read the digit in each picture (PNG, JPEG, BMP, GIF, WebP) with a run folder's model: a "
        "multi-seed folder's seeds vote. Pictures are made into 28x28 digits as MNIST's were made.",
        epilog="example: mnistlab predict runs/final photo.jpg --top 3",
    )
    predict.add_argument("model", nargs="?", type=Path, metavar="RUN_DIR", help="a run or multi-seed folder")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="picture files")
    predict.add_argument(
        "--onnx", type=Path, metavar="FILE", help="read with this exported ONNX file instead (no torch)"
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per picture")
    predict.add_argument(
        "--top", type=int, default=3, metavar="K", help="show the K most probable classes (default: 3)"
    )
    predict.add_argument("--with-image", action="store_true", help="with --json: also the 28x28 image the model read")
    predict.set_defaults(func=_predict)

    serve = commands.add_parser(
        "serve",
        help="a page to draw digits on, and a JSON API",
        description="Serve a page to draw digits on and a JSON API (POST /api/predict, /healthz, /docs) for a "
        "run folder's model. Needs the [serve] extra.",
    )
    serve.add_argument("model", type=Path, metavar="RUN_DIR", help="a run or multi-seed folder")
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)"
    )
    serve.add_argument("--port", type=_port, default=8000, help="the port (default: 8000)")
    serve.set_defaults(func=_serve)

    export = commands.add_parser(
        "export",
        help="the trained model as ONNX",
        description="Export a run folder's model, softmax included (a multi-seed folder's seeds voting), as "
        "ONNX for onnxruntime. Needs the [onnx] extra.",
    )
    export.add_argument("model", type=Path, metavar="RUN_DIR", help="a run or multi-seed folder")
    export.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="the ONNX file to write")
    export.add_argument("--overwrite", action="store_true", help="replace a file there that mnistlab did not write")
    export.set_defaults(func=_export)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=sorted(CATALOG),
        default=None,
        help="a catalogued data set (default: mnist, or what the files in --data-dir are)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="a folder of the four idx files (default: $MNISTLAB_DATA, or download)",
    )


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config key, e.g. --set model.l2=1e-4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the (first) seed (default: the config's, 0)")
    parser.add_argument("--epochs", type=int, default=None, help="shorthand for --set train.epochs=N")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train N seeds (seed, seed+1, ...) side by side, in folders seed-K (default: 1)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace runs of another config that mnistlab wrote in --out"
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to train (default: auto, CUDA where PyTorch sees it)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="of the training matmuls (default: auto, bf16 where the hardware has it natively)",
    )
    compiling = parser.add_mutually_exclusive_group()
    compiling.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const=True,
        default="auto",
        help="always compile the training step (default: where the run is long enough to win the compile back)",
    )
    compiling.add_argument(
        "--no-compile", dest="compile", action="store_const", const=False, help="always run the step eagerly"
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="mnistlab",
        help="what trains: mnistlab's engine, or keras for the lab's presets in Keras 3 (default: mnistlab)",
    )
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="train on the Dask scheduler at ADDRESS, e.g. tcp://10.0.0.5:8786 (default: $MNISTLAB_CLUSTER, or none)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes (default: as this machine's calibration says)",
    )
    parser.add_argument(
        "--track",
        default=None,
        metavar="URI",
        help="log every run to the MLflow tracking server at URI, e.g. http://127.0.0.1:5000 (default: "
        "$MLFLOW_TRACKING_URI, or none; the [mlflow] extra)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    _data_options(parser)


def _data_info(args: argparse.Namespace) -> None:
    from mnistlab import data

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
    from mnistlab import api

    for name, description in api.presets().items():
        print(f"{name:<18} {description}")


def _calibrate(args: argparse.Namespace) -> None:
    api = _training_library()
    print(api.calibrate(args.device, redo=args.redo, log=print).describe())


def _options(args: argparse.Namespace) -> dict:
    """The options of run, study and sweep, by the API's names, which are the command line's."""
    from mnistlab import api

    return {name: getattr(args, name) for name in api.OPTIONS if hasattr(args, name)}


def _training_library():
    """The library, with denormals flushed before any parallel work starts the threads that inherit it."""
    from mnistlab import api
    from mnistlab.train.engine import flush_denormals

    flush_denormals()
    return api


def _run(args: argparse.Namespace) -> None:
    run = _training_library().run(args.preset, **_options(args))
    if not args.quiet:
        print(f"next: mnistlab report {run.folder} --out {run.folder.name}-report.html   (this run beside the lab's)")


def _study(args: argparse.Namespace) -> None:
    study = _training_library().study(args.presets, **_options(args))
    if not args.quiet and len(study):
        model = study["final"] if "final" in study.names else next(iter(study))
        print(f"next: open {args.out / 'report.html'} in a browser, or draw digits for mnistlab serve {model.folder}")


def _sweep(args: argparse.Namespace) -> None:
    _training_library().sweep(args.sweep, **_options(args))


def _sweeps(args: argparse.Namespace) -> None:
    from mnistlab import api

    for name, description in api.sweeps().items():
        print(f"{name:<20} {description}")


def _report(args: argparse.Namespace) -> None:
    from mnistlab import api

    start = time.perf_counter()
    html, md = api.report(args.folders, args.out)
    print(f"report: {html} and {md} in {time.perf_counter() - start:.1f} s")


def _predict(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise MnistlabError(f"--top must be at least 1, got {args.top}")
    if args.onnx:
        require("mnistlab predict --onnx", "onnxruntime")
        from mnistlab.serving.onnx import OnnxPredictor

        images = [p for p in (args.model, *args.images) if p is not None]  # no RUN_DIR: every path is an image
        reader = OnnxPredictor(args.onnx)
    elif args.model is None:
        raise MnistlabError("predict: give a RUN_DIR, or --onnx FILE")
    else:
        from mnistlab.serving.predictor import Predictor

        images, reader = args.images, Predictor(args.model)
    for path, prediction in zip(images, reader.predict_files(images, args.top), strict=True):
        if args.json:
            print(json.dumps({"file": str(path), **prediction.to_json(args.with_image)}))
        else:
            print(f"{path}: {prediction.describe()}")


def _serve(args: argparse.Namespace) -> None:
    require("mnistlab serve", "fastapi", "fastapi_offline", "uvicorn", "python_multipart")
    from mnistlab.serving.predictor import Predictor
    from mnistlab.serving.server import create_app, serve

    app = create_app(Predictor(args.model), str(args.model))
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(app, args.host, args.port)


def _export(args: argparse.Namespace) -> None:
    require("mnistlab export", "onnx", "onnxscript")
    from mnistlab.serving.onnx import export

    export(args.model, args.onnx, args.overwrite)
    print(f"{args.onnx}: the model of {args.model}, with its softmax, for onnxruntime")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: ports are 0 to 65535")
    return port


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mnistlab: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
