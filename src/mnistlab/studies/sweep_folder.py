"""A sweep in a folder: one run folder per point (seed-K folders below it for several seeds), the sweep
as it was run (`sweep.json`), and `sweep.csv`, one row per run.

Points are planned runs like any other, so they train through the same plan, stacks and executor as a
study: points that differ only in hyperparameters share a stack. An Optuna search asks for as many
trials as a round of stacks holds, trains them together, and tells each its mean validation loss.
"""

import contextlib
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mnistlab.data import SPLITS
from mnistlab.errors import Diverged, MnistlabError
from mnistlab.extras import require
from mnistlab.files import json_text, parse_json, read_limited, write_atomic
from mnistlab.spec.sweep import Point, Sweep, unique
from mnistlab.studies import pruning
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.plan import PlannedRun
from mnistlab.studies.pruning import RoundView

RECORD, TABLE = "sweep.json", "sweep.csv"
RECORD_BYTES = 64 << 20


@dataclass(frozen=True)
class PointRuns:
    """A point of the sweep, and the runs (one per seed) that train it."""

    point: Point
    folder: RunFolder
    runs: list[PlannedRun]


RunsOf = Callable[[Point, RunFolder], list[PlannedRun]]  # a point's runs in its folder, one per seed


def plan(points: list[Point], out: Path, runs_of: RunsOf) -> list[PointRuns]:
    """Each point's runs, in a folder of `out` named after it (equal points are one)."""
    return [
        PointRuns(point, RunFolder(out / point.label), runs_of(point, RunFolder(out / point.label)))
        for point in unique(points)
    ]


def write_record(sweep: Sweep, out: Path, points: list[PointRuns]) -> None:
    """What `report` needs to read the sweep back: its question, its axes, the lab's values, its points."""
    record = {
        "name": sweep.name,
        "description": sweep.description,
        "claim": sweep.claim,
        "axes": [list(axis.keys) for axis in sweep.axes],
        "search": {
            "method": sweep.search.method,
            "log_uniform": {axis.keys[0]: axis.log for axis in sweep.axes if not axis.values},  # drawn how
            "pruner": pruning.describe(sweep.search) if sweep.search.prunes else None,
        },
        "lab": {key: list(values) for key, values in sweep.lab.items()},
        "points": [{"folder": p.folder.path.name, "settings": [list(s) for s in p.point.settings]} for p in points],
    }
    write_atomic(out / RECORD, json_text(record))


