"""The library behind the `mnistlab` command, for notebooks and scripts: the command line parses its
arguments and calls these functions, nothing more.

    import mnistlab
    run = mnistlab.run("final", epochs=5, seeds=3, l2=1e-4)   # runs/final, three seeds side by side
    run.test_accuracy, run.history, run.plot()
    study = mnistlab.study(epochs=5)                          # study/, and study/report.html
    study.table()
    mnistlab.load_run("runs/final").predict(["digit.png"])

Every function takes its options as keyword arguments, and a run's config keys by their own names
(`l2=1e-4`, `batch_size=128`, `patience=10`) or as `set={"model.l2": 1e-4}`; they are checked as the
command line's `--set` is, and a wrong one is a one-line `mnistlab.ConfigError` (a ValueError).
"""

import difflib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.extras import require
from mnistlab.files import check_output
from mnistlab.reporting import build, tracking
from mnistlab.results import Run, Study, SweepResults
from mnistlab.spec import Experiment, config
from mnistlab.spec.sweep import Point, Sweep, draw, sweep_names
from mnistlab.spec.sweep import load as load_sweep
from mnistlab.studies import ownership, sweep_folder
from mnistlab.studies.execute import Placement, execute
from mnistlab.studies.executors import CLUSTER_ENV_VAR
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.plan import PlannedRun, check_size, seed_runs
from mnistlab.studies.pruning import RoundView, stands
from mnistlab.train import calibration
from mnistlab.train.choices import COMPILES, ENGINES, EngineOptions
from mnistlab.train.engine import Engine
from mnistlab.train.keras_engine import lacks

Log = Callable[[str], None]
Paths = Path | str
Changes = Mapping[str, object] | Sequence[str] | None


def presets() -> dict[str, str]:
    """The shipped experiments: name -> description (the lab report's, and `best`)."""
    return {name: config.load(name).description for name in config.preset_names()}


def sweeps() -> dict[str, str]:
    """The shipped sweeps: name -> description."""
    return {name: load_sweep(name).description for name in sweep_names()}


def calibrate(device: str = "auto", redo: bool = False, log: Log | None = None) -> calibration.Calibration:
    """How this machine trains fastest (see `train.calibration`): cached, or measured now; `redo` measures again."""
    return calibration.calibration(Engine.create(device).device, redo=redo, log=log or _quiet)


def run(
    preset: str,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    seeds: int = 1,
    out: Paths | None = None,
    set: Changes = None,
    dataset: str | None = None,
    data_dir: Paths | None = None,
    overwrite: bool = False,
    device: str = "auto",
    precision: str = "auto",
    compile: bool | str = "auto",
    engine: str = "mnistlab",
    workers: int | None = None,
    cluster: str | None = None,
    track: str | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    **keys: object,
) -> Run:
    """Train one experiment with the lab's two-phase protocol and return it, read back from its folder.

    preset: a preset (`mnistlab.presets()`) or a TOML config file.
    epochs, seed: shorthands for `train.epochs` and `seed`; `**keys`: any config key by its own name
    (`l2=1e-4`, `dropout=0.1`, `batch_size=128`); `set`: keys by their full names, `{"model.l2": 1e-4}` (or
    "model.l2=1e-4" strings, as the command line's --set takes them).
    seeds: train this many seeds (seed, seed+1, ...) side by side, in folders seed-K.
    out: the run folder (default runs/NAME): a new path, an empty folder, or a run of mnistlab's of the
    same config, which is trained again; one of another config only with `overwrite`.
    dataset, data_dir: the data set, and the folder of its four idx files (default: $MNISTLAB_DATA, else
    mnistlab's user cache, downloading there).
    device ("auto", "cpu", "cuda"), precision ("auto", "fp32", "bf16"), compile (True, False, or "auto":
    where the run is long enough to win the compile back): how to train. engine: "mnistlab", or "keras"
    to train the lab's presets with Keras 3 as the lab wrote them (the [keras] extra).
    workers: local worker processes (default: as this machine's calibration says); cluster: the address
    of a Dask scheduler to train on (default: $MNISTLAB_CLUSTER). track: an MLflow tracking server's
    URI to log every run to (default: $MLFLOW_TRACKING_URI; the [mlflow] extra).
    progress: the live bar (default: on in a notebook or a terminal); quiet: no bar and no messages.
    """
    request = _request(locals(), keys)
    spec = request.experiment(preset)
    folder = RunFolder(check_output(out or Path("runs") / spec.name, folder=True))
    tracker = request.tracker()
    with ownership.lock(folder.path):
        planned = _claim(spec, folder, request)
        request.train(planned)
        request.track(tracker, folder.path, "run")
    return Run.load(folder.path)


