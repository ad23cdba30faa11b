"""Bad input, generated: every reader of a file mnistlab reads gets malformed versions of a good file
(truncations, flipped bytes, wrong types, missing keys, wrong encodings, huge values) and must answer
with its own one-line error naming the file, never another exception. A property-based layer
(Hypothesis) does the same for the config and idx readers with arbitrary input."""

import json
import random
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistlab import data
from mnistlab.cli import main
from mnistlab.data.idx import parse_images, parse_labels, read_bytes
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.spec import config
from mnistlab.studies.folder import RunFolder, SeedRun

from .conftest import make_idx_folder


def truncations(content: bytes, count: int = 12) -> list[bytes]:
    return [content[: len(content) * i // count] for i in range(count)]


def flips(content: bytes, count: int = 12, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    flipped = []
    for _ in range(count):
        position = rng.randrange(len(content))
        flipped.append(
            content[:position] + bytes([content[position] ^ (1 << rng.randrange(8))]) + content[position + 1 :]
        )
    return flipped


def _one_line(message: str) -> bool:
    return "\n" not in message and message.strip() == message and message != ""


# --- configs ---------------------------------------------------------------------------------------

FILE_CONFIG = config.to_toml(config.load("early-stopping")).encode()
WRONG_TYPES = [
    ("model", "hidden", ['"wide"', "[0]", "[]", "[1.5]", "128"]),
    ("model", "activation", ['"gelu"', "1"]),
    ("model", "dropout", ["1.0", "-0.1", '"a lot"', "true"]),
    ("model", "l2", ["-1", '"1e-4"']),
    ("train", "epochs", ["0", "1.5", '"50"', "true", "-3"]),
    ("train", "batch_size", ["0", '"half"', "32.0"]),
    ("train", "learning_rate", ["0", "-1e-3", '"fast"']),
    ("early_stopping", "patience", ["-1", "1.5"]),
    ("early_stopping", "monitor", ['"val_f1"']),
    ("", "seed", ["-1", '"zero"', "1.5"]),
    ("", "validation_size", ["0", "-5"]),
]


def _config_variants() -> list[tuple[str, bytes]]:
    variants = [("truncated", v) for v in truncations(FILE_CONFIG)]
    variants += [("flipped", v) for v in flips(FILE_CONFIG, 20)]
    variants += [
        ("latin-1", 'description = "caf\u00e9"\n'.encode("latin-1")),
        ("utf-16", FILE_CONFIG.decode().encode("utf-16")),
    ]
    variants += [("binary", bytes(range(256)) * 4), ("huge", b"# " + b"x" * 5_000_000 + b"\n" + FILE_CONFIG)]
    for section, key, values in WRONG_TYPES:
        for value in values:
            header = f"[{section}]\n" if section else ""
            variants.append((f"{section}.{key}={value}", f'extends = "final"\n{header}{key} = {value}\n'.encode()))
    variants += [("unknown key", b'extends = "final"\n[train]\nepoch = 3\n'), ("not a table", b"model = 3\n")]
    return variants


CONFIG_VARIANTS = _config_variants()


def test_every_malformed_config_gets_a_one_line_config_error(tmp_path):
    refused = 0
    for index, (kind, content) in enumerate(CONFIG_VARIANTS):
        path = tmp_path / f"bad-{index}.toml"
        path.write_bytes(content)
        try:
            config.load(str(path))
        except ConfigError as exc:
            assert _one_line(str(exc)) and (str(path) in str(exc) or "--set" in str(exc) or "missing" in str(exc)), (
                kind,
                exc,
            )
            refused += 1
    # Truncations at a line end, and flips inside comments or strings, can leave a valid config.
    assert refused >= len(CONFIG_VARIANTS) - 12
    print(f"config reader: {len(CONFIG_VARIANTS)} malformed inputs, {refused} refused")


def test_a_malformed_config_through_the_command_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    for content in (bytes(range(256)), b'extends = "final"\n[model]\nhidden = "wide"\n', b"[model\n"):
        path.write_bytes(content)
        assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mnistlab: error: {path}") and _one_line(err)
    assert not (tmp_path / "out").exists()


# No subnormal floats: mnistlab flushes them to zero, which Hypothesis then cannot draw.
toml_values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_subnormal=False),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(-5, 10**9), max_size=3),
)
keys = st.sampled_from(
    [f"{s}.{k}" if s else k for s, rules in config.SCHEMA.items() for k in rules] + ["model.widths", "x"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.dictionaries(keys, toml_values, max_size=4))
def test_property_config_overrides_either_resolve_or_raise_config_error(overrides):
    as_text = [
        f"{key}={json.dumps(value) if not isinstance(value, bool) else str(value).lower()}"
        for key, value in overrides.items()
    ]
    try:
        experiment = config.load("final", as_text)
    except ConfigError as exc:
        assert _one_line(str(exc))
    else:
        assert experiment.hyperparameters.epochs > 0 and all(w > 0 for w in experiment.hidden)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_property_any_text_as_a_config_file_resolves_or_raises_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "any.toml"
    path.write_text(text)
    try:
        config.load(str(path))
    except ConfigError as exc:
        assert _one_line(str(exc))


# --- idx files -------------------------------------------------------------------------------------


def test_every_malformed_idx_file_gets_a_one_line_data_error(tmp_path):
    arrays = make_idx_folder(tmp_path / "good", n_train=40, n_test=10, gz=False)
    tried = refused = 0
    for stem in arrays:
        good = (tmp_path / "good" / stem).read_bytes()
        headers = [good[:4] + b"\x7f\xff\xff\xff" + good[8:], b"\x00\x00\x08\x01" + good[4:], good + b"\x00"]
        for variant in [*truncations(good, 8), *flips(good[:16], 6), *headers]:
            folder = tmp_path / f"v{tried}"
            shutil.copytree(tmp_path / "good", folder)
            (folder / stem).write_bytes(variant)
            tried += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", data.UnverifiedDataWarning)  # random data: no checksums
                    data.load(None, folder, validation_size=5, progress=False)
            except DataError as exc:
                assert _one_line(str(exc)) and str(folder) in str(exc), exc
                refused += 1
    assert refused >= tried - 4  # a flipped label can still be a label
    print(f"idx reader: {tried} malformed files, {refused} refused")


@settings(max_examples=300, deadline=None)
@given(content=st.binary(max_size=64))
def test_property_any_bytes_parse_or_raise_data_error(content):
    for parse in (parse_images, parse_labels):
        try:
            parse(content, "f")
        except DataError as exc:
            assert _one_line(str(exc))


def test_property_gzip_garbage_is_a_data_error(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(50):
        path = tmp_path / f"{index}.gz"
        path.write_bytes(b"\x1f\x8b" + rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        with pytest.raises(DataError, match=f"{index}.gz: corrupt or truncated gzip"):
            read_bytes(path)


# --- run folders -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    return tiny_run


def _run_folder_variants(folder) -> list[tuple[str, str, bytes]]:
    variants = []
    metrics = json.loads((folder / RunFolder.METRICS).read_text())
    for name in (
        RunFolder.METRICS,
        RunFolder.HISTORY,
        RunFolder.ANALYSIS,
        RunFolder.CONFIG,
        RunFolder.ENVIRONMENT,
        RunFolder.WEIGHTS,
    ):
        good = (folder / name).read_bytes()
        variants += [(name, "truncated", v) for v in truncations(good, 6)[1:]]
        variants += [(name, "flipped", v) for v in flips(good[:200], 4, seed=len(name))]
        variants += [(name, "binary", bytes(range(256))), (name, "empty", b"")]
    for key in ("preset", "seed", "test", "split_sizes", "epochs", "early_stopping", "stack_size"):
        variants.append(
            (RunFolder.METRICS, f"missing {key}", json.dumps({k: v for k, v in metrics.items() if k != key}).encode())
        )
        for wrong in ("x", None, [1], {"a": 1}, 1.5, True):
            variants.append((RunFolder.METRICS, f"{key}={wrong!r}", json.dumps({**metrics, key: wrong}).encode()))
    variants.append((RunFolder.METRICS, "newer format", json.dumps({**metrics, "format": 99}).encode()))
    variants.append((RunFolder.METRICS, "a list", b"[1, 2]"))
    return variants


def test_every_malformed_run_folder_file_is_named_in_one_line(tmp_path, finished_run, capsys):
    variants = _run_folder_variants(finished_run)
    counts: dict[str, int] = {}
    for index, (name, kind, content) in enumerate(variants):
        broken = tmp_path / f"run-{index}"
        shutil.copytree(finished_run, broken)
        (broken / name).write_bytes(content)
        try:
            run = SeedRun.load(broken)
            run.analysis(), run.folder.read_config(), run.folder.read_environment(), run.folder.read_weights()
        except MnistlabError as exc:
            assert _one_line(str(exc)) and str(broken) in str(exc), (name, kind, exc)
            counts[name] = counts.get(name, 0) + 1
        shutil.rmtree(broken)
    assert counts[RunFolder.METRICS] >= 45 and counts[RunFolder.WEIGHTS] >= 6 and len(counts) == 6
    print("run folder readers:", ", ".join(f"{name} {n} refused" for name, n in counts.items()), f"of {len(variants)}")


def test_report_names_each_broken_folder_and_reports_the_rest(tmp_path, finished_run, capsys):
    good, broken, other = tmp_path / "good", tmp_path / "broken", tmp_path / "other"
    for folder in (good, broken, other):
        shutil.copytree(finished_run, folder)
    (broken / RunFolder.METRICS).write_text('{"format": 2, "preset": ')
    (other / RunFolder.HISTORY).write_bytes(b"\xff\xfe")
    assert main(["report", str(good), str(broken), str(other), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("mnistlab: ") for line in err)
    assert "broken/metrics.json: not valid JSON" in err[0] and "other/history.csv: not UTF-8 text" in err[1]
    assert err[2] == f"mnistlab: error: 2 folder(s) left out of {tmp_path / 'r.html'}: see the warnings above"
    assert "good" in (tmp_path / "r.html").read_text()
