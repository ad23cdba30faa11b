"""Runs in MLflow (`--track URI`, or $MLFLOW_TRACKING_URI): what a command wrote, logged to the tracking
server that a team already uses, once the command has written it (the `[mlflow]` extra).

Every run folder (a seed's run) becomes an MLflow run: the resolved config as parameters, every epoch's
numbers as metrics (phase 1 with Keras' names, loss, accuracy, val_loss, val_accuracy; phase 2 as
retrain_*), the final clean scores (`test_accuracy`, ...), tags (preset, seed, stack size, device,
engine, mnistlab's version, and for a pruned run when and why), and its figures and files as
artifacts. A study, a sweep and a run of several seeds are a parent run with those runs as its children,
and the parent holds the report. The server is asked before anything trains, so an unreachable one is
one line and costs nothing; logging reads only the folders, so it can never change them. A run already
logged (the same folder, trained at the same time) is not logged twice when a command runs again.
"""

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from mnistlab.data.catalog import SPLITS
from mnistlab.errors import MnistlabError
from mnistlab.extras import require
from mnistlab.reporting import build
from mnistlab.studies.folder import RunFolder
from mnistlab.version import __version__

ENV_VAR = "MLFLOW_TRACKING_URI"
EXPERIMENT = "mnistlab"  # unless $MLFLOW_EXPERIMENT_NAME names another
CONNECT_SECONDS = 5
BATCH = 500  # metrics per request; MLflow takes at most 1000 (and 100 parameters)
KEY = "mnistlab.run"  # the tag that says which folder, trained when, an MLflow run is
PHASES = {  # history.csv's columns -> MLflow's metric names, per phase: Keras' in phase 1
    1: {"loss": "loss", "accuracy": "accuracy", "eval_loss": "val_loss", "eval_accuracy": "val_accuracy"},
    2: {
        "loss": "retrain_loss",
        "accuracy": "retrain_accuracy",
        "eval_loss": "retrain_test_loss",
        "eval_accuracy": "retrain_test_accuracy",
    },
}


def uri(given: str | None) -> str | None:
    """The tracking server asked for: `--track`, else $MLFLOW_TRACKING_URI, else none."""
    return given or os.environ.get(ENV_VAR) or None


@contextlib.contextmanager
def _environment(**settings: str) -> Iterator[None]:
    """MLflow's settings (environment variables) for a while."""
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(address: str):
    """A client of the tracking server at `address` that has answered: else one line, before any training."""
    require("--track", "mlflow")
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=address)
    try:
        # One short try: MLflow's client retries for minutes by default.
        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(CONNECT_SECONDS)):
            found.search_experiments(max_results=1)
    except Exception as exc:  # connection refused, a timeout, a bad URI, a server error: MLflow raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlabError(f"--track {address}: no MLflow tracking server answers there ({first[:200]})") from None
    return found


