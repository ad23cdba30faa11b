"""A search's pruner between the epochs of lockstep stacks (`[search] pruner`).

Optuna's pruners (ASHA as its SuccessiveHalvingPruner, Hyperband, Median) stop a trial from the
validation losses it reports per epoch, set against what other trials reported at that epoch. In
mnistlab the trials of a search round train as members of lockstep stacks, on this machine's worker
processes or on a cluster, so each stack judges its own trials against a copy of the search as it stood
when the round began (`RoundView`): every trial of the earlier rounds with what it reported, and the
stack's own trials, reported in turn after each epoch. Trials that train in other stacks of the same
round are not in it. So every decision is a function of the search's history and the stack's own
numbers, never of which stack reports first: a search repeats on one machine, and a search resumed
after an interruption makes the decisions it would have made. (Optuna's own asynchronous ASHA, with
trials in parallel, sees whatever has been reported by then.)

When a round is back, the driver reports each trial's epochs to the search's study as its stack's
judge saw them, and tells the study that the trial was pruned or completed (`record`): the rungs that
ASHA and Hyperband keep in the study are then what the next rounds are judged against.
"""

from dataclasses import dataclass
from statistics import fmean

from mnistlab.extras import require
from mnistlab.records import PrunedRun
from mnistlab.spec.sweep import Search
from mnistlab.studies.folder import RunFolder


@dataclass(frozen=True)
class RoundView:
    """The search as the stacks of one round judge their trials."""

    search: Search
    study_name: str
    max_epochs: int  # the longest budget in the space searched: Hyperband's largest rung
    history: tuple  # Optuna's FrozenTrials of the earlier rounds, every one, by number
    numbers: tuple[int, ...]  # the numbers of this round's trials

    def for_stack(self, trials: tuple[int | None, ...]) -> "StackPruning":
        return StackPruning(self, trials)


@dataclass(frozen=True)
class StackPruning:
    """What one stack needs to judge its members: the round, and each member's trial (None: not judged)."""

    view: RoundView
    trials: tuple[int | None, ...]


def describe(search: Search) -> str:
    """The pruner and its settings, as pruned.json and the report name them."""
    if search.pruner == "median":
        return f"median (from epoch {search.min_epochs})"
    return f"{search.pruner} (from epoch {search.min_epochs}, reduction factor {search.reduction_factor})"


def pruner(search: Search, max_epochs: int):
    """The Optuna pruner of the search's settings."""
    import optuna

    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=search.min_epochs, reduction_factor=search.reduction_factor
        )
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=search.min_epochs,
            max_resource=max(max_epochs, search.min_epochs + 1),
            reduction_factor=search.reduction_factor,
        )
    return optuna.pruners.MedianPruner(n_warmup_steps=search.min_epochs)


def _reason(search: Search, value: float, epoch: int) -> str:
    """Why the pruner stopped a trial, in its own terms."""
    loss = f"mean validation loss {value:.4f} after epoch {epoch}"
    if search.pruner == "median":
        return f"median pruner: {loss} was above the median of the completed trials at that epoch"
    rule = f"1 in {search.reduction_factor}"
    if search.pruner == "hyperband":
        return f"Hyperband: {loss} was not in the best {rule} of its bracket's trials at that rung"
    return f"ASHA: {loss} was not in the best {rule} of the trials that reached that rung"


def judge(pruning: StackPruning):
    """The stack's judge (`train.fit.Judge`): after each epoch, each of its trials whose members all still
    train reports their mean validation loss; the members of the trials the pruner stops are stopped."""
    require("a pruned search", "optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    view = pruning.view
    study = optuna.create_study(
        study_name=view.study_name,  # Hyperband places a trial in a bracket by its study's name and number
        storage=optuna.storages.InMemoryStorage(),
        pruner=pruner(view.search, view.max_epochs),
    )
    study.add_trials(view.history)
    ours, judged = {}, set(pruning.trials) - {None}
    for number in view.numbers:
        if number in judged:
            ours[number] = study.ask()
        else:  # another stack's trial: a number in the study that nothing is reported under
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert all(trial.number == number for number, trial in ours.items()), "the study's copy is numbered as the search"
    members = {number: [m for m, t in enumerate(pruning.trials) if t == number] for number in ours}

    def decide(epoch: int, losses: dict[int, float]) -> dict[int, str]:
        stopped = {}
        for number, trial in ours.items():
            if not all(member in losses for member in members[number]):
                continue  # done, or partly done: a trial is judged only while all its seeds train
            value = fmean(losses[member] for member in members[number])
            trial.report(value, epoch)
            if trial.should_prune():
                reason = _reason(view.search, value, epoch)
                stopped |= {member: reason for member in members[number]}
        return stopped

    return decide


def record(study, trial, folders: list[RunFolder]) -> bool:
    """Report a trained trial's phase-1 epochs (the mean validation loss of its seeds) to the search's
    study as its stack's judge saw them, and tell the study how the trial ended; False where it failed (a
    seed's loss stopped being a number, and nothing was written for it). The pruner is asked after every
    epoch only so that it writes down its rungs: the stack's verdict is the one that stands."""
    import optuna

    if not all(folder.is_finished or folder.is_pruned for folder in folders):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    histories = [folder.read_history().phase1 for folder in folders]
    for epoch in range(1, min(len(history) for history in histories) + 1):
        trial.report(fmean(history[epoch - 1].eval_loss for history in histories), epoch)
        trial.should_prune()
    if any(folder.is_pruned for folder in folders):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, fmean(folder.read_metrics().scores["validation"].loss for folder in folders))
    return True


def stands(folder: RunFolder, search: Search) -> bool:
    """Whether a pruned run in `folder` was pruned by this search's pruner: its verdict stands then."""
    found: PrunedRun = folder.read_pruned()
    return found.pruner == describe(search)
