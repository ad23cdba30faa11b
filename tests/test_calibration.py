"""The machine's calibration: what it decides from its measurements, and a cache it never trusts blindly."""

import json
from dataclasses import asdict, replace

import pytest
import torch

from mnistlab.cli import main
from mnistlab.train import calibration, hardware
from mnistlab.train.calibration import Calibration, CalibrationWarning, Probe, decide

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A user cache of our own, with the calibration on (the test suite turns it off)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(calibration.ENV_VAR, raising=False)
    return calibration.cache_path(CPU)


def _measured(**changes) -> Calibration:
    probes = (Probe(1, 2, 4, 5e-4), Probe(2, 1, 4, 4e-4))
    return replace(Calibration(hardware.machine(CPU), 2, 1, 2, 128, None, probes, 90.0), **changes)


def _store(path, found: Calibration, **fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": calibration.FORMAT, **asdict(found), **fields}))


def test_one_process_of_every_core_wins_only_where_it_beats_the_workers_by_more_than_10_percent():
    # AMD EPYC, 2 cores, ms per model step: two single-threaded processes side by side 0.55 (stack of 4),
    # one process of two threads 0.43 (stack of 16), one single-threaded process alone 0.50.
    amd = (Probe(1, 2, 4, 0.53e-3), Probe(1, 2, 16, 0.43e-3), Probe(2, 1, 4, 0.55e-3), Probe(2, 1, 16, 0.60e-3))
    assert decide((*amd, Probe(1, 1, 4, 0.50e-3)), all_cores=2) == (1, 2, 1, 16)
    # Processes that scale: one per core, each with one thread, the smaller stack.
    scaling = (Probe(1, 2, 4, 0.6e-3), Probe(1, 2, 16, 0.6e-3), Probe(2, 1, 4, 0.4e-3), Probe(2, 1, 16, 0.41e-3))
    assert decide((*scaling, Probe(1, 1, 4, 0.8e-3)), all_cores=2) == (2, 1, 2, 4)
    # A tie, as an AMD EPYC measured it (0.326 ms both ways at 4): the workers, whose study took 564 s
    # where one process took 829.
    tie = (Probe(1, 2, 4, 0.326e-3), Probe(2, 1, 4, 0.326e-3), Probe(1, 2, 8, 0.435e-3), Probe(2, 1, 8, 0.364e-3))
    assert decide((*tie, Probe(1, 1, 4, 0.587e-3)), all_cores=2) == (2, 1, 2, 4)
    # One process 9% faster than the workers is still a tie.
    assert decide((Probe(1, 2, 4, 0.50e-3), Probe(2, 1, 4, 0.545e-3)), all_cores=2)[:2] == (2, 1)
    # A larger stack must win by more than 5% to be chosen; one core decides nothing else.
    assert decide((Probe(1, 1, 4, 1.0e-3), Probe(1, 1, 16, 0.97e-3)), all_cores=1) == (1, 1, 1, 4)


def test_a_cached_calibration_is_used_and_the_command_shows_it(cache, capsys):
    _store(cache, _measured(stack_rows=96))
    assert calibration.calibration(CPU, log=print) == _measured(stack_rows=96)
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    assert "2 worker processes, 1 thread each" in out and "up to 96 rows" in out and "calibrating" not in out


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": calibration.FORMAT, "workers": 2}),
        json.dumps({"format": 99}),
        json.dumps([1, 2]),
    ],
)
def test_a_corrupt_cache_is_ignored_with_a_warning(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    with pytest.warns(CalibrationWarning, match="ignoring an unreadable calibration"):
        assert calibration.read(cache, hardware.machine(CPU)) is None


def test_an_older_mnistlabs_calibration_is_measured_again(cache):
    # Format 1 probed stacks of dropout members alone, at 4 and 16: not what this mnistlab would decide from.
    _store(cache, _measured(), format=1)
    with pytest.warns(CalibrationWarning, match=f"format 1, this mnistlab's is {calibration.FORMAT}"):
        assert calibration.read(cache, hardware.machine(CPU)) is None


def test_a_cache_with_nonsense_counts_is_ignored(cache):
    _store(cache, _measured(), workers=0)
    with pytest.warns(CalibrationWarning, match="positive integers"):
        assert calibration.read(cache, hardware.machine(CPU)) is None


def test_another_machines_calibration_is_never_trusted(cache):
    foreign = _measured(machine={**hardware.machine(CPU), "model": "Some Other CPU", "cores": 64})
    _store(cache, foreign)
    with pytest.warns(CalibrationWarning, match="another machine"):
        assert calibration.read(cache, hardware.machine(CPU)) is None
    with pytest.warns(CalibrationWarning):
        assert calibration.known(CPU) == calibration.fixed(CPU)  # a worker's view: never measures


# /proc/cpuinfo of two machines of this project under KVM: the same name, other instructions.
ZEN3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "stepping": "1", "flags": "fpu avx2 fma"}
ZEN4 = {**ZEN3, "model": "17", "flags": "fpu avx2 fma avx512f avx512_bf16 avx512_vnni"}


def test_two_cpus_of_one_name_keep_their_own_calibrations(cache, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: ZEN3)
    zen3 = hardware.machine(CPU)
    assert zen3["model"] == "AMD EPYC family 25 model 1 stepping 1" and zen3["isa"] == "avx2 fma"
    zen3_cache = calibration.cache_path(CPU)
    _store(zen3_cache, _measured(machine=zen3, bf16_min_macs=None))

    monkeypatch.setattr(hardware, "cpu_info", lambda: ZEN4)
    assert hardware.machine(CPU)["isa"] == "avx2 fma avx512f avx512_vnni avx512_bf16"
    assert calibration.cache_path(CPU) != zen3_cache  # its own file: Zen 3's never decides bf16 on Zen 4
    with pytest.warns(CalibrationWarning, match="another machine"):  # nor Zen 3's file in Zen 4's place
        assert calibration.read(zen3_cache, hardware.machine(CPU)) is None


def test_off_measures_nothing(cache, monkeypatch):
    monkeypatch.setenv(calibration.ENV_VAR, "off")
    assert calibration.calibration(CPU) == calibration.fixed(CPU)
    assert not cache.exists()


@pytest.mark.slow
def test_measuring_writes_a_cache_that_reads_back(cache):
    measured = calibration.calibration(CPU, log=lambda _: None)  # about 1.5 minutes on 2 cores: it compiles
    assert {p.members for p in measured.probes} == set(calibration.PROBE_MEMBERS["cpu"])
    assert all(p.seconds_per_model_step > 0 for p in measured.probes)
    assert calibration.read(cache, hardware.machine(CPU)) == measured
