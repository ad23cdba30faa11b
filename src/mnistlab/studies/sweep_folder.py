"""A sweep in a folder: one run folder per point (seed-K folders below it for several seeds), the sweep
as it was run (`sweep.json`), and `sweep.csv`, one row per run.

Points are planned runs like any other, so they train through the same plan, stacks and executor as a
study: points that differ only in hyperparameters share a stack. An Optuna search asks for as many
trials as a round of stacks holds, trains them together, and tells each its mean validation loss.
"""

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistlab.data import SPLITS
from mnistlab.errors import MnistlabError
from mnistlab.extras import require
from mnistlab.files import json_text, parse_json, read_limited, write_atomic
from mnistlab.spec.sweep import Point, Sweep, unique
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.plan import PlannedRun

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
    scores: dict  # split -> (loss, accuracy)
    epochs: int  # of phase 1
    wall_seconds: float


def read_rows(out: Path) -> tuple[dict, list[SweepRow]]:
    """The record of the sweep in `out` and a row per finished run (a point not yet trained has none)."""
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
        for run in folder.seeds() or ([folder] if folder.is_finished else []):
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
    """`sweep.csv`: the axes' values, the seed, loss and accuracy of every split, epochs and wall time."""
    record, rows = read_rows(out)
    keys = [key for axis in record["axes"] for key in axis]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    scores = [f"{split}_{metric}" for split in SPLITS for metric in ("loss", "accuracy")]
    writer.writerow(["point", *keys, "seed", *scores, "epochs", "wall_seconds"])
    for row in rows:
        values = [json.dumps(v) if isinstance(v := row.settings[k], list) else v for k in keys]
        scores = [f"{x:.6g}" for s in SPLITS for x in row.scores[s]]
        writer.writerow([row.point, *values, row.seed, *scores, row.epochs, f"{row.wall_seconds:.3f}"])
    write_atomic(out / TABLE, text.getvalue())
    return out / TABLE


def search(
    sweep: Sweep, out: Path, runs_of: RunsOf, train: Callable[[list[PlannedRun]], None], per_round: int
) -> list[PointRuns]:
    """An Optuna TPE search: `per_round` trials asked at a time, trained together by `train`, each told
    the mean validation loss of its seeds. A trial left running by an interrupted search is failed and
    asked again; with a storage URL the search resumes where it stopped."""
    require("an Optuna search", "optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=sweep.search.seed)
    try:
        study = optuna.create_study(
            study_name=sweep.name, storage=sweep.search.storage, sampler=sampler, load_if_exists=True
        )
    except Exception as exc:  # an unusable storage URL: optuna raises several kinds
        raise MnistlabError(f"search.storage {sweep.search.storage!r}: {str(exc).splitlines()[0]}") from None
    for stale in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = [_point(sweep, t.params) for t in done]
    while len(done) < sweep.search.trials:
        trials = [study.ask(_distributions(sweep)) for _ in range(min(per_round, sweep.search.trials - len(done)))]
        asked = {p.point.key: p for p in plan([_point(sweep, t.params) for t in trials], out, runs_of)}
        train([run for p in asked.values() for run in p.runs])
        for trial in trials:  # two trials that ask for one point (a categorical axis) share its runs
            point = asked[_point(sweep, trial.params).key]
            losses = [RunFolder(r.folder.path).read_metrics().scores["validation"].loss for r in point.runs]
            study.tell(trial, sum(losses) / len(losses))
            done.append(trial)
        points += [p.point for p in asked.values()]
    return plan(points, out, runs_of)


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
