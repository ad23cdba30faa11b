"""The library behind the `mnistlab` command, for notebooks and scripts: the CLI parses its arguments and
calls these functions, nothing more.

    import mnistlab
    runs = mnistlab.run("final", epochs=5, seeds=3, out="runs/final")  # one Run per seed
    runs[0].metrics.scores["test"].accuracy
    mnistlab.report(["runs/final"], out="report.html")
    again = mnistlab.load_run("runs/final/seed-0")
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.extras import require
from mnistlab.files import check_output
from mnistlab.reporting import build, experiments
from mnistlab.spec import Experiment, config
from mnistlab.spec import sweep as sweep_spec
from mnistlab.study import ownership, sweep_folder
from mnistlab.study.execute import Placement, execute
from mnistlab.study.executors import CLUSTER_ENV_VAR
from mnistlab.study.folder import Run, RunFolder
from mnistlab.study.plan import PlannedRun, check_size, seed_runs
from mnistlab.train import calibration
from mnistlab.train.engine import Engine

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def presets() -> dict[str, str]:
    """The shipped experiments: name -> description."""
    return {name: config.load(name).description for name in config.preset_names()}


def calibrate(device: str = "auto", redo: bool = False, log: Log = _quiet) -> calibration.Calibration:
    """How this machine trains fastest (see `train.calibration`): cached, or measured now; `redo` measures again."""
    return calibration.calibration(Engine.create(device).device, redo=redo, log=log)


def experiment(
    preset: str,
    overrides: list[str] = (),
    *,
    dataset: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    last: list[str] = (),
) -> Experiment:
    """A preset or TOML file, resolved, with `key=value` overrides, then the shorthands, then `last`."""
    shorthands = [f'dataset="{dataset}"'] if dataset else []
    shorthands += [f"train.epochs={epochs}"] if epochs is not None else []
    shorthands += [f"seed={seed}"] if seed is not None else []
    return config.load(preset, [*overrides, *shorthands, *last])


@dataclass(frozen=True)
class Options:
    """What `run` and `study` share: how each experiment is changed, and how it is trained.

    overrides: `section.key=value` strings, as --set takes them; seed, epochs, dataset: shorthands for
    three of them. seeds: how many seeds of each experiment, trained in lockstep. data_dir: where the data
    set is (else $MNISTLAB_DATA or the user cache). overwrite: replace runs of mnistlab's of another config.
    device, precision, compile: the engine (see `train.engine.Engine.create`). cluster: the address of a
    Dask scheduler to train on (else $MNISTLAB_CLUSTER, else this machine). workers: local worker
    processes (default: as the machine's calibration says). progress: Keras-like bars. log: where to say
    what is being trained.
    """

    overrides: tuple[str, ...] = ()
    seed: int | None = None
    seeds: int = 1
    epochs: int | None = None
    dataset: str | None = None
    data_dir: Path | None = None
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = True
    cluster: str | None = None
    workers: int | None = None
    progress: bool = False
    log: Log = _quiet

    def experiment(self, preset: str, first: list[str] = (), last: list[str] = ()) -> Experiment:
        """The preset with `first`, then these options' overrides, then `last` applied."""
        overrides = [*first, *self.overrides]
        return experiment(preset, overrides, dataset=self.dataset, epochs=self.epochs, seed=self.seed, last=last)

    def train(self, planned: list[PlannedRun]) -> None:
        if self.workers is not None and self.workers < 1:
            raise MnistlabError(f"workers must be at least 1, got {self.workers}")
        engine = Engine.create(self.device, self.precision, self.compile)  # checks the names before anything runs
        cluster = self.cluster or os.environ.get(CLUSTER_ENV_VAR) or None
        tuned = calibration.calibration(engine.device, log=self.log)
        placement = Placement(tuned, self.device, self.precision, self.compile, cluster, self.workers)
        # Files in a --data-dir say which data set they are, unless a data set was named.
        identify = bool(self.data_dir and not self.dataset)
        data_dir = Path(self.data_dir) if self.data_dir else None
        execute(planned, placement, data_dir, identify=identify, log=self.log, progress=self.progress)


def run(preset: str, *, out: Path | str | None = None, **options) -> list[Run]:
    """Train one experiment with the lab's two-phase protocol, `seeds` seeds in lockstep; write its run
    folder (default runs/NAME; seed-K folders below it for several seeds) and return the runs, by seed.
    `options` are those of `Options`.

    `out` may be a new path, an empty folder, or a run folder of mnistlab's of the same config, which is
    trained again; one of another config only with `overwrite`. Anything else there is refused.
    """
    options = Options(**options)
    spec = options.experiment(preset)
    folder = RunFolder(check_output(out or Path("runs") / spec.name, folder=True))
    with ownership.lock(folder.path):
        planned = _claim_runs(spec, folder, options.seeds, options.overwrite)
        options.train(planned)
    return [Run.load(p.folder) for p in planned]


def _claim_runs(spec: Experiment, folder: RunFolder, seeds: int, overwrite: bool) -> list[PlannedRun]:
    """The runs of one experiment in `folder`, once it is known to be a place mnistlab may write them."""
    planned = seed_runs(spec, folder, seeds)
    if seeds > 1:
        # A multi-seed folder is one experiment: its marker holds the config of seed 0.
        ownership.prepare(folder.path, "seeds", config.to_toml(spec.with_seed(0)), overwrite)
    for run in planned:
        ownership.check_target(run.folder.path, "run", config.to_toml(run.experiment), overwrite)
    return planned


def study(presets: list[str] | None = None, *, out: Path | str = "study", **options) -> list[Run]:
    """Every experiment of the lab report (or those named), skipping runs already finished in `out`, then
    the report (`out`/report.html). Returns every run of the study. `options` are those of `Options`.

    A finished run of another config (other epochs, say) is refused unless `overwrite`, which trains it
    again; so is a folder that mnistlab did not write. One process writes a study folder at a time.
    """
    options, out = Options(**options), Path(out)
    specs = [options.experiment(name) for name in presets or config.study_presets()]
    check_size(len(specs) * options.seeds, f"{len(specs)} experiments x {options.seeds:,} seeds")
    check_output(out, folder=True)
    with ownership.lock(out):
        ownership.prepare(out, "study", overwrite=options.overwrite)
        planned = [
            p for spec in specs for p in _claim_runs(spec, RunFolder(out / spec.name), options.seeds, options.overwrite)
        ]
        _train_unfinished(planned, options, out)
        html, md = build.build([out], out / "report.html")
    options.log(f"report: {html} (and {md.name})")
    return [Run.load(p.folder) for p in planned]


def sweeps() -> dict[str, str]:
    """The shipped sweeps: name -> description."""
    return {name: sweep_spec.load(name).description for name in sweep_spec.sweep_names()}


def sweep(name_or_file: str, *, out: Path | str | None = None, **options) -> list[Run]:
    """Train every point of a sweep (a shipped one or a sweep TOML file), `seeds` seeds each, skipping
    runs already finished in `out` (default sweeps/NAME); then `sweep.csv` and the report
    (`out`/report.html) with its validation curve. Returns every run. `options` are those of `Options`:
    the sweep's `set` comes first, these options' overrides next, each point's values last."""
    options = Options(**options)
    spec = sweep_spec.load(name_or_file)
    out = Path(out or Path("sweeps") / spec.name)

    def runs_of(point: sweep_spec.Point, folder: RunFolder) -> list[PlannedRun]:
        spec_of_point = options.experiment(spec.base, first=list(spec.overrides), last=point.overrides())
        return _claim_runs(spec_of_point, folder, options.seeds, options.overwrite)

    if spec.search.method == "optuna":
        require("an Optuna search", "optuna")
    check_size(spec.size * options.seeds, f"sweep {spec.name}, {spec.size:,} points x {options.seeds:,} seeds")
    _check_points(spec, options)
    check_output(out, folder=True)
    with ownership.lock(out):
        ownership.prepare(out, "sweep", overwrite=options.overwrite)
        if spec.search.method == "optuna":
            tuned = calibration.calibration(Engine.create(options.device).device, log=options.log)
            batch = options.experiment(spec.base, first=list(spec.overrides)).batch_size
            per_round = (max(1, tuned.stack_rows // batch) if batch else 1) * tuned.workers
            points = sweep_folder.search(
                spec, out, runs_of, lambda runs: _train_unfinished(runs, options, out), per_round
            )
        else:
            points = sweep_folder.plan(spec.points(), out, runs_of)
            _train_unfinished([run for p in points for run in p.runs], options, out)
        sweep_folder.write_record(spec, out, points)
        table = sweep_folder.write_table(out)
        html, md = build.build([out], out / "report.html")
    options.log(f"{table}, and the report: {html} (and {md.name})")
    return [Run.load(run.folder) for p in points for run in p.runs]


def _check_points(spec: sweep_spec.Sweep, options: Options) -> None:
    """Every point's config, or for a search each axis' bounds, checked before anything is written."""
    points = spec.points() or [
        sweep_spec.Point(tuple(sweep_spec.draw(axis, u) for axis in spec.axes)) for u in (0.0, 1.0)
    ]
    for point in points:
        try:
            options.experiment(spec.base, first=list(spec.overrides), last=point.overrides())
        except MnistlabError as exc:
            raise ConfigError(f"sweep {spec.name}, point {point.label}: {exc}") from None


def _train_unfinished(planned: list[PlannedRun], options: Options, out: Path) -> None:
    todo = [p for p in planned if not _finished_as_planned(p)]
    if len(todo) < len(planned):
        options.log(f"{len(planned) - len(todo)} of {len(planned)} runs already finished in {out}")
    if todo:
        options.train(todo)


def _finished_as_planned(run: PlannedRun) -> bool:
    """Whether the run's folder holds a finished run of its config (one of another config was refused or
    is to be overwritten by then)."""
    found = run.folder.read_marker()
    return run.folder.is_finished and found is not None and found["config"] == config.to_toml(run.experiment)


def load_run(folder: Path | str) -> Run:
    """A finished run, read back from its folder: metrics, history, and on demand its analysis and weights."""
    return Run.load(folder)


def load_runs(folder: Path | str) -> list[Run]:
    """Every finished run in a run folder, a multi-seed folder or a study folder."""
    return [run for experiment in experiments.discover([Path(folder)]) for run in experiment.runs]


def report(folders: list[Path | str], out: Path | str = "report.html") -> tuple[Path, Path]:
    """The self-contained HTML report over run folders, and its Markdown twin beside it. A folder that
    cannot be read is named in a warning and left out; the report is still written, and then a
    MnistlabError says how many were left out."""
    return build.build([Path(f) for f in folders], Path(out))
