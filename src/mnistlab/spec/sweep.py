"""Sweeps are data: a base experiment and axes over its config keys, as TOML files like the presets.

    description = "..."              # the question it answers
    claim = "..."                    # the lab report's sentence that the curve tests
    base = "powerful"                # a preset or a config file
    set = ["train.epochs=50"]        # optional overrides of the base
    lab = { "model.l2" = [1e-5, 1e-2] }   # the values the report used, marked on the figure

    [[axis]]
    key = "model.l2"
    log_range = [1e-6, 1e-1]         # or range = [lo, hi] (evenly spaced), with
    points = 11                      # ... this many points; or values = [...]

    [[axis]]                         # several keys varied together: one axis
    keys = ["train.batch_size", "train.epochs"]
    values = [[32, 5], [256, 20]]

    [search]                         # optional: drawn points instead of the grid
    method = "random"                # or "optuna" (TPE); axes then give uniform or log_uniform = [lo, hi]
    trials = 16
    seed = 0
    storage = "sqlite:///search.db"  # optuna only: resume the search from there (default: in memory)
    pruner = "asha"                  # optuna only: stop bad trials early; "hyperband", "median" or "none"
    min_epochs = 1                   # ... the first epoch at which a trial may be stopped
    reduction_factor = 3             # ... asha and hyperband keep 1 in this many at each rung

A grid is the cross product of its axes. Axes may mix keys that members of one lockstep stack can differ
in (penalties, dropout, learning rate, epochs) with keys that they cannot (widths, batch size): the
points then split into one stack per value of the latter, which is allowed and only costs speed.
"""

import hashlib
import math
import re
from dataclasses import dataclass
from importlib import resources
from itertools import product
from pathlib import Path

from mnistlab.errors import ConfigError
from mnistlab.spec import config
from mnistlab.spec.config import MAX_SEED, shown, toml_value

TOP_KEYS = ("description", "claim", "base", "set", "lab", "axis", "search")
AXIS_KEYS = ("key", "keys", "values", "range", "log_range", "points", "uniform", "log_uniform")
SEARCH_KEYS = ("method", "trials", "seed", "storage", "pruner", "min_epochs", "reduction_factor")
METHODS = ("grid", "random", "optuna")
PRUNERS = ("none", "asha", "hyperband", "median")  # Optuna's SuccessiveHalving, Hyperband and Median pruners
REDUCTION_FACTOR = {"asha": 4, "hyperband": 3}  # Optuna's defaults
NOT_SWEPT = ("seed", "extends", "description")  # seeds are --seeds; the others are not numbers of a run
MAX_POINTS = 10_000  # of a grid, or trials of a search: a sweep is planned whole before it trains
MAX_AXIS_POINTS = 1_000
MAX_LABEL = 120  # characters of a point's folder name; a longer one is cut and given a digest


@dataclass(frozen=True)
class Axis:
    """Config keys varied together: grid `values` (a tuple per point), or a range to draw from."""

    keys: tuple[str, ...]
    values: tuple[tuple, ...] = ()  # per point, one value per key
    low: float | None = None  # a search draws between low and high
    high: float | None = None
    log: bool = False

    @property
    def name(self) -> str:
        return ",".join(key.rpartition(".")[2] for key in self.keys)


@dataclass(frozen=True)
class Point:
    """One setting of every axis: (config key, value) pairs."""

    settings: tuple[tuple[str, object], ...]

    @property
    def key(self) -> tuple:
        """The point's identity: equal values (1e-5 and 0.00001, 1 and 1.0) are one point."""
        return _frozen(self.settings)

    @property
    def label(self) -> str:
        """A folder name that identifies the point's values exactly: `l2=1e-05`, `batch_size=32,epochs=5`.

        Numbers are written in full (Python's shortest exact form), so two values never share a folder.
        A name that would be long, or hold characters a folder name should not, is cut and ends in a
        digest of the whole."""
        text = ",".join(f"{key.rpartition('.')[2]}={_text(value)}" for key, value in self.settings)
        if len(text) <= MAX_LABEL and _SAFE.fullmatch(text):
            return text
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{_UNSAFE.sub('_', text)[: MAX_LABEL - 13]}-{digest}"

    def overrides(self) -> list[str]:
        return [f"{key}={toml_value(value)}" for key, value in self.settings]


