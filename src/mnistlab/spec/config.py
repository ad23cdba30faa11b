"""Experiments are data: TOML presets shipped in the package, or any TOML file of the same form.

A preset may `extends` another and override some of its keys; `--set section.key=value` overrides
a resolved config from the command line. Every key is checked: an unknown key or a bad value is a
ConfigError naming the key.

    description = "..."            # what it reproduces
    extends = "powerful"           # optional: start from another preset
    seed = 0
    dataset = "mnist"
    validation_size = 10000

    [model]
    hidden = [128, 128, 64, 64, 32]
    activation = "relu"            # relu | sigmoid | tanh
    input_dropout = 0.0            # dropout on the inputs, before the first Dense layer
    dropout = 0.0                  # dropout after each hidden layer, before the next Dense layer
    l1 = 0.0                       # kernel penalties, Keras semantics
    l2 = 0.0
    crop = 0                       # pixels cut from each side of the image before the first layer

    [train]
    epochs = 50
    batch_size = 32                # or "full"
    learning_rate = 1e-4
    schedule = "constant"          # or "cosine": the learning rate falls to zero over each phase
    warmup_epochs = 0              # linear warm-up before the schedule
    label_smoothing = 0.0
    ema = 0.0                      # decay of a moving average of the weights, which is evaluated and kept

    [augmentation]                 # the section's presence turns it on: training images only
    rotation = 0.0                 # degrees
    scale = 0.0                    # relative
    shear = 0.0
    translation = 0.0              # pixels
    elastic = 0.0                  # pixels

    [early_stopping]               # the section's presence turns it on
    monitor = "val_loss"
    patience = 10
    min_delta = 0.0
    restore_best_weights = true

Each key's name is the name of the field it fills (of `Hyperparameters`, `EarlyStopping` or
`Experiment`), and a key without a value takes that field's default.
"""

import math
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path

from mnistlab.errors import ConfigError
from mnistlab.files import MAX_DEPTH, depth, parse_toml, read_limited
from mnistlab.spec.experiment import (
    ACTIVATIONS,
    MONITORS,
    SCHEDULES,
    Augmentation,
    EarlyStopping,
    Experiment,
    Hyperparameters,
)

MAX_CONFIG_BYTES = 1 << 20  # a config or sweep file: a few kilobytes; anything larger is not one
MAX_SEED = (1 << 32) - 1
MAX_EPOCHS = 100_000
MAX_LAYERS = 100


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int) -> Callable[[object], bool]:
    return lambda value: _integer(value) and low <= value <= high


def _number(value) -> bool:
    """A finite number: TOML also reads inf, nan and 1e400 (as inf), which no setting means."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _within(low: float, high: float, *, above_low: bool = False, below_high: bool = False):
    def check(value) -> bool:
        if not _number(value):
            return False
        return (value > low if above_low else value >= low) and (value < high if below_high else value <= high)

    return check


@dataclass(frozen=True)
class Rule:
    check: Callable[[object], bool]
    wanted: str  # what the check wants, for the error message


_RATE = Rule(_within(0, 1, below_high=True), "a rate in [0, 1)")
_PENALTY = Rule(_within(0, 100), "a number from 0 to 100")
_PIXELS = Rule(_within(0, 100), "pixels from 0 to 100")

# section ("" for the top level) -> key -> rule
SCHEMA: dict[str, dict[str, Rule]] = {
    "": {
        "description": Rule(lambda v: isinstance(v, str), "a string"),
        "extends": Rule(lambda v: isinstance(v, str), "a preset name"),
        "seed": Rule(_int_in(0, MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
        "dataset": Rule(lambda v: isinstance(v, str) and v != "", "a data set name"),
        "validation_size": Rule(_int_in(1, 10_000_000), "a positive integer"),
    },
    "model": {
        "hidden": Rule(
            lambda v: isinstance(v, list) and 0 < len(v) <= MAX_LAYERS and all(_int_in(1, 1 << 40)(w) for w in v),
            f"a list of 1 to {MAX_LAYERS} positive widths",
        ),
        "activation": Rule(lambda v: v in ACTIVATIONS, " or ".join(ACTIVATIONS)),
        "input_dropout": _RATE,
        "dropout": _RATE,
        "l1": _PENALTY,
        "l2": _PENALTY,
        "crop": Rule(_int_in(0, 10_000), "a non-negative integer"),
    },
    "train": {
        "epochs": Rule(_int_in(1, MAX_EPOCHS), f"an integer from 1 to {MAX_EPOCHS:,}"),
        "batch_size": Rule(lambda v: _int_in(1, 10_000_000)(v) or v == "full", 'a positive integer or "full"'),
        "learning_rate": Rule(_within(0, 10, above_low=True), "a number above 0, at most 10"),
        "schedule": Rule(lambda v: v in SCHEDULES, " or ".join(SCHEDULES)),
        # A warm-up longer than the training is allowed: `run best --epochs 1` is a smoke run of `best`.
        "warmup_epochs": Rule(_int_in(0, MAX_EPOCHS), f"an integer from 0 to {MAX_EPOCHS:,}"),
        "label_smoothing": _RATE,
        "ema": _RATE,
    },
    "early_stopping": {
        "monitor": Rule(lambda v: isinstance(v, str) and v in MONITORS, " or ".join(MONITORS)),
        "patience": Rule(_int_in(0, MAX_EPOCHS), "a non-negative integer"),
        "min_delta": Rule(_within(0, 1000), "a number from 0 to 1000"),
        "restore_best_weights": Rule(lambda v: isinstance(v, bool), "true or false"),
    },
    "augmentation": {
        "rotation": Rule(_within(0, 180), "degrees from 0 to 180"),
        "scale": _RATE,
        "shear": Rule(_within(0, 10), "a number from 0 to 10"),
        "translation": _PIXELS,
        "elastic": _PIXELS,
    },
}
REQUIRED = {"model": ("hidden",), "train": ("epochs", "batch_size", "learning_rate")}
# The defaults of keys that fill an Experiment's own fields; those of hyperparameters and early
# stopping are their fields' defaults.
EXPERIMENT_DEFAULTS = {"description": "", "seed": 0, "dataset": "mnist", "validation_size": 10_000}
MODEL_DEFAULTS = {"activation": "relu", "crop": 0}
OPTIONAL_SECTIONS = {"early_stopping": EarlyStopping, "augmentation": Augmentation}  # on where present


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _defaults() -> dict:
    """Every optional key's default, by table."""
    hyper = _field_defaults(Hyperparameters)
    model = {**MODEL_DEFAULTS, **{k: hyper[k] for k in SCHEMA["model"] if k in hyper}}
    train = {k: hyper[k] for k in SCHEMA["train"] if k in hyper}
    sections = {name: _field_defaults(cls) for name, cls in OPTIONAL_SECTIONS.items()}
    return {**EXPERIMENT_DEFAULTS, "model": model, "train": train, **sections}