@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep, as `sweep.csv` holds it."""

    point: str  # its folder
    settings: dict  # config key -> value
    dataset: str
    seed: int
    scores: dict  # split -> (loss, accuracy): train and validation only, where it was pruned
    epochs: int  # of phase 1
    wall_seconds: float
    pruned: bool = False  # its search's pruner stopped it after `epochs` epochs


def read_rows(out: Path) -> tuple[dict, list[SweepRow]]:
    """The record of the sweep in `out` and a row per finished or pruned run (a point not yet trained has
    none)."""
    try:
        record = parse_json(read_limited(out / RECORD, RECORD_BYTES))
        points = [(p["folder"], {k: v for k, v in p["settings"]}) for p in record["points"]]
        if not all(isinstance(name, str) and name == Path(name).name for name, _ in points):
            raise ValueError("a point's folder is not a name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MnistlabError(f"{out / RECORD}: not a readable sweep record ({exc})") from None
    rows = []
    for name, settings in points:
        folder = RunFolder(out / name)
        for run in folder.trained_runs():
            if run.is_pruned:
                found = run.read_pruned()
                scores = {s: (found.scores[s].loss, found.scores[s].accuracy) for s in found.scores}
                rows.append(
                    SweepRow(name, settings, found.dataset, found.seed, scores, found.epoch, found.wall_seconds, True)
                )
                continue
            metrics = run.read_metrics()
            scores = {s: (metrics.scores[s].loss, metrics.scores[s].accuracy) for s in SPLITS}
            rows.append(
                SweepRow(
                    name,
                    settings,
                    metrics.dataset,
                    metrics.seed,
                    scores,
                    metrics.epochs["phase1"],
                    metrics.wall_seconds,
                )
            )
    return record, rows


def write_table(out: Path) -> Path:
    """`sweep.csv`: the axes' values, the seed, loss and accuracy of every split (a pruned run has train and
    validation only), epochs of phase 1, wall time, and whether it was pruned."""
    record, rows = read_rows(out)
    keys = [key for axis in record["axes"] for key in axis]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    scores = [f"{split}_{metric}" for split in SPLITS for metric in ("loss", "accuracy")]
    writer.writerow(["point", *keys, "seed", *scores, "epochs", "wall_seconds", "pruned"])
    for row in rows:
        values = [json.dumps(v) if isinstance(v := row.settings[k], list) else v for k in keys]
        scores = [f"{x:.6g}" if s in row.scores else "" for s in SPLITS for x in row.scores.get(s, (0, 0))]
        pruned = "True" if row.pruned else "False"
        writer.writerow([row.point, *values, row.seed, *scores, row.epochs, f"{row.wall_seconds:.3f}", pruned])
    write_atomic(out / TABLE, text.getvalue())
    return out / TABLE


def search(
    sweep: Sweep,
    out: Path,
    runs_of: RunsOf,
    train: Callable[[list[PlannedRun], RoundView | None], None],
    per_round: int,
    longest: int,
) -> list[PointRuns]:
    """An Optuna search: rounds of `per_round` trials, asked at once and trained together by `train`, each
    told the mean validation loss of its seeds, or pruned (`studies.pruning`).

    Every round draws with a sampler seeded by the search's seed and the trials told so far, so a round's
    draws depend on the search's history only: with a storage URL an interrupted search resumes where it
    stopped, the trials of its unfinished round asked again with the same values (a round with some runs
    written trains again whole, writing only the others: `train` sees to it), and it makes the draws and
    decisions it would have made."""
    require("an Optuna search", "optuna")
    import numpy as np
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=sweep.name,
            storage=sweep.search.storage,
            pruner=pruning.pruner(sweep.search, longest) if sweep.search.prunes else None,
            load_if_exists=True,
        )
    except Exception as exc:  # an unusable storage URL: optuna raises several kinds
        raise MnistlabError(f"search.storage {sweep.search.storage!r}: {str(exc).splitlines()[0]}") from None
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    waiting = [t.params for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    for stale in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        if stale.params not in waiting:  # asked again first, with its values
            study.enqueue_trial(stale.params)
    done = study.get_trials(states=ended)
    points = [_point(sweep, t.params) for t in done]
    while len(done) < sweep.search.trials:
        seed = np.random.SeedSequence([sweep.search.seed, len(done)]).generate_state(1)[0]
        study.sampler = optuna.samplers.TPESampler(seed=int(seed))
        trials = [study.ask(_distributions(sweep)) for _ in range(min(per_round, sweep.search.trials - len(done)))]
        history = tuple(t for t in study.get_trials() if t.number < trials[0].number)
        asked = {p.point.key: p for p in plan([_point(sweep, t.params) for t in trials], out, runs_of)}
        view = None
        if sweep.search.prunes:
            view = pruning.RoundView(sweep.search, sweep.name, longest, history, tuple(t.number for t in trials))
        numbered = {}  # a point's runs, each marked with the first trial that asked for the point
        for trial in trials:
            key = _point(sweep, trial.params).key
            numbered.setdefault(key, [replace(run, trial=trial.number) for run in asked[key].runs])
        # The trials of runs that diverged (nothing written for them) fail below, and others are drawn.
        with contextlib.suppress(Diverged):
            train([run for runs in numbered.values() for run in runs], view)
        for trial in trials:  # two trials that ask for one point (a categorical axis) share its runs
            point = asked[_point(sweep, trial.params).key]
            if pruning.record(study, trial, [run.folder for run in point.runs]):
                done.append(trial)
                points.append(point.point)
        if len(study.get_trials(states=(optuna.trial.TrialState.FAIL,))) > sweep.search.trials:
            raise MnistlabError(f"sweep {sweep.name}: more trials diverged than the search has; narrow its ranges")
    return plan(points, out, runs_of)


def max_epochs(sweep: Sweep, base_epochs: int) -> int:
    """The longest phase-1 budget in the space searched: the base's, or the largest an axis of epochs holds."""
    longest = base_epochs
    for axis in sweep.axes:
        if "train.epochs" in axis.keys:
            at = axis.keys.index("train.epochs")
            longest = int(max(v[at] for v in axis.values)) if axis.values else int(axis.high)
    return longest


def _distributions(sweep: Sweep) -> dict:
    import optuna

    distributions = {}
    for axis in sweep.axes:
        key = axis.keys[0]
        if axis.values:
            distributions[key] = optuna.distributions.CategoricalDistribution([v[0] for v in axis.values])
        else:
            distributions[key] = optuna.distributions.FloatDistribution(axis.low, axis.high, log=axis.log)
    return distributions


def _point(sweep: Sweep, params: dict) -> Point:
    """The point of a trial's parameters, exactly as Optuna drew them."""
    return Point(tuple((axis.keys[0], params[axis.keys[0]]) for axis in sweep.axes))