@dataclass(frozen=True)
class Search:
    method: str = "grid"
    trials: int = 0
    seed: int = 0
    storage: str | None = None
    pruner: str = "none"
    min_epochs: int = 1  # a trial is never stopped before it has trained this many epochs
    reduction_factor: int = 0  # asha and hyperband: of the trials at a rung, 1 in this many go on

    @property
    def prunes(self) -> bool:
        return self.pruner != "none"


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    claim: str
    base: str
    overrides: tuple[str, ...]
    axes: tuple[Axis, ...]
    search: Search
    lab: dict  # config key -> the values the lab report used

    def points(self) -> list[Point]:
        """The grid's points, or a random search's draws; an Optuna search asks for its own. Points of
        equal values (0.00001 and 1e-5 are one number) are one point: each trains once."""
        if self.search.method == "grid":
            combos = product(*(axis.values for axis in self.axes))
            points = [Point(_settings(self.axes, combo)) for combo in combos]
        elif self.search.method == "random":
            import numpy as np  # a spec stays light: numpy only when drawing

            rng = np.random.default_rng(self.search.seed)
            points = [Point(tuple(draw(axis, rng.random()) for axis in self.axes)) for _ in range(self.search.trials)]
        else:
            points = []
        return unique(points)

    @property
    def size(self) -> int:
        """Points of the grid, or trials of a search."""
        return self.search.trials if self.search.method != "grid" else math.prod(len(a.values) for a in self.axes)


def _settings(axes: tuple[Axis, ...], combo: tuple) -> tuple[tuple[str, object], ...]:
    """(key, value) pairs of a grid point: each axis's keys with the values of its entry in `combo`."""
    return tuple(pair for axis, values in zip(axes, combo, strict=True) for pair in zip(axis.keys, values, strict=True))


def unique(points: list[Point]) -> list[Point]:
    """The points, each value once (the first of equal points is kept), in their order."""
    found: dict[tuple, Point] = {}
    for point in points:
        found.setdefault(point.key, point)
    return list(found.values())


def _frozen(value):
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


def draw(axis: Axis, u: float) -> tuple[str, object]:
    """The value at quantile `u` of a drawn axis (uniform, or uniform in the logarithm)."""
    if axis.values:
        return axis.keys[0], axis.values[min(int(u * len(axis.values)), len(axis.values) - 1)][0]
    if axis.log:
        return axis.keys[0], float(math.exp(math.log(axis.low) + u * (math.log(axis.high) - math.log(axis.low))))
    return axis.keys[0], float(axis.low + u * (axis.high - axis.low))


def sweep_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("mnistlab.spec.sweeps").iterdir()
        if p.name.endswith(".toml")
    )


def load(name_or_path: str) -> Sweep:
    """A shipped sweep by name, or a sweep TOML file, checked: one-line ConfigErrors name what is wrong."""
    path = Path(name_or_path)
    if config.is_file_name(name_or_path) and (path.exists() or name_or_path not in sweep_names()):
        if not path.exists():
            raise ConfigError(f"no sweep or TOML file {name_or_path!r}; sweeps: {', '.join(sweep_names())}")
        origin, name, table = str(path), path.stem, config.read_toml_file(path)
    elif name_or_path in sweep_names():
        origin, name = f"sweep {name_or_path}", name_or_path
        text = (resources.files("mnistlab.spec.sweeps") / f"{name_or_path}.toml").read_text()
        table = config.parse_config_text(text, origin)
    else:
        raise ConfigError(f"no sweep or TOML file {name_or_path!r}; sweeps: {', '.join(sweep_names())}")
    return _build(name, table, origin)