def _flatten(resolved: dict) -> dict:
    """Key -> value over every table: keys are unique across tables, and each names the field it fills."""
    flat = {}
    for key, value in resolved.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def lab_report() -> dict:
    """The lab report as data (`lab.toml`): per experiment, its section, figures, epochs and published
    numbers, in the report's order; and where its text contradicts its numbers."""
    return tomllib.loads((resources.files("mnistlab.spec") / "lab.toml").read_text())


def study_presets() -> list[str]:
    """The lab report's experiments, in its order: what `mnistlab study` trains unless told otherwise. The
    other shipped presets (`best`) go beyond the lab."""
    return [name for name, entry in lab_report().items() if isinstance(entry, dict)]


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("mnistlab.spec.presets").iterdir()
        if p.name.endswith(".toml")
    )


def load(name_or_path: str, overrides: list[str] = (), origin: str = "--set") -> Experiment:
    """A preset by name, or a TOML file by path, resolved and checked, with `key=value` overrides; an
    error in an override names `origin`, where it came from."""
    table, name = _resolve(str(name_or_path), seen=())
    for override in overrides:
        _apply_override(table, override, origin)
    return _build(name, table)


def short_keys() -> dict[str, str]:
    """Every key a run may change, by its own name: `l2` -> `model.l2`, `patience` -> `early_stopping.patience`.
    Names are unique across the tables, which is what lets the Python API take them as keyword arguments."""
    found = {key: f"{section}.{key}" if section else key for section, rules in SCHEMA.items() for key in rules}
    return {key: dotted for key, dotted in found.items() if key not in ("extends", "description")}