def study(
    presets: Sequence[str] | None = None,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    seeds: int = 1,
    out: Paths = "study",
    set: Changes = None,
    dataset: str | None = None,
    data_dir: Paths | None = None,
    overwrite: bool = False,
    device: str = "auto",
    precision: str = "auto",
    compile: bool | str = "auto",
    engine: str = "mnistlab",
    workers: int | None = None,
    cluster: str | None = None,
    track: str | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    **keys: object,
) -> Study:
    """Every experiment of the lab report (or those named), skipping runs already finished in `out`, then
    the report, `out`/report.html. Returns the study, read back from its folder. The options are `run`'s;
    they change every experiment alike.

    A finished run of another config (other epochs, say) is refused unless `overwrite`, which trains it
    again; so is a folder that mnistlab did not write. One process writes a study folder at a time.
    """
    request, out = _request(locals(), keys), Path(out)
    specs = [request.experiment(name) for name in presets or config.study_presets()]
    check_size(len(specs) * request.seeds, f"{len(specs)} experiments x {request.seeds:,} seeds")
    check_output(out, folder=True)
    tracker = request.tracker()
    with ownership.lock(out):
        ownership.prepare(out, "study", overwrite=request.overwrite)
        planned = [p for spec in specs for p in _claim(spec, RunFolder(out / spec.name), request)]
        request.train_unfinished(planned, out)
        html, md = build.build([out], out / "report.html")
        request.track(tracker, out, "study")
    request.log(f"report: {html} (and {md.name})")
    return Study.load(out)


def sweep(
    sweep: str,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    seeds: int = 1,
    out: Paths | None = None,
    set: Changes = None,
    dataset: str | None = None,
    data_dir: Paths | None = None,
    overwrite: bool = False,
    device: str = "auto",
    precision: str = "auto",
    compile: bool | str = "auto",
    engine: str = "mnistlab",
    workers: int | None = None,
    cluster: str | None = None,
    track: str | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    **keys: object,
) -> SweepResults:
    """Train every point of a sweep (a shipped one, `mnistlab.sweeps()`, or a sweep TOML file), `seeds`
    seeds each, skipping runs already finished in `out` (default sweeps/NAME); then `sweep.csv` and the
    report (`out`/report.html) with its validation curve. The options are `run`'s: the sweep's own `set`
    comes first, these options next, each point's values last."""
    request, spec = _request(locals(), keys), load_sweep(sweep)
    out = Path(out or Path("sweeps") / spec.name)

    def runs_of(point: Point, folder: RunFolder) -> list[PlannedRun]:
        experiment = request.experiment(spec.base, spec.overrides, point.overrides())
        return _claim(experiment, folder, request, label=f"{spec.name} {point.label}")

    if spec.search.method == "optuna":
        require("an Optuna search", "optuna")
    if spec.search.prunes and request.engine.engine == "keras":
        raise ConfigError(f"sweep {spec.name}: --engine keras trains each run whole; a pruner needs mnistlab's engine")
    check_size(spec.size * request.seeds, f"sweep {spec.name}, {spec.size:,} points x {request.seeds:,} seeds")
    _check_points(spec, request)
    check_output(out, folder=True)
    tracker = request.tracker()
    with ownership.lock(out):
        ownership.prepare(out, "sweep", overwrite=request.overwrite)
        if spec.search.method == "optuna":
            base = request.experiment(spec.base, spec.overrides)
            train = lambda runs, view: request.train_unfinished(runs, out, view)  # noqa: E731
            longest = sweep_folder.max_epochs(spec, base.hyperparameters.epochs)
            points = sweep_folder.search(spec, out, runs_of, train, request.per_round(base.batch_size), longest)
        else:
            points = sweep_folder.plan(spec.points(), out, runs_of)
            request.train_unfinished([run for p in points for run in p.runs], out)
        sweep_folder.write_record(spec, out, points)
        table = sweep_folder.write_table(out)
        html, md = build.build([out], out / "report.html")
        request.track(tracker, out, "sweep")
    request.log(f"{table}, and the report: {html} (and {md.name})")
    return SweepResults(out)


def report(folders: Sequence[Paths], out: Paths = "report.html") -> tuple[Path, Path]:
    """The self-contained HTML report over run, multi-seed, study or sweep folders, and its Markdown twin
    beside it (or `out` the Markdown, with the HTML beside it, for a name ending in .md). A folder that
    cannot be read is named in a warning and left out; the report is still written, and then a
    MnistlabError says how many were left out."""
    return build.build([Path(f) for f in folders], Path(out))