def _build(name: str, table: dict, origin: str) -> Sweep:
    _known(table, TOP_KEYS, origin, "a sweep")
    for key in ("base", "axis"):
        if key not in table:
            raise ConfigError(f"{origin}: missing {key!r}")
    for key in ("description", "claim", "base"):
        if not isinstance(table.get(key, ""), str):
            raise ConfigError(f"{origin}: {key} must be a string")
    overrides = table.get("set", [])
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f'{origin}: set must be a list of "key=value" strings')
    search = _search(table.get("search", {}), origin)
    if not isinstance(table["axis"], list) or not table["axis"]:
        raise ConfigError(f"{origin}: a sweep needs at least one [[axis]]")
    axes = tuple(_axis(a, search, f"{origin}: axis {i + 1}") for i, a in enumerate(table["axis"]))
    keys = [key for axis in axes for key in axis.keys]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"{origin}: a key is swept by two axes ({', '.join(keys)})")
    sweep = Sweep(
        name,
        table.get("description", ""),
        table.get("claim", ""),
        table["base"],
        tuple(overrides),
        axes,
        search,
        _lab(table.get("lab", {}), origin),
    )
    if sweep.size > MAX_POINTS:
        what = "trials" if search.method != "grid" else "points (" + " x ".join(str(len(a.values)) for a in axes) + ")"
        raise ConfigError(f"{origin}: {sweep.size:,} {what}, over the limit of {MAX_POINTS:,} in one sweep")
    return sweep


def _lab(table, origin: str) -> dict:
    """The lab report's values of swept keys: config keys, each with a list of values its rule takes."""
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise ConfigError(f"{origin}: lab must be a table of key = [values]")
    for key, values in table.items():
        for value in values:
            config.check_value(key, value, f"{origin}: lab")
    return {key: tuple(values) for key, values in table.items()}


