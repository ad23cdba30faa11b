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

    [train]
    epochs = 50
    batch_size = 32                # or "full"
    learning_rate = 1e-4

    [early_stopping]               # the section's presence turns it on
    monitor = "val_loss"
    patience = 10
    min_delta = 0.0
    restore_best_weights = true
"""

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from mnistlab.errors import ConfigError
from mnistlab.model import ACTIVATIONS, Architecture
from mnistlab.train import MONITORS, EarlyStopping, Member


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(value) -> bool:
    return _number(value) and 0 <= value < 1


def _non_negative(value) -> bool:
    return _number(value) and value >= 0


# section -> key -> (check, what the check wants)
SCHEMA = {
    "": {
        "description": (lambda v: isinstance(v, str), "a string"),
        "extends": (lambda v: isinstance(v, str), "a preset name"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
        "dataset": (lambda v: isinstance(v, str) and v != "", "a data set name"),
        "validation_size": (_positive_int, "a positive integer"),
    },
    "model": {
        "hidden": (lambda v: isinstance(v, list) and v != [] and all(map(_positive_int, v)), "a list of widths"),
        "activation": (lambda v: v in ACTIVATIONS, " or ".join(ACTIVATIONS)),
        "input_dropout": (_fraction, "a rate in [0, 1)"),
        "dropout": (_fraction, "a rate in [0, 1)"),
        "l1": (_non_negative, "a non-negative number"),
        "l2": (_non_negative, "a non-negative number"),
    },
    "train": {
        "epochs": (_positive_int, "a positive integer"),
        "batch_size": (lambda v: _positive_int(v) or v == "full", 'a positive integer or "full"'),
        "learning_rate": (lambda v: _number(v) and v > 0, "a positive number"),
    },
    "early_stopping": {
        "monitor": (lambda v: v in MONITORS, " or ".join(MONITORS)),
        "patience": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
        "min_delta": (_non_negative, "a non-negative number"),
        "restore_best_weights": (lambda v: isinstance(v, bool), "true or false"),
    },
}
DEFAULTS = {
    "description": "",
    "seed": 0,
    "dataset": "mnist",
    "validation_size": 10_000,
    "model": {"activation": "relu", "input_dropout": 0.0, "dropout": 0.0, "l1": 0.0, "l2": 0.0},
    "train": {},
    "early_stopping": {"monitor": "val_loss", "patience": 0, "min_delta": 0.0, "restore_best_weights": True},
}
REQUIRED = {"model": ("hidden",), "train": ("epochs", "batch_size", "learning_rate")}


@dataclass(frozen=True)
class Experiment:
    """A resolved, checked config: everything a run needs but the data and the engine."""

    name: str
    description: str
    seed: int
    dataset: str
    validation_size: int
    hidden: tuple[int, ...]
    activation: str
    input_dropout: float
    dropout: float
    l1: float
    l2: float
    epochs: int
    batch_size: int | None  # None: the whole training set
    learning_rate: float
    early_stopping: EarlyStopping | None
    source: dict  # the resolved TOML tables, for writing back out

    def architecture(self, inputs: int) -> Architecture:
        return Architecture(inputs, self.hidden, 10, self.activation)

    def with_seed(self, seed: int) -> "Experiment":
        return replace(self, seed=seed, source={**self.source, "seed": seed})

    def member(self) -> Member:
        return Member(
            seed=self.seed,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            input_dropout=self.input_dropout,
            dropout=self.dropout,
            l1=self.l1,
            l2=self.l2,
            early_stopping=self.early_stopping,
        )

    def lockstep_key(self) -> tuple:
        """Experiments with equal keys can train as members of one stack."""
        return (self.dataset, self.validation_size, self.hidden, self.activation, self.batch_size)

    def training_key(self) -> tuple:
        """Experiments with equal keys train to the same result, bit for bit: one training serves them all."""
        return (*self.lockstep_key(), self.member())


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in resources.files("mnistlab.presets").iterdir() if p.name.endswith(".toml")
    )


def load(name_or_path: str, overrides: list[str] = ()) -> Experiment:
    """A preset by name, or a TOML file by path, resolved and checked, with `key=value` overrides."""
    table, name = _resolve(name_or_path, seen=())
    for override in overrides:
        _apply_override(table, override)
    return _build(name, table)


def _read(name_or_path: str) -> tuple[dict, str, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, name, origin = path.read_text(), path.stem, str(path)
    elif name_or_path in preset_names():
        resource = resources.files("mnistlab.presets") / f"{name_or_path}.toml"
        text, name, origin = resource.read_text(), name_or_path, f"preset {name_or_path}"
    else:
        raise ConfigError(f"no preset or TOML file {name_or_path!r}; presets: {', '.join(preset_names())}")
    try:
        return tomllib.loads(text), name, origin
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML ({exc})") from None


def _resolve(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict, str]:
    if name_or_path in seen:
        raise ConfigError(f"presets extend each other in a loop: {' -> '.join((*seen, name_or_path))}")
    table, name, origin = _read(name_or_path)
    _check_keys(table, origin)
    base_name = table.pop("extends", None)
    if base_name is None:
        return table, name
    base, _ = _resolve(base_name, (*seen, name_or_path))
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
                _check_value(f"{key}.{sub}", sub_value, origin)
        else:
            _check_value(key, value, origin)


def _check_value(dotted: str, value, origin: str) -> None:
    section, _, key = dotted.rpartition(".")
    rules = SCHEMA.get(section)
    if rules is None:
        raise ConfigError(f"{origin}: unknown key {dotted!r}; the tables are {', '.join(s for s in SCHEMA if s)}")
    if key not in rules:
        where = f"[{section}]" if section else "the top level"
        raise ConfigError(f"{origin}: unknown key {dotted!r}; {where} takes {', '.join(rules)}")
    check, wanted = rules[key]
    if not check(value):
        raise ConfigError(f"{origin}: {dotted} must be {wanted}, got {value!r}")


def _apply_override(table: dict, override: str) -> None:
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as full or relu
    if dotted == "extends":
        raise ConfigError("--set: extends is only for files; run the other preset instead")
    _check_value(dotted, value, "--set")
    section, _, key = dotted.rpartition(".")
    (table.setdefault(section, {}) if section else table)[key] = value


def _build(name: str, table: dict) -> Experiment:
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in table.get(section, {}):
                raise ConfigError(f"{name}: missing required key {section}.{key}")
    resolved = _merge(DEFAULTS, table)
    if "early_stopping" not in table:
        resolved.pop("early_stopping")
    model, train = resolved["model"], resolved["train"]
    stopping = resolved.get("early_stopping")
    return Experiment(
        name=name,
        description=resolved["description"],
        seed=resolved["seed"],
        dataset=resolved["dataset"],
        validation_size=resolved["validation_size"],
        hidden=tuple(model["hidden"]),
        activation=model["activation"],
        input_dropout=float(model["input_dropout"]),
        dropout=float(model["dropout"]),
        l1=float(model["l1"]),
        l2=float(model["l2"]),
        epochs=train["epochs"],
        batch_size=None if train["batch_size"] == "full" else train["batch_size"],
        learning_rate=float(train["learning_rate"]),
        early_stopping=EarlyStopping(**stopping) if stopping else None,
        source=resolved,
    )


def to_toml(experiment: Experiment) -> str:
    """The resolved config as TOML that `mnistlab run FILE.toml` runs again to the same result."""
    lines = [f"# resolved config of {experiment.name}"]
    tables = []
    for key, value in experiment.source.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables:
        lines += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return repr(value)
