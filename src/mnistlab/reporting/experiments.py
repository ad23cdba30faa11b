"""The experiments of a report: the runs of each, found in any mix of run folders, multi-seed folders
and folders of those, with what the report computes over their seeds."""

from dataclasses import dataclass, field
from pathlib import Path

from mnistlab.data import SPLITS, size_label
from mnistlab.errors import MnistlabError
from mnistlab.evaluation.statistics import Summary, summarise
from mnistlab.records import Score
from mnistlab.spec import config
from mnistlab.studies.folder import RunFolder, SeedRun


@dataclass
class ExperimentRuns:
    """The runs of one experiment: one folder, or the seed-K folders below a common one."""

    folder: RunFolder
    runs: list[SeedRun]
    label: str = field(default="")  # the preset, and the folder where two experiments share a name

    @property
    def name(self) -> str:
        return self.runs[0].name

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def split_sizes(self) -> dict[str, int]:
        return self.runs[0].metrics.split_sizes

    def values(self, split: str, key: str) -> list[float]:
        return [getattr(r.metrics.scores[split], key) for r in self.runs]

    def by_seed(self, split: str, key: str) -> dict[int, float]:
        return {r.seed: getattr(r.metrics.scores[split], key) for r in self.runs}

    def stat(self, split: str, key: str) -> Summary:
        return summarise(self.values(split, key))

    @property
    def parameters(self) -> int:
        return self.runs[0].metrics.parameters

    def epochs(self, phase: str) -> float:
        """Mean epochs trained in "phase1" or "phase2" over the seeds."""
        return summarise([r.metrics.epochs[phase] for r in self.runs]).mean

    @property
    def wall_seconds(self) -> float:
        """The experiment's share of the wall time of the stacks its seeds trained in."""
        return sum(r.metrics.wall_seconds / r.metrics.stack_size for r in self.runs)

    def mean_score(self, split: str) -> Score:
        return Score(loss=self.stat(split, "loss").mean, accuracy=self.stat(split, "accuracy").mean)


def discover(paths: list[Path], problems: list[str] | None = None) -> list[ExperimentRuns]:
    """Experiments in run folders, multi-seed folders, or folders of those (a study), in the report's order.

    With `problems`, a folder that cannot be read is left out and its error appended there; without, the
    first such error is raised.
    """
    found: list[ExperimentRuns] = []
    for folder in map(RunFolder, paths):
        try:
            found += _experiments_in(folder, problems)
        except MnistlabError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    order = {name: i for i, name in enumerate(config.study_presets())}  # the lab report's order
    found.sort(key=lambda e: (order.get(e.name, len(order)), e.name, str(e.folder.path)))
    names = [e.name for e in found]
    for e in found:
        where = e.folder.path.name if e.folder.path.name != e.name else e.folder.path.parent.name
        e.label = e.name if names.count(e.name) == 1 else f"{e.name} ({where})"
    return found


def _experiments_in(folder: RunFolder, problems: list[str] | None) -> list[ExperimentRuns]:
    if seeds := folder.seeds():  # a multi-seed run, even over an older single run's files
        return [ExperimentRuns(folder, [SeedRun.load(f) for f in seeds])]
    if folder.is_finished:
        return [ExperimentRuns(folder, [SeedRun.load(folder)])]
    if folder.path.is_dir():
        children = [RunFolder(c) for c in sorted(folder.path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        if any(c.is_finished or c.seeds() for c in children):
            runs = discover([c.path for c in children], problems)
            if runs:
                return runs
        raise MnistlabError(f"{folder.path}: no finished runs in it")
    raise MnistlabError(f"{folder.path}: not a run folder (no {RunFolder.METRICS}), nor a folder of runs")


def split_labels(experiments: list[ExperimentRuns]) -> dict[str, str]:
    """Column names of the splits, with their sizes where every experiment shares them."""
    sizes = {tuple(sorted(e.split_sizes.items())) for e in experiments}
    if len(sizes) > 1:
        return {split: split for split in SPLITS}
    s = {split: size_label(n) for split, n in experiments[0].split_sizes.items()}
    return {
        "train": f"train ({s['train']})",
        "validation": f"validation ({s['validation']})",
        "full": s["full"],
        "test": f"test ({s['test']})",
    }