def _search(table, origin: str) -> Search:
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [search] must be a table")
    _known(table, SEARCH_KEYS, origin, "[search]")
    method = table.get("method", "grid")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{origin}: search.method must be one of {', '.join(METHODS)}, got {shown(method)}")
    trials, seed, storage = table.get("trials", 0), table.get("seed", 0), table.get("storage")
    if method != "grid" and not _whole(trials, 1, MAX_POINTS):
        raise ConfigError(f"{origin}: search.trials must be an integer from 1 to {MAX_POINTS:,}, got {shown(trials)}")
    if not _whole(seed, 0, MAX_SEED):
        raise ConfigError(f"{origin}: search.seed must be an integer from 0 to {MAX_SEED}, got {shown(seed)}")
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(f"{origin}: search.storage must be a database URL (a string), got {shown(storage)}")
    if storage is not None and method != "optuna":
        raise ConfigError(f'{origin}: search.storage is for method = "optuna" only')
    pruner = table.get("pruner", "none")
    if not isinstance(pruner, str) or pruner not in PRUNERS:
        raise ConfigError(f"{origin}: search.pruner must be one of {', '.join(PRUNERS)}, got {shown(pruner)}")
    if pruner != "none" and method != "optuna":
        raise ConfigError(f'{origin}: search.pruner is for method = "optuna" only')
    min_epochs = table.get("min_epochs", 1)
    if not _whole(min_epochs, 1, config.MAX_EPOCHS):
        raise ConfigError(
            f"{origin}: search.min_epochs must be an integer from 1 to {config.MAX_EPOCHS:,}, got {shown(min_epochs)}"
        )
    factor = table.get("reduction_factor", REDUCTION_FACTOR.get(pruner, 0))
    if "reduction_factor" in table and pruner not in REDUCTION_FACTOR:
        raise ConfigError(f'{origin}: search.reduction_factor is for pruner = "asha" or "hyperband" only')
    if pruner in REDUCTION_FACTOR and not _whole(factor, 2, 100):
        raise ConfigError(f"{origin}: search.reduction_factor must be an integer from 2 to 100, got {shown(factor)}")
    return Search(method, trials, seed, storage, pruner, min_epochs, factor)


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _axis(table, search: Search, where: str) -> Axis:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    _known(table, AXIS_KEYS, where, "[[axis]]")
    if ("key" in table) == ("keys" in table):
        raise ConfigError(f'{where}: give key = "section.name", or keys = [...] for keys varied together')
    if "keys" in table and not isinstance(table["keys"], list):
        raise ConfigError(f'{where}: keys must be a list of config keys, such as ["train.batch_size", "train.epochs"]')
    keys = tuple(table["keys"]) if "keys" in table else (table["key"],)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f'{where}: keys must be config keys such as "model.l2"')
    if swept := [k for k in keys if k.rpartition(".")[2] in NOT_SWEPT]:
        raise ConfigError(f"{where}: {swept[0]} cannot be swept (seeds: --seeds)")
    for key in keys:
        config.check_key(key, where)
    forms = [f for f in ("values", "range", "log_range", "uniform", "log_uniform") if f in table]
    if len(forms) != 1:
        raise ConfigError(f"{where}: give one of values, range, log_range, uniform, log_uniform")
    form = forms[0]
    if form == "values":
        values = table["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a list of one or more values")
        if len(values) > MAX_AXIS_POINTS:
            raise ConfigError(f"{where}: {len(values):,} values, over the limit of {MAX_AXIS_POINTS:,} on one axis")
        if len(keys) > 1 and not all(isinstance(v, list) and len(v) == len(keys) for v in values):
            raise ConfigError(f"{where}: each value must list one value per key ({len(keys)})")
        points = tuple(tuple(v) if len(keys) > 1 else (v,) for v in values)
        for point in points:
            for key, value in zip(keys, point, strict=True):
                config.check_value(key, value, where)
        return Axis(keys, points)
    if len(keys) > 1:
        raise ConfigError(f"{where}: keys varied together take values = [[...], ...]")
    low, high = _bounds(table[form], form, where)
    if form in ("uniform", "log_uniform"):
        if search.method == "grid":
            raise ConfigError(f"{where}: {form} is drawn from: add [search] with method random or optuna")
        return Axis(keys, (), low, high, form == "log_uniform")
    if search.method != "grid":
        raise ConfigError(f"{where}: a search draws from uniform or log_uniform = [lo, hi], not {form}")
    points = table.get("points")
    if not _whole(points, 2, MAX_AXIS_POINTS):
        raise ConfigError(f"{where}: {form} needs points = N, from 2 to {MAX_AXIS_POINTS:,}, got {shown(points)}")
    if form == "log_range":
        step = (math.log10(high) - math.log10(low)) / (points - 1)
        values = [float(f"{10 ** (math.log10(low) + i * step):.3g}") for i in range(points)]
    else:  # 12 digits: 0.1 + 2 * 0.1 is the 0.3 that a person would write
        values = [float(f"{low + i * (high - low) / (points - 1):.12g}") for i in range(points)]
    return Axis(keys, tuple((v,) for v in values))


def _bounds(pair, form: str, where: str) -> tuple[float, float]:
    numbers = (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
    )
    if not numbers or not pair[0] < pair[1] or (form.startswith("log") and pair[0] <= 0):
        rule = "0 < lo < hi" if form.startswith("log") else "lo < hi"
        raise ConfigError(f"{where}: {form} must be [lo, hi], finite, with {rule}, got {shown(pair)}")
    return float(pair[0]), float(pair[1])


def _known(table: dict, allowed: tuple[str, ...], origin: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{origin}: unknown key {key!r}; {what} takes {', '.join(allowed)}")


_SAFE = re.compile(r"[A-Za-z0-9_.,=+-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]")


def _text(value) -> str:
    if isinstance(value, float):  # the shortest text that reads back as this very float; 2.0 as 2
        return repr(value).removesuffix(".0")
    if isinstance(value, list):
        return "-".join(map(_text, value))
    return str(value)
