"""Compiled steps stored on disk: a later process loads what an earlier one compiled, gets the same bits,
and never loads a file that another user could have written or that does not load."""

import os
from collections import OrderedDict

import pytest
import torch

from mnistlab.spec import Architecture
from mnistlab.spec import Hyperparameters as Member
from mnistlab.train import compiler, steps, stored_steps
from mnistlab.train.engine import Engine
from mnistlab.train.fit import fit
from mnistlab.train.protocol import streams
from mnistlab.train.stored_steps import StoredStepWarning

SMALL = Architecture(784, (16,))  # one hidden layer: a graph that compiles in seconds
MEMBERS = [Member(seed=0, learning_rate=1e-3, epochs=2, dropout=0.1), Member(seed=1, learning_rate=1e-3, epochs=2)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A user cache of this test's own, and a process that has compiled nothing yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(steps, "_COMPILED", OrderedDict())
    return stored_steps.folder()


def _train() -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    train = torch.rand(320, 784, generator=generator), torch.randint(0, 10, (320,), generator=generator)
    evaluation = train[0][:64], train[1][:64]
    fits = fit(SMALL, MEMBERS, [streams(m, 1) for m in MEMBERS], train, evaluation, 32, Engine())
    return torch.stack([f.params for f in fits])


def _forget_compiled(monkeypatch, compiling_allowed: bool) -> None:
    """As in a new process: nothing compiled in memory; and, unless allowed, no compiling either."""
    monkeypatch.setattr(steps, "_COMPILED", OrderedDict())
    if not compiling_allowed:

        def refuse(*args, **kwargs):
            raise AssertionError("compiled again instead of loading the stored step")

        monkeypatch.setattr(compiler.torch, "compile", refuse)


def test_a_stored_step_is_loaded_instead_of_compiled_and_gives_the_same_bits(cache, monkeypatch):
    compiled_here = _train()
    stored = list(cache.glob("*.step"))
    assert len(stored) == 1
    assert stored[0].stat().st_mode & 0o777 == 0o600 and cache.stat().st_mode & 0o777 == 0o700
    _forget_compiled(monkeypatch, compiling_allowed=False)
    assert torch.equal(_train(), compiled_here)


def test_a_steps_name_holds_its_signature_and_the_code_and_no_address(monkeypatch):
    cpu = torch.device("cpu")
    signature = ((fit, (("arch", SMALL),)), 2, (torch.float32, cpu, (2, 784, 16), (12544, 16, 1)))
    assert "0x" not in repr(stored_steps._stable(signature))  # functions named: one name in every process
    name = stored_steps.digest(signature, cpu)
    assert name == stored_steps.digest(signature, cpu)
    assert name != stored_steps.digest((signature[0], 1, signature[2]), cpu)  # another thread count
    monkeypatch.setattr(stored_steps, "_code", lambda: "other source")
    assert name != stored_steps.digest(signature, cpu)


def test_a_folder_others_could_write_is_never_trusted(cache, monkeypatch):
    compiled_here = _train()
    os.chmod(cache, 0o777)
    stored_steps._warn_unsafe.cache_clear()
    _forget_compiled(monkeypatch, compiling_allowed=True)
    with pytest.warns(StoredStepWarning, match="another user could write there"):
        assert torch.equal(_train(), compiled_here)  # compiled again, not loaded
    os.chmod(cache, 0o700)
    (stored,) = cache.glob("*.step")
    os.chmod(stored, 0o666)
    stored_steps._warn_unsafe.cache_clear()
    with pytest.warns(StoredStepWarning, match="another user could write there"):
        assert stored_steps.load(stored.stem, {}) is None


def test_a_stored_step_that_does_not_load_is_compiled_again_and_replaced(cache, monkeypatch):
    compiled_here = _train()
    (stored,) = cache.glob("*.step")
    stored.write_bytes(b"not a compiled step")
    _forget_compiled(monkeypatch, compiling_allowed=True)
    with pytest.warns(StoredStepWarning, match="does not load"):
        assert torch.equal(_train(), compiled_here)
    _forget_compiled(monkeypatch, compiling_allowed=False)
    assert torch.equal(_train(), compiled_here)  # the replacement loads


def test_only_the_newest_steps_are_kept(cache, monkeypatch):
    monkeypatch.setattr(stored_steps, "KEEP", 2)
    cache.mkdir(mode=0o700, parents=True)
    for age, name in enumerate(["old", "older", "oldest"]):
        path = cache / f"{name}.step"
        path.write_bytes(b"x")
        os.utime(path, (1e9 - age, 1e9 - age))
    stored_steps._prune(cache)
    assert sorted(p.stem for p in cache.glob("*.step")) == ["old", "older"]


def test_a_compiled_step_called_with_another_shape_raises_rather_than_reading_out_of_bounds(cache):
    """The step runs without torch's guards; a call of the epoch's short last batch (which training runs
    eagerly) once segfaulted. Now it is an error that says what was expected."""
    from mnistlab.train.fit import Lockstep, Totals

    generator = torch.Generator().manual_seed(4)
    x, y = torch.rand(320, 784, generator=generator), torch.randint(0, 10, (320,), generator=generator)
    stack = Lockstep(SMALL, MEMBERS, [streams(m, 1) for m in MEMBERS], (x, y), 32, Engine())
    totals = Totals(torch.zeros(2), torch.zeros(2))
    stack.compiled(stack.state, x, y, torch.randint(0, 320, (2, 32), generator=generator), totals)
    for batch, data in (
        (torch.randint(0, 320, (2, 16), generator=generator), (x, y)),  # the short last batch
        (torch.randint(0, 320, (2, 32), generator=generator).int(), (x, y)),  # indices of another dtype
        (torch.randint(0, 320, (2, 32), generator=generator), (x[:, :400], y)),  # images of another width
    ):
        with pytest.raises(steps.StepSignatureError, match="compiled for"):
            stack.compiled(stack.state, *data, batch, totals)


def test_the_steps_kept_in_memory_are_bounded(cache, monkeypatch):
    monkeypatch.setattr(steps, "KEPT", 2)
    monkeypatch.setattr(steps, "_stored_or_compiled", lambda step_fn, args, signature: step_fn)  # no compiler
    for width in (8, 9, 10):
        arch = Architecture(784, (width,))
        generator = torch.Generator().manual_seed(0)
        data = torch.rand(64, 784, generator=generator), torch.randint(0, 10, (64,), generator=generator)
        fit(arch, MEMBERS[:1], [streams(MEMBERS[0], 1)], data, (data[0][:32], data[1][:32]), 32, Engine())
    assert len(steps._COMPILED) == 2