def load_run(folder: Paths) -> Run:
    """A finished run, one seed or several, read back from its folder."""
    return Run.load(folder)


def load_study(folder: Paths) -> Study:
    """Every finished experiment in a study folder (or any folder of run folders), read back."""
    return Study.load(folder)


# --- what run, study and sweep share ---------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What a call of run, study or sweep asks, once checked: how each experiment changes, and how the
    runs train. Built from the call's keyword arguments by `_request`, the one place that reads them."""

    changes: tuple[str, ...]  # `key=value`, applied after a preset's own and a sweep's
    seeds: int
    overwrite: bool
    dataset: str | None
    data_dir: Path | None
    engine: EngineOptions
    cluster: str | None
    workers: int | None
    progress: bool
    log: Log
    tracking: str | None  # an MLflow tracking server's URI

    def tracker(self):
        """A client of the MLflow tracking server asked for, which has answered; None if none was asked."""
        return tracking.client(self.tracking) if self.tracking else None

    def track(self, tracker, out: Path, kind: str) -> None:
        if tracker is not None:
            self.log(f"{tracking.log(tracker, out, kind)} runs logged to MLflow at {self.tracking}")

    def experiment(self, preset: str, first: Sequence[str] = (), last: Sequence[str] = ()) -> Experiment:
        """The preset with `first` (a sweep's own changes), then this request's, then `last` (a point's)."""
        return config.load(preset, [*first, *self.changes, *last])

    def train(self, planned: list[PlannedRun], pruning: RoundView | None = None) -> None:
        engine = Engine.create(self.engine.device, self.engine.precision)  # checks the names before anything runs
        tuned = calibration.calibration(engine.device, log=self.log)
        workers = 1 if self.engine.engine == "keras" else self.workers  # Keras trains each run alone, here
        placement = Placement(tuned, self.engine, self.cluster, workers)
        # Files in a --data-dir say which data set they are, unless a data set was named.
        identify = bool(self.data_dir and not self.dataset)
        execute(planned, placement, self.data_dir, identify, self.log, self.progress, pruning)

    def train_unfinished(self, planned: list[PlannedRun], out: Path, pruning: RoundView | None = None) -> None:
        todo = [p for p in planned if not _finished_as_planned(p, pruning)]
        if todo and len(todo) < len(planned) and pruning is not None:
            # A pruned round's judges weigh each trial on all its seeds, against the trials stacked beside
            # it: the round trains whole again, as the search interrupted in it did.
            self.log(f"{len(planned) - len(todo)} of the round's {len(planned)} runs were written before the")
            self.log("  search stopped: the round trains again from its start, and what was written stands")
            unwritten = {p.folder.path for p in todo}
            todo = [p if p.folder.path in unwritten else replace(p, replay=True) for p in planned]
        elif len(todo) < len(planned):
            self.log(f"{len(planned) - len(todo)} of {len(planned)} runs already finished in {out}")
        if todo:
            self.train(todo, pruning)

    def per_round(self, batch_size: int | None) -> int:
        """How many models one round of stacks trains at once on this machine: an Optuna search asks that many."""
        tuned = calibration.calibration(Engine.create(self.engine.device).device, log=self.log)
        return (max(1, tuned.stack_rows // batch_size) if batch_size else 1) * tuned.workers


OPTIONS = ("epochs", "seed", "seeds", "out", "set", "dataset", "data_dir", "overwrite", "device", "precision")
OPTIONS += ("compile", "engine", "workers", "cluster", "track", "progress", "quiet")


def _request(given: dict, keys: dict) -> _Request:
    """The request of a call, from its keyword arguments (`locals()` of run, study or sweep) and the
    config keys it named by their own names; one-line ConfigErrors for anything wrong."""
    changes = [*_set_changes(given["set"]), *_key_changes(keys)]
    shorthands = {"dataset": given["dataset"], "train.epochs": given["epochs"], "seed": given["seed"]}
    changes += [f"{key}={config.toml_value(value)}" for key, value in shorthands.items() if value is not None]
    _check_whole("seeds", given["seeds"], 1)
    if given["workers"] is not None:
        _check_whole("workers", given["workers"], 1)
    quiet = bool(given["quiet"])
    progress = given["progress"]
    return _Request(
        changes=tuple(changes),
        seeds=given["seeds"],
        overwrite=bool(given["overwrite"]),
        dataset=given["dataset"],
        data_dir=Path(given["data_dir"]) if given["data_dir"] else None,
        engine=_engine_options(given),
        cluster=given["cluster"] or os.environ.get(CLUSTER_ENV_VAR) or None,
        workers=given["workers"],
        progress=not quiet and (interactive() if progress is None else bool(progress)),
        log=_quiet if quiet else print,
        tracking=tracking.uri(given["track"]),
    )


def _set_changes(changes: Changes) -> list[str]:
    """`set` as `dotted=value` changes: a mapping of full key names to values, or such strings."""
    if changes is None:
        return []
    if isinstance(changes, Mapping):
        return [f"{key}={config.toml_value(_plain(value))}" for key, value in changes.items()]
    if isinstance(changes, str) or not all(isinstance(c, str) for c in changes):
        raise ConfigError('set takes {"model.l2": 1e-4, ...} or ["model.l2=1e-4", ...]')
    return list(changes)


def _key_changes(keys: dict) -> list[str]:
    """Config keys given by their own names, as `dotted=value`; a name that is neither an option nor a key
    is a ConfigError that names the likely one, and every valid one."""
    known = config.short_keys()
    for name in keys:
        if name not in known:
            close = difflib.get_close_matches(name, [*OPTIONS, *known], n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown option or config key {name!r}{hint}; options: {', '.join(OPTIONS)}; "
                f"config keys: {', '.join(known)}"
            )
    for name, value in keys.items():
        config.check_value(known[name], _plain(value), f"{name}=")
    return [f"{known[name]}={config.toml_value(_plain(value))}" for name, value in keys.items()]


def _plain(value):
    """A numpy scalar as the Python number it holds; anything else as it is."""
    return value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value


def _engine_options(given: dict) -> EngineOptions:
    """The engine asked for, checked: Keras trains the lab's presets alone, in this process."""
    options = EngineOptions(given["device"], given["precision"], _compile_choice(given["compile"]), given["engine"])
    if options.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {options.engine!r}")
    if options.engine == "keras":
        require("--engine keras", "keras")
        if given["cluster"] or (given["workers"] or 1) > 1:
            raise ConfigError("--engine keras trains in this process: Keras has no lockstep stacks to hand out")
        if options.device == "cuda":
            raise ConfigError("--engine keras trains on the CPU here")
    return options


def _compile_choice(value) -> bool | str:
    if value not in COMPILES or isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f'compile must be True, False or "auto", got {value!r}')
    return value


def _check_whole(name: str, value, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"{name} must be a whole number, at least {least}, got {value!r}")


def interactive() -> bool:
    """Whether someone is watching: a Jupyter kernel (as Keras' verbose=1 assumes), or a terminal on stderr."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell" or sys.stderr.isatty()


def _quiet(_: str) -> None:
    pass


def _claim(spec: Experiment, folder: RunFolder, request: _Request, label: str = "") -> list[PlannedRun]:
    """The runs of one experiment in `folder`, once it is known to be a place mnistlab may write them."""
    if request.engine.engine == "keras" and (
        lacking := lacks(spec.hyperparameters, spec.crop, request.engine.precision)
    ):
        raise ConfigError(
            f"{spec.name}: Keras has no {lacking}, which only mnistlab's engine does; drop --engine keras"
        )
    planned = seed_runs(spec, folder, request.seeds, label)
    if request.seeds > 1:
        # A multi-seed folder is one experiment: its marker holds the config of seed 0.
        ownership.prepare(folder.path, "seeds", config.to_toml(spec.with_seed(0)), request.overwrite)
    for run in planned:
        ownership.check_target(run.folder.path, "run", config.to_toml(run.experiment), request.overwrite)
    return planned


def _check_points(spec: Sweep, request: _Request) -> None:
    """Every point's config, or for a search each axis' bounds, checked before anything is written."""
    points = spec.points() or [Point(tuple(draw(axis, u) for axis in spec.axes)) for u in (0.0, 1.0)]
    for point in points:
        try:
            request.experiment(spec.base, spec.overrides, point.overrides())
        except MnistlabError as exc:
            raise ConfigError(f"sweep {spec.name}, point {point.label}: {exc}") from None


def _finished_as_planned(run: PlannedRun, pruning: RoundView | None = None) -> bool:
    """Whether the run's folder holds a finished run of its config (one of another config was refused or
    is to be overwritten by then), or in a pruned search one that its pruner stopped."""
    done = run.folder.is_finished or (
        pruning is not None and run.folder.is_pruned and stands(run.folder, pruning.search)
    )
    found = run.folder.read_marker()
    return done and found is not None and found["config"] == config.to_toml(run.experiment)
