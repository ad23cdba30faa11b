import subprocess
import sys

import pytest

from mnistlab.errors import ConfigError
from mnistlab.spec import Hyperparameters, config


def test_every_report_experiment_is_a_preset_that_resolves():
    assert set(config.study_presets()) <= set(config.preset_names())  # every experiment of the lab report
    for name in config.preset_names():
        experiment = config.load(name)
        assert experiment.name == name and experiment.description


def test_presets_extend_and_override():
    final = config.load("final")
    assert final.hidden == (128, 128, 64, 64, 32) and final.batch_size == 32
    assert final.hyperparameters == Hyperparameters(
        seed=0, learning_rate=1e-4, epochs=50, input_dropout=0.1, dropout=0.1, l1=0.0, l2=0.0
    )
    assert config.load("final-as-written").batch_size is None
    assert config.load("l2-strong").hyperparameters.l2 == 1e-2
    assert config.load("early-stopping").hyperparameters.early_stopping.monitor == "val_loss"
    assert config.load("powerful").hyperparameters.early_stopping is None
    lockstep = {
        config.load(n).lockstep_key()
        for n in ("powerful", "l2", "l2-strong", "l1", "dropout", "early-stopping", "final")
    }
    assert len(lockstep) == 1


def test_overrides_parse_toml_values_and_bare_words():
    experiment = config.load("final", ["train.batch_size=full", "model.l2=1e-4", "seed=3", "model.hidden=[64, 32]"])
    assert experiment.batch_size is None and experiment.hyperparameters.l2 == 1e-4 and experiment.seed == 3
    assert experiment.hidden == (64, 32)
    assert isinstance(config.load("final", ["model.l1=0"]).hyperparameters.l1, float)  # TOML's 0 is a float here


def test_resolved_config_round_trips_through_toml(tmp_path):
    experiment = config.load("early-stopping", ["model.l1=1e-5", "seed=2"])
    path = tmp_path / "again.toml"
    path.write_text(config.to_toml(experiment))
    again = config.load(str(path))
    assert again.hyperparameters == experiment.hyperparameters and again.hyperparameters.seed == 2
    fields = ("hidden", "activation", "batch_size", "dataset", "validation_size", "description")
    assert all(getattr(again, f) == getattr(experiment, f) for f in fields)


def test_with_seed_changes_the_seed_and_the_config_written_out():
    experiment = config.load("final").with_seed(7)
    assert experiment.seed == experiment.hyperparameters.seed == 7
    assert "seed = 7" in config.to_toml(experiment).splitlines()


def test_the_spec_layer_imports_no_torch():
    code = "import sys, mnistlab.spec.config; mnistlab.spec.config.load('final'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.widths=[3]"], "unknown key 'model.widths'"),
        (["optimizer.name=sgd"], "unknown key 'optimizer.name'"),
        (["train.epochs=0"], "train.epochs must be an integer from 1 to 100,000, got 0"),
        (["train.batch_size=half"], "train.batch_size must be a positive integer or \"full\", got 'half'"),
        (["model.dropout=1.5"], "model.dropout must be a rate in [0, 1), got 1.5"),
        (["model.activation=gelu"], "model.activation must be relu or sigmoid or tanh, got 'gelu'"),
        (["model.l2=-1"], "model.l2 must be a number from 0 to 100, got -1"),
        (["early_stopping.patience=true"], "early_stopping.patience must be a non-negative integer, got True"),
        (["epochs"], "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config.load("final", overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    (tmp_path / "typo.toml").write_text('extends = "final"\n[train]\nepoch = 3\n')
    with pytest.raises(ConfigError, match="typo.toml: unknown key 'train.epoch'"):
        config.load(str(tmp_path / "typo.toml"))
    (tmp_path / "broken.toml").write_text("[model\nhidden = [1]\n")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        config.load(str(tmp_path / "broken.toml"))
    (tmp_path / "bare.toml").write_text("[model]\nhidden = [8]\n")
    with pytest.raises(ConfigError, match="missing required key train.epochs"):
        config.load(str(tmp_path / "bare.toml"))
    (tmp_path / "a.toml").write_text(f'extends = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'extends = "{tmp_path / "a.toml"}"\n')
    with pytest.raises(ConfigError, match="in a loop"):
        config.load(str(tmp_path / "a.toml"))
    with pytest.raises(ConfigError, match="no preset or TOML file 'nonesuch'"):
        config.load("nonesuch")


def test_cli_reports_bad_config_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "mnistlab.cli", "run", "final", "--set", "train.learning_rate=fast"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == "mnistlab: error: --set: train.learning_rate must be a number above 0, at most 10, got 'fast'"
    )