def log(tracker, out: Path, kind: str) -> int:
    """Log what a command wrote in `out` (a run folder, a multi-seed folder, a study or a sweep folder):
    returns how many runs were logged now. MLflow's own line per run is left out: the caller says one."""
    with _environment(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"):
        return _log(tracker, out, kind)


def _log(tracker, out: Path, kind: str) -> int:
    experiment = _experiment(tracker)
    runs = _runs(out)
    parent = None
    if kind != "run" or len(runs) > 1 or runs[0] != RunFolder(out):
        parent = _parent(tracker, experiment, out, kind)
    logged = 0
    for folder in runs:
        if _logged(tracker, experiment, folder) is None:
            _log_run(tracker, experiment, folder, parent, out)
            logged += 1
    if parent is None and runs and logged:
        _log_report(tracker, _logged(tracker, experiment, runs[0]), [out])
    return logged


def _experiment(tracker) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = tracker.get_experiment_by_name(name)
    return found.experiment_id if found else tracker.create_experiment(name)


def _runs(out: Path) -> list[RunFolder]:
    """Every run folder below `out` (itself, its seeds, a study's or a sweep's runs), finished or pruned."""
    if found := RunFolder(out).trained_runs():
        return found
    return [run for p in sorted(out.iterdir()) if p.is_dir() for run in RunFolder(p).trained_runs()]


def _identity(folder: RunFolder) -> str:
    started = folder.read_environment().get("started", "")
    return f"{folder.path.resolve()}@{started}"


def _logged(tracker, experiment: str, folder: RunFolder) -> str | None:
    """The MLflow run that this run folder, as trained, already is, or None."""
    found = tracker.search_runs([experiment], filter_string=f"tags.`{KEY}` = '{_quoted(_identity(folder))}'")
    return found[0].info.run_id if found else None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _parent(tracker, experiment: str, out: Path, kind: str) -> str:
    """The parent run of a study, a sweep or a multi-seed run: found again for the same folder, with the report."""
    identity = f"{out.resolve()}@{kind}"
    found = tracker.search_runs([experiment], filter_string=f"tags.`{KEY}` = '{_quoted(identity)}'")
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {KEY: identity, "mnistlab.kind": kind, "mnistlab.version": __version__, "mnistlab.folder": str(out)}
        run_id = tracker.create_run(experiment, tags=tags, run_name=f"{kind} {out.name}").info.run_id
    _log_report(tracker, run_id, [out])
    for name in ("sweep.csv", "sweep.json", "aggregate.json"):
        if (out / name).is_file():
            tracker.log_artifact(run_id, str(out / name))
    tracker.set_terminated(run_id, "FINISHED")
    return run_id


def _log_report(tracker, run_id: str, folders: list[Path]) -> None:
    """The report over `folders`, built aside and logged with its figures under report/."""
    with tempfile.TemporaryDirectory() as scratch:
        build.build(folders, Path(scratch) / "report.html")
        tracker.log_artifacts(run_id, scratch, "report")


def _log_run(tracker, experiment: str, folder: RunFolder, parent: str | None, out: Path) -> None:
    from mlflow.entities import Metric, Param

    environment = folder.read_environment()
    pruned = folder.read_pruned() if folder.is_pruned else None
    metrics = folder.read_metrics() if pruned is None else None
    preset, seed = (pruned.preset, pruned.seed) if pruned else (metrics.preset, metrics.seed)
    name = str(folder.path.relative_to(out)) if folder.path != out else out.name
    tags = {
        KEY: _identity(folder),
        "mnistlab.preset": preset,
        "mnistlab.seed": str(seed),
        "mnistlab.stack_size": str(environment.get("stack_size", "")),
        "mnistlab.device": str(environment.get("device", "")),
        "mnistlab.engine": str(environment.get("engine", "")),
        "mnistlab.version": str(environment.get("mnistlab", __version__)),
        "mnistlab.folder": str(folder.path),
    }
    if pruned:
        tags["mnistlab.pruned"] = f"after epoch {pruned.epoch}: {pruned.reason}"
    if parent:
        tags["mlflow.parentRunId"] = parent
    started = _milliseconds(environment.get("started"))
    run = tracker.create_run(experiment, start_time=started, tags=tags, run_name=f"{name} ({preset}, seed {seed})")
    run_id = run.info.run_id
    params = [Param(key, str(value)[:6000]) for key, value in _flat(folder.read_config())]
    for start in range(0, len(params), 100):
        tracker.log_batch(run_id, params=params[start : start + 100])
    now = int(time.time() * 1000)
    history = folder.read_history()
    numbers = [
        Metric(PHASES[phase][field], getattr(epoch, field), now, epoch.epoch)
        for phase, epochs in ((1, history.phase1), (2, history.phase2))
        for epoch in epochs
        for field in PHASES[phase]
    ]
    scores = pruned.scores if pruned else metrics.scores
    numbers += [
        Metric(f"{split}_{what}", getattr(scores[split], what), now, 0)
        for split in SPLITS
        if split in scores
        for what in ("loss", "accuracy")
    ]
    for start in range(0, len(numbers), BATCH):
        tracker.log_batch(run_id, metrics=numbers[start : start + BATCH])
    for path in sorted(folder.path.iterdir()):
        if path.is_file() and path.suffix in (".png", ".json", ".csv", ".toml", ".txt"):
            tracker.log_artifact(run_id, str(path))
    ended = started + int(1000 * float(environment.get("wall_seconds", 0))) if started else None
    tracker.set_terminated(run_id, "FINISHED", end_time=ended)


def _flat(table: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A config's keys as MLflow parameters: `model.hidden`, `train.epochs`, ..."""
    pairs = []
    for key, value in table.items():
        if isinstance(value, dict):
            pairs += _flat(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _milliseconds(stamp: str | None) -> int | None:
    """environment.json's start time (`2026-12-06T19:37:02+0000`) in milliseconds since the epoch."""
    if not stamp:
        return None
    try:
        return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000)
    except ValueError:
        return None
