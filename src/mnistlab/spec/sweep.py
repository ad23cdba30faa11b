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

A grid is the cross product of its axes. Axes may mix keys that members of one lockstep stack can differ
in (penalties, dropout, learning rate, epochs) with keys that they cannot (widths, batch size): the
points then split into one stack per value of the latter, which is allowed and only costs speed.
"""

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from itertools import product
from pathlib import Path

from mnistlab.errors import ConfigError
from mnistlab.spec.config import toml_value

TOP_KEYS = ("description", "claim", "base", "set", "lab", "axis", "search")
AXIS_KEYS = ("key", "keys", "values", "range", "log_range", "points", "uniform", "log_uniform")
SEARCH_KEYS = ("method", "trials", "seed", "storage")
METHODS = ("grid", "random", "optuna")
NOT_SWEPT = ("seed", "extends", "description")  # seeds are --seeds; the others are not numbers of a run


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
    def label(self) -> str:
        """A folder name: `l2=1e-05`, `batch_size=32,epochs=5`."""
        return ",".join(f"{key.rpartition('.')[2]}={_text(value)}" for key, value in self.settings)

    def overrides(self) -> list[str]:
        return [f"{key}={toml_value(value)}" for key, value in self.settings]


@dataclass(frozen=True)
class Search:
    method: str = "grid"
    trials: int = 0
    seed: int = 0
    storage: str | None = None


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
        """The grid's points, or a random search's draws; an Optuna search asks for its own."""
        if self.search.method == "grid":
            return [
                Point(tuple(pair for axis, values in zip(self.axes, combo, strict=True)
                            for pair in zip(axis.keys, values, strict=True)))
                for combo in product(*(axis.values for axis in self.axes))
            ]  # fmt: skip
        if self.search.method == "random":
            import numpy as np  # a spec stays light: numpy only when drawing

            rng = np.random.default_rng(self.search.seed)
            return [Point(tuple(draw(axis, rng.random()) for axis in self.axes)) for _ in range(self.search.trials)]
        return []


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
    if path.suffix == ".toml" and path.is_file():
        origin, name = str(path), path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})") from None
    elif name_or_path in sweep_names():
        origin, name = f"sweep {name_or_path}", name_or_path
        text = (resources.files("mnistlab.spec.sweeps") / f"{name_or_path}.toml").read_text()
    else:
        raise ConfigError(f"no sweep or TOML file {name_or_path!r}; sweeps: {', '.join(sweep_names())}")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML ({exc})") from None
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
    lab = table.get("lab", {})
    if not isinstance(lab, dict) or not all(isinstance(v, list) for v in lab.values()):
        raise ConfigError(f"{origin}: lab must be a table of key = [values]")
    return Sweep(
        name,
        table.get("description", ""),
        table.get("claim", ""),
        table["base"],
        tuple(overrides),
        axes,
        search,
        {key: tuple(values) for key, values in lab.items()},
    )


def _search(table, origin: str) -> Search:
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [search] must be a table")
    _known(table, SEARCH_KEYS, origin, "[search]")
    search = Search(**table)
    if search.method not in METHODS:
        raise ConfigError(f"{origin}: search.method must be one of {', '.join(METHODS)}, got {search.method!r}")
    drawn = search.method != "grid"
    if drawn and not (isinstance(search.trials, int) and search.trials > 0):
        raise ConfigError(f"{origin}: search.trials must be a positive integer, got {search.trials!r}")
    if search.storage is not None and search.method != "optuna":
        raise ConfigError(f'{origin}: search.storage is for method = "optuna" only')
    return search


def _axis(table, search: Search, where: str) -> Axis:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    _known(table, AXIS_KEYS, where, "[[axis]]")
    if ("key" in table) == ("keys" in table):
        raise ConfigError(f'{where}: give key = "section.name", or keys = [...] for keys varied together')
    keys = tuple(table["keys"]) if "keys" in table else (table["key"],)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f'{where}: keys must be config keys such as "model.l2"')
    if swept := [k for k in keys if k.rpartition(".")[2] in NOT_SWEPT]:
        raise ConfigError(f"{where}: {swept[0]} cannot be swept (seeds: --seeds)")
    forms = [f for f in ("values", "range", "log_range", "uniform", "log_uniform") if f in table]
    if len(forms) != 1:
        raise ConfigError(f"{where}: give one of values, range, log_range, uniform, log_uniform")
    form = forms[0]
    if form == "values":
        values = table["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values is empty")
        points = tuple(tuple(v) if len(keys) > 1 else (v,) for v in values)
        if len(keys) > 1 and any(len(p) != len(keys) for p in points):
            raise ConfigError(f"{where}: each value must list one value per key ({len(keys)})")
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
    if not (isinstance(points, int) and points >= 2):
        raise ConfigError(f"{where}: {form} needs points = N, at least 2")
    if form == "log_range":
        step = (math.log10(high) - math.log10(low)) / (points - 1)
        values = [float(f"{10 ** (math.log10(low) + i * step):.3g}") for i in range(points)]
    else:
        values = [low + i * (high - low) / (points - 1) for i in range(points)]
    return Axis(keys, tuple((v,) for v in values))


def _bounds(pair, form: str, where: str) -> tuple[float, float]:
    numbers = isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair)
    if not numbers or not pair[0] < pair[1] or (form.startswith("log") and pair[0] <= 0):
        rule = "0 < lo < hi" if form.startswith("log") else "lo < hi"
        raise ConfigError(f"{where}: {form} must be [lo, hi] with {rule}, got {pair!r}")
    return float(pair[0]), float(pair[1])


def _known(table: dict, allowed: tuple[str, ...], origin: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{origin}: unknown key {key!r}; {what} takes {', '.join(allowed)}")


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "-".join(map(str, value))
    return str(value)
