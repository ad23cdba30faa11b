"""Beyond the lab: the lab's final model beside `best`, a pure MLP of no more parameters trained with
what is known today (distortions, a cosine schedule, label smoothing, a moving average of the weights).

The section appears when a report holds runs of both presets: their test errors with 95% intervals
over seeds, and the test digits each gets wrong in every seed, both, or only one of them.
"""

from mnistlab.evaluation.statistics import Summary, summarise
from mnistlab.reporting.digits import SeedErrors
from mnistlab.reporting.document import Heading, Paragraph, Table
from mnistlab.reporting.experiments import ExperimentRuns
from mnistlab.reporting.findings import cell

LAB, BEST = "final", "best"


def section(pairs: list[tuple[ExperimentRuns, SeedErrors]]) -> list:
    """The section, from each experiment of the report with its errors; nothing unless both presets ran."""
    found = {experiment.name: (experiment, errors) for experiment, errors in pairs}
    if LAB not in found or BEST not in found:
        return []
    (lab, lab_errors), (best, best_errors) = found[LAB], found[BEST]
    both = sorted(lab_errors.stable & best_errors.stable)
    only_lab = sorted(lab_errors.stable - _ever_wrong(best_errors))
    only_best = sorted(best_errors.stable - _ever_wrong(lab_errors))
    blocks = [
        Heading(2, "Beyond the lab"),
        Paragraph(
            f"The lab's final model has {_parameters(lab):,} parameters. {BEST} is a pure MLP of "
            f"{_parameters(best):,}: {_recipe(best)}. Both follow the same protocol, and {BEST}'s recipe was chosen "
            "on the 50k/10k split only (its preset file lists what was tried). Test error: mean over seeds ± the "
            "half-width of its 95% interval."
        ),
        Table(
            [
                "model",
                "parameters",
                "seeds",
                "test error",
                f"test errors (of {lab.split_sizes['test']:,})",
                "validation error",
            ],
            [_row(lab), _row(best)],
        ),
        Paragraph(
            f"{len(lab_errors.stable)} test digits are wrong in every seed of {LAB}, {len(best_errors.stable)} in "
            f"every seed of {BEST}; {len(both)} of them in both. {len(only_lab)} of {LAB}'s are right in every "
            f"seed of {BEST}, and {len(only_best)} of {BEST}'s are right in every seed of {LAB}. Captions give the "
            "true class and what each seed read."
        ),
    ]
    if both:
        blocks.append(best_errors.grid(both, f"wrong in every seed of both (readings: {BEST})"))
    if only_lab:
        blocks.append(lab_errors.grid(only_lab, f"wrong only for {LAB} (readings: {LAB})"))
    if only_best:
        blocks.append(best_errors.grid(only_best, f"wrong only for {BEST} (readings: {BEST})"))
    return blocks


def _ever_wrong(errors: SeedErrors) -> set[int]:
    return errors.stable | errors.noisy


def _parameters(experiment: ExperimentRuns) -> int:
    return experiment.runs[0].metrics.parameters


def _error(experiment: ExperimentRuns, split: str) -> Summary:
    return summarise([1 - accuracy for accuracy in experiment.values(split, "accuracy")])


def _row(experiment: ExperimentRuns) -> list[str]:
    test = _error(experiment, "test")
    count = test.mean * experiment.split_sizes["test"]
    return [
        experiment.label,
        f"{_parameters(experiment):,}",
        str(experiment.seeds),
        cell(test, "accuracy"),
        f"{count:.1f}",
        cell(_error(experiment, "validation"), "accuracy"),
    ]


def _recipe(experiment: ExperimentRuns) -> str:
    """The run's recipe in words, from its typed experiment."""
    folder = experiment.runs[0].folder
    spec, arch = folder.read_experiment(), folder.read_architecture()
    h = spec.hyperparameters
    parts = [
        f"Dense layers of {', '.join(map(str, arch.hidden))} units on the central {arch.window}x{arch.window} pixels",
        f"{h.epochs} epochs at batch {spec.batch_size or 'full'}, learning rate {h.learning_rate:g} "
        f"({h.schedule} schedule, {h.warmup_epochs} warm-up epochs)",
    ]
    if h.label_smoothing:
        parts.append(f"label smoothing {h.label_smoothing:g}")
    if h.ema:
        parts.append(f"a moving average of the weights (decay {h.ema:g})")
    if a := h.augmentation:
        parts.append(
            f"every training image distorted afresh at every step (rotation ±{a.rotation:g}°, scale ±{a.scale:g}, "
            f"shear ±{a.shear:g}, shift ±{a.translation:g} px, elastic ±{a.elastic:g} px)"
        )
    return "; ".join(parts)
