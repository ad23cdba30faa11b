"""Keras beside mnistlab's engine: where a report holds runs of one preset trained by both, it sets their
means side by side, split by split, and tests that they agree.

A difference test cannot show agreement (a few seeds show no significant difference whatever the truth),
so the report tests equivalence: two one-sided tests (TOST) that the engines' mean accuracies differ by
less than MARGIN. It says "equivalent within ±0.2 points", "different", "undecided", or "too few seeds".
"""

from mnistlab.data import SPLITS
from mnistlab.evaluation.statistics import equivalence
from mnistlab.reporting.document import Flagged, Heading, Paragraph, Table
from mnistlab.reporting.experiments import ExperimentRuns
from mnistlab.reporting.findings import MIN_SEEDS, cell

MARGIN = 0.002  # of accuracy: 0.2 points, 20 test digits
HEADER = ["split", "Keras acc", "mnistlab acc", "Keras - mnistlab", "Keras loss", "mnistlab loss", "verdict"]
REASON = (
    "0.2 points of accuracy is 20 test digits: less than the seed noise of one run of these models (a standard "
    "deviation of 0.1-0.3 points over seeds), and less than any difference the lab report draws a conclusion from."
)


def engine(experiment: ExperimentRuns) -> str:
    """What trained the experiment's runs, as environment.json names it."""
    return str(experiment.runs[0].folder.read_environment().get("engine", "mnistlab"))


def pairs(experiments: list[ExperimentRuns]) -> list[tuple[ExperimentRuns, ExperimentRuns]]:
    """(Keras's, mnistlab's) experiments of one preset, where the report has both."""
    keras = {e.name: e for e in experiments if engine(e).startswith("keras")}
    ours = {e.name: e for e in experiments if not engine(e).startswith("keras")}
    return [(keras[name], ours[name]) for name in keras if name in ours]


def section(experiments: list[ExperimentRuns]) -> list:
    """The section, or nothing where no preset was trained by both engines."""
    found = pairs(experiments)
    if not found:
        return []
    blocks = [
        Heading(2, "Keras beside mnistlab's engine"),
        Paragraph(
            f"The same presets trained by the lab's own Keras ({engine(found[0][0])}) and by mnistlab's engine. "
            "Per split, each engine's mean accuracy and loss over its seeds with the half-width of their 95% "
            f"intervals, and a test of equivalence (TOST, two one-sided Welch t-tests at 5%) with a margin of "
            f"±{MARGIN * 100:.1f} points of accuracy: {REASON} 'Equivalent' means the 90% interval of the "
            f"difference lies inside the margin; fewer than {MIN_SEEDS} seeds of either give no verdict."
        ),
    ]
    for keras, ours in found:
        rows = []
        for split in SPLITS:
            accuracies = keras.values(split, "accuracy"), ours.values(split, "accuracy")
            tested = equivalence(*accuracies, MARGIN, least=MIN_SEEDS)
            verdict = {
                "equivalent": f"equivalent within ±{MARGIN * 100:.1f} points",
                "different": f"different (p = {tested.p_different:.2g})",
                "undecided": "undecided: the interval reaches past the margin",
                "too few seeds": f"too few seeds ({min(keras.seeds, ours.seeds)})",
            }[tested.verdict]
            low, high = tested.low * 100, tested.high * 100
            interval = "" if tested.verdict == "too few seeds" else f" ({low:+.2f} to {high:+.2f})"
            keras_numbers = [cell(keras.stat(split, key), key) for key in ("accuracy", "loss")]
            ours_numbers = [cell(ours.stat(split, key), key) for key in ("accuracy", "loss")]
            shown = Flagged(verdict) if tested.verdict == "different" else verdict
            difference = f"{tested.difference * 100:+.2f} pts{interval}"
            rows.append(
                [split, keras_numbers[0], ours_numbers[0], difference, keras_numbers[1], ours_numbers[1], shown]
            )
        blocks += [
            Heading(3, f"{keras.name}: {keras.seeds} Keras seeds, {ours.seeds} mnistlab seeds"),
            Table(HEADER, rows),
            Paragraph(_speed(keras, ours)),
        ]
    return blocks


def _speed(keras: ExperimentRuns, ours: ExperimentRuns) -> str:
    """The two engines' wall times, as their runs recorded them on their machines."""
    per_keras, per_ours = keras.wall_seconds / keras.seeds, ours.wall_seconds / ours.seeds
    where = {e.runs[0].folder.read_environment().get("device_name", "?") for e in (keras, ours)}
    machine = where.pop() if len(where) == 1 else "different machines: the ratio compares them too"
    return (
        f"Wall time per run: Keras {per_keras:.0f} s, mnistlab {per_ours:.0f} s (its share of the lockstep stack "
        f"it trained in): {per_keras / per_ours:.1f}x, on {machine}."
    )
