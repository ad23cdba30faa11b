"""The machine's calibration: what it decides from its measurements, and a cache it never trusts blindly."""

import json
from dataclasses import asdict, replace

import pytest
import torch

from mnistlab.cli import main
from mnistlab.train import calibration, hardware, probes
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
    assert {p.members for p in measured.probes} == set(probes.PROBE_MEMBERS["cpu"])
    assert all(p.seconds_per_model_step > 0 for p in measured.probes)
    assert calibration.read(cache, hardware.machine(CPU)) == measured


# --- compile only when it pays -----------------------------------------------------------------------------


def test_a_stack_compiles_only_where_its_steps_win_the_compile_back():
    tuned = _measured(compile_seconds=30.0, eager_saving=1e-4)  # 0.1 ms per model, layer and step
    assert not tuned.compiles(layers=2, members=1, steps=3_438)  # provided, one epoch: 0.7 s saved
    assert not tuned.compiles(layers=6, members=2, steps=6_876)  # two powerful models, two epochs: 8 s
    assert tuned.compiles(layers=6, members=6, steps=6_876)  # six, two epochs: 25 s, over half the 30
    assert tuned.compiles(layers=6, members=4, steps=171_900)  # the study's stack of four, 50 epochs
    assert tuned.compiles(layers=6, members=1, steps=750, rows=8192)  # a full batch, 50 epochs of 15 chunks
    assert not tuned.compiles(layers=2, members=1, steps=110, rows=1000)  # the tests' batch-1000 epoch
    assert tuned.break_even_epochs(members=4) == pytest.approx(30.0 / (2 * 1e-4 * 6 * 4 * (1563 + 1875)))


@pytest.mark.parametrize(("compile", "expected"), [("auto", False), (True, True), (False, False)])
def test_the_engine_follows_the_choice_and_the_run_records_it(tmp_path, data_env, compile, expected):
    from mnistlab import api

    run = api.run("provided", epochs=1, batch_size=1000, compile=compile, out=tmp_path / "run", quiet=True)
    assert run.seed_runs[0].folder.read_environment()["compiled"] is expected


# --- a busy machine ----------------------------------------------------------------------------------------


def test_probes_that_were_crowded_out_or_disagree_say_the_machine_was_busy():
    groups = [(2, 1, 4, None), (1, 2, 4, None)]
    quiet = [[(4e-4, 0.99), (4.1e-4, 0.98)], [(5e-4, 0.7), (5.1e-4, 0.7)]]  # two threads need not be busy
    assert probes._busy(0.05, groups, quiet) is None
    assert "got 55% of their cores" in probes._busy(0.05, groups, [[(8e-4, 0.55), (8e-4, 0.55)], quiet[1]])
    assert "differed 2.0x" in probes._busy(0.05, groups, [[(4e-4, 0.99), (8e-4, 0.99)], quiet[1]])
    assert "70% busy with other work" in probes._busy(0.7, groups, quiet)


def test_a_provisional_calibration_is_used_until_a_quiet_machine_measures_it_again(cache, monkeypatch):
    busy = _measured(threads_alone=1, provisional="a probe got 40% of its core")
    settled = _measured(threads_alone=2)
    _store(cache, busy)
    monkeypatch.setattr(calibration, "from_probes", lambda device: settled)
    monkeypatch.setattr(calibration, "busy_share", lambda: 0.9)  # still busy: the provisional one, as it is
    assert calibration.calibration(CPU, log=lambda _: None) == busy
    monkeypatch.setattr(calibration, "busy_share", lambda: 0.02)  # quiet: measured again, and settled
    lines = []
    assert calibration.calibration(CPU, log=lines.append) == settled
    assert "was provisional (a probe got 40% of its core)" in lines[0]
    assert calibration.read(cache, hardware.machine(CPU)) == settled


def test_real_stacks_much_faster_than_the_probes_make_the_calibration_provisional(cache, capsys, monkeypatch):
    _store(cache, _measured())
    monkeypatch.setattr(calibration, "busy_share", lambda: 0.9)  # not quiet enough to measure again here
    probe_rate = calibration.macs_per_model_step(probes.PROBE_ARCH, 32) / (4e-4 * 2)  # per worker, (2, 1)
    usual = calibration.Achieved(2, 1, 3, 0.8 * probe_rate)
    assert calibration.record(CPU, [usual]).provisional is None
    faster = calibration.Achieved(2, 1, 3, 3.0 * probe_rate)
    updated = calibration.record(CPU, [faster])
    assert "real stacks trained 3.0x as fast as the probes measured" in updated.provisional
    assert calibration.read(cache, hardware.machine(CPU)).achieved == (usual, faster)
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    assert "PROVISIONAL: real stacks trained 3.0x" in out and "3.00x the probes'" in out
    assert "a stack compiles when that wins the compile back" in out


@pytest.mark.slow
def test_a_calibration_beside_a_cpu_hog_is_not_settled_and_a_quiet_one_replaces_it(cache):
    """A process spinning on every core while the probes run: the answer is cached as provisional, never
    as settled; once the hog is gone the next command measures again and settles it."""
    import multiprocessing

    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(hardware.cores())]
    for hog in hogs:
        hog.start()
    try:
        busy = calibration.calibration(CPU, log=lambda _: None)
    finally:
        for hog in hogs:
            hog.kill()
    assert busy.provisional, busy.describe()
    quiet = calibration.calibration(CPU, log=lambda _: None)
    assert quiet.provisional is None and quiet.probes != busy.probes
    assert calibration.read(cache, hardware.machine(CPU)).provisional is None


def _spin() -> None:
    while True:
        pass
