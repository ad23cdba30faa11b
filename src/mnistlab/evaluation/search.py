"""What mattered in a search: each parameter's importance, and the trials in parallel coordinates.

Both read a search's trials as the sweep folder holds them (`SearchTrial`: the values of the
parameters, the mean validation loss of the seeds, and whether the pruner stopped it), so a report
needs neither the search's Optuna storage nor the training engine. Importance is Optuna's fANOVA
(`optuna.importance.FanovaImportanceEvaluator`, seeded, so a report repeats) over the completed trials:
a random forest fitted to (parameters -> validation loss), whose variance it splits among the
parameters. `CAVEATS` says what that can and cannot tell.
"""

import json
import math
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

CAVEATS = (
    "It describes the space that was searched, not what a parameter would do outside it. It is fitted to "
    "{trials} trials, a rough guide with that few (a rule of thumb asks for ten or more per parameter); the "
    "sampler drew more trials near the good ones, so the space is not evenly covered; and what parameters do "
    "together is folded into their shares."
)
TOP_SHARE = 0.1  # the parallel coordinates highlight the best tenth of the completed trials
LOG_SPAN = 20  # a parameter whose values span this factor or more gets a log axis, as the sweep curve does


@dataclass(frozen=True)
class SearchTrial:
    """A point of a search: its parameters (config key -> value), its loss, and how it ended."""

    params: dict
    loss: float  # mean validation loss of its seeds: at the end, or at the epoch it was pruned after
    pruned: bool


@dataclass(frozen=True)
class Parameter:
    """A parameter that varied in a search: numeric (on a log axis where it spans decades) or categorical."""

    key: str
    values: tuple  # the categories in order of appearance; () for a numeric parameter
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def position(self, value) -> float:
        """Where a value sits on the parameter's axis, from 0 to 1."""
        if self.values:
            return self.values.index(_plain(value)) / max(1, len(self.values) - 1)
        if self.log:
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)


def varying(trials: list[SearchTrial], log_uniform: dict[str, bool] | None = None) -> list[Parameter]:
    """The parameters whose values differ among the trials, in their order; constant ones are left out. A
    numeric one gets a log axis where it was drawn log-uniformly (`log_uniform`: key -> whether), or, for
    one not drawn, where its values span a factor of LOG_SPAN or more."""
    parameters = []
    for key in trials[0].params:
        values = [trial.params[key] for trial in trials]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            low, high = float(min(values)), float(max(values))
            log = (log_uniform or {}).get(key, high >= LOG_SPAN * low) and low > 0
            if low < high:
                parameters.append(Parameter(key, (), low, high, log))
        elif len(seen := tuple(dict.fromkeys(_plain(v) for v in values))) > 1:
            parameters.append(Parameter(key, seen))
    return parameters


def _plain(value):
    """A value as a category: a list (a model's widths) as its JSON text."""
    return json.dumps(value) if isinstance(value, list) else value


def importance(parameters: list[Parameter], trials: list[SearchTrial], seed: int = 0) -> list[tuple[str, float]]:
    """(config key, share of the variance of validation loss), largest first, by fANOVA over the trials
    not pruned; their shares sum to 1."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {
        p.key: optuna.distributions.CategoricalDistribution(p.values)
        if p.values
        else optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        for p in parameters
    }
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for trial in trials:
        if not trial.pruned:
            params = {
                p.key: _plain(trial.params[p.key]) if p.values else float(trial.params[p.key]) for p in parameters
            }
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=trial.loss))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return sorted(found.items(), key=lambda item: (-item[1], [p.key for p in parameters].index(item[0])))


def parallel_coordinates(parameters: list[Parameter], trials: list[SearchTrial], title: str) -> Figure:
    """Every trial as a line across one axis per parameter that varied and a last axis of validation loss:
    the best tenth of the completed trials bold and coloured by loss, the other completed ones faint,
    pruned ones grey and dashed (at the loss they were stopped with)."""
    loss_axis = _loss_axis([t.loss for t in trials])
    axes = [*parameters, loss_axis]
    fig = Figure(figsize=(max(6.0, 1.9 * len(axes) + 1), 4.6), layout="constrained")
    ax = fig.subplots()
    completed = sorted((t for t in trials if not t.pruned), key=lambda t: t.loss)
    top = max(1, math.ceil(TOP_SHARE * len(completed))) if completed else 0
    colours = colormaps["viridis"]
    xs = np.arange(len(axes))

    def line(trial: SearchTrial) -> list[float]:
        return [p.position(trial.params[p.key]) for p in parameters] + [loss_axis.position(trial.loss)]

    for trial in (t for t in trials if t.pruned):
        ax.plot(xs, line(trial), color="0.6", linestyle="--", linewidth=0.8, alpha=0.6)
    for trial in reversed(completed[top:]):
        ax.plot(xs, line(trial), color="#9ecae1", linewidth=1.0, alpha=0.6)
    for rank, trial in reversed(list(enumerate(completed[:top]))):
        ax.plot(xs, line(trial), color=colours(rank / max(1, top)), linewidth=2.6)
    for x, parameter in zip(xs, axes, strict=True):
        ax.axvline(x, color="0.2", linewidth=1)
        for position, label in _ticks(parameter):
            ax.text(x - 0.03, position, label, ha="right", va="center", fontsize=7)
    ax.set_xticks(xs, [f"{p.name}{' (log)' if p.log else ''}" for p in axes])
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.4, len(axes) - 0.8)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.plot([], [], color=colours(0.0), linewidth=2.6, label=f"best {top} of {len(completed)} completed")
    ax.plot([], [], color="#9ecae1", label="the other completed trials")
    if len(completed) < len(trials):
        ax.plot([], [], color="0.6", linestyle="--", label=f"{len(trials) - len(completed)} pruned")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return fig


def _loss_axis(losses: list[float]) -> Parameter:
    low, high = min(losses), max(losses)
    high = high if high > low else low * 1.01 + 1e-12
    return Parameter("validation loss", (), low, high, low > 0 and high / low >= LOG_SPAN)


def _ticks(parameter: Parameter) -> list[tuple[float, str]]:
    """(position, label) of an axis' ticks: its categories, or five values evenly spaced (in the log)."""
    if parameter.values:
        return [(parameter.position(v), str(v)) for v in parameter.values]
    if parameter.log:
        values = np.geomspace(parameter.low, parameter.high, 5)
    else:
        values = np.linspace(parameter.low, parameter.high, 5)
    return [(parameter.position(v), f"{v:.3g}") for v in values]