def read_toml_file(path: Path) -> dict:
    """A TOML file's tables: a regular file of UTF-8 TOML, at most MAX_CONFIG_BYTES, nested at most
    MAX_DEPTH deep; a one-line ConfigError otherwise."""
    try:
        text = read_limited(path, MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_config_text(text, str(path))


def parse_config_text(text: str, origin: str) -> dict:
    try:
        return parse_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def is_file_name(name_or_path: str) -> bool:
    """Whether a config is named by a file path rather than as a preset: its name ends in .toml."""
    return Path(name_or_path).suffix == ".toml"


def _read(name_or_path: str, folder: Path | None) -> tuple[dict, str, str, Path | None]:
    """The tables of a preset or a TOML file, its name, where it came from, and the folder that a
    relative `extends` in it starts from. A file named inside another file (`folder`) is found from that
    file's folder, never from wherever mnistlab happens to run."""
    path = Path(name_or_path)
    if is_file_name(name_or_path) and folder is not None and not path.is_absolute():
        path = folder / path
    if is_file_name(name_or_path) and (path.exists() or name_or_path not in preset_names()):
        if not path.exists():
            raise ConfigError(f"no preset or TOML file {str(path)!r}; presets: {', '.join(preset_names())}")
        return read_toml_file(path), path.stem, str(path), path.parent
    if name_or_path in preset_names():
        resource = resources.files("mnistlab.spec.presets") / f"{name_or_path}.toml"
        origin = f"preset {name_or_path}"
        return parse_config_text(resource.read_text(), origin), name_or_path, origin, None
    raise ConfigError(f"no preset or TOML file {name_or_path!r}; presets: {', '.join(preset_names())}")


def _resolve(name_or_path: str, seen: tuple[str, ...], folder: Path | None = None) -> tuple[dict, str]:
    if name_or_path in seen:
        raise ConfigError(f"presets extend each other in a loop: {' -> '.join((*seen, name_or_path))}")
    table, name, origin, here = _read(name_or_path, folder)
    _check_keys(table, origin)
    base_name = table.pop("extends", None)
    if base_name is None:
        return table, name
    base, _ = _resolve(base_name, (*seen, name_or_path), here)
    return _merge(base, table), name


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _check_keys(table: dict, origin: str) -> None:
    for key, value in table.items():
        if key in SCHEMA and key:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: [{key}] must be a table")
            for sub, sub_value in value.items():
                check_value(f"{key}.{sub}", sub_value, origin)
        else:
            check_value(key, value, origin)


def check_key(dotted: str, origin: str) -> Rule:
    """The rule of a config key (`section.key`, or `key` at the top level); a ConfigError naming the
    valid keys if there is no such key."""
    section, _, key = dotted.rpartition(".")
    rules = SCHEMA.get(section)
    if rules is None:
        raise ConfigError(f"{origin}: unknown key {dotted!r}; the tables are {', '.join(s for s in SCHEMA if s)}")
    if key not in rules:
        where = f"[{section}]" if section else "the top level"
        raise ConfigError(f"{origin}: unknown key {dotted!r}; {where} takes {', '.join(rules)}")
    return rules[key]


def check_value(dotted: str, value, origin: str) -> None:
    """A ConfigError naming the key unless `value` is one its rule takes."""
    rule = check_key(dotted, origin)
    if not rule.check(value):
        raise ConfigError(f"{origin}: {dotted} must be {rule.wanted}, got {shown(value)}")


def shown(value, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut short (a value may be megabytes of list)."""
    text = repr(value) if depth(value) <= MAX_DEPTH else f"a value nested more than {MAX_DEPTH} deep"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _apply_override(table: dict, override: str, origin: str) -> None:
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"{origin} {override!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = parse_toml(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as full or relu
    except ValueError as exc:
        raise ConfigError(f"{origin} {dotted}: {exc}") from None
    if dotted == "extends":
        raise ConfigError(f"{origin}: extends is only for files; run the other preset instead")
    check_value(dotted, value, origin)
    section, _, key = dotted.rpartition(".")
    (table.setdefault(section, {}) if section else table)[key] = value


def _build(name: str, table: dict) -> Experiment:
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in table.get(section, {}):
                raise ConfigError(f"{name}: missing required key {section}.{key}")
    resolved = _merge(_defaults(), table)
    sections = {}
    for section, cls in OPTIONAL_SECTIONS.items():
        if section in table:
            sections[section] = cls(**{f.name: _typed(f.type, resolved[section][f.name]) for f in fields(cls)})
        else:
            resolved.pop(section)
            sections[section] = None
    values = _flatten(resolved)
    if sections["augmentation"] and values["batch_size"] == "full":
        raise ConfigError(f"{name}: [augmentation] needs mini-batches; set train.batch_size to a number")
    hyperparameters = Hyperparameters(
        **{f.name: _typed(f.type, values[f.name]) for f in fields(Hyperparameters) if f.name not in sections},
        **sections,
    )
    return Experiment(
        name=name,
        description=resolved["description"],
        dataset=resolved["dataset"],
        validation_size=resolved["validation_size"],
        hidden=tuple(values["hidden"]),
        activation=values["activation"],
        crop=values["crop"],
        batch_size=None if values["batch_size"] == "full" else values["batch_size"],
        hyperparameters=hyperparameters,
        table=resolved,
    )


def _typed(annotation, value):
    """TOML writes 0 for 0.0: a float field gets a float."""
    return float(value) if annotation in (float, "float") else value


def to_toml(experiment: Experiment) -> str:
    """The resolved config as TOML that `mnistlab run FILE.toml` runs again to the same result."""
    lines = [f"# resolved config of {experiment.name}"]
    tables = []
    for key, value in experiment.table.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in tables:
        lines += ["", f"[{key}]", *(f"{k} = {toml_value(v)}" for k, v in value.items())]
    return "\n".join(lines) + "\n"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return repr(value)
