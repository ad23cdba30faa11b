import math
from dataclasses import replace

import pytest
import torch

from mnistlab.nn import mlp as model
from mnistlab.nn.mlp import Regularization
from mnistlab.spec import Architecture, Augmentation, EarlyStopping, StepWork, config, leaders
from mnistlab.spec import Hyperparameters as Member
from mnistlab.studies.folder import RunFolder
from mnistlab.studies.plan import PlannedRun
from mnistlab.studies.write import curve_marks
from mnistlab.train import fit as fit_module
from mnistlab.train.engine import Engine
from mnistlab.train.fit import ADAM_EPSILON, StackState, Totals, fit, seed_for, train_step
from mnistlab.train.protocol import streams, train_protocol
from mnistlab.train.tracker import Stopper

SMALL = Architecture(784, (32, 16))
SMALL_SQUARE = Architecture(784, (8,), crop=4)  # the distortions need a square image
EAGER = Engine(compile=False)


def _fit(members, train, evaluation, batch_size, engine=EAGER):
    """`fit` as phase 1 of the protocol draws its random streams."""
    return fit(SMALL, members, [streams(m, 1) for m in members], train, evaluation, batch_size, engine)


def _toy_data(n=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_adam_follows_keras_formula():
    """Three steps against Keras' Adam written out: m, v, then lr * sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)."""
    x, y = _toy_data(32)
    member = Member(seed=3, learning_rate=0.01, epochs=1, l2=1e-3)
    reg = Regularization.of(SMALL, [member], torch.device("cpu"))
    params = model.init_params(SMALL, [member.seed], torch.device("cpu"))
    state = StackState.start(SMALL, params, keys=torch.tensor([1]), learning_rate=torch.tensor([0.01]), reg=reg)
    batch, totals = torch.arange(32).view(1, 32), Totals(torch.zeros(1), torch.zeros(1))
    expected, m, v = params, torch.zeros_like(params), torch.zeros_like(params)
    for t in range(1, 4):
        weights = model.layers(expected, SMALL)
        _, _, grads = model.batch_grads(
            weights, SMALL, reg, x[batch], y[batch], state.keys, state.step, reg.dropout_members()
        )
        pairs = zip(weights, grads, strict=True)
        grad = model.flat([(gk / 32 + 2 * 1e-3 * kernel, gb / 32) for (kernel, _), (gk, gb) in pairs])  # L2: kernels
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        expected = expected - 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (v.sqrt() + ADAM_EPSILON)
        train_step(
            state,
            x,
            y,
            batch,
            totals,
            arch=SMALL,
            work=StepWork(l2=True),
            dropout_members=reg.dropout_members(),
            bf16_layers=(),
        )
        torch.testing.assert_close(state.params, expected)
    assert state.step.item() == 3


def test_lockstep_equals_separate_runs():
    train, evaluation = _toy_data(200, seed=1), _toy_data(64, seed=2)
    members = [
        Member(seed=0, learning_rate=1e-3, epochs=2, input_dropout=0.1, dropout=0.2),
        Member(seed=1, learning_rate=3e-3, epochs=1, l2=1e-3),
        Member(seed=2, learning_rate=1e-4, epochs=2, l1=1e-4, dropout=0.5),
    ]
    stacked = _fit(members, train, evaluation, 32)
    for member, together in zip(members, stacked, strict=True):
        (alone,) = _fit([member], train, evaluation, 32)
        torch.testing.assert_close(together.params, alone.params, rtol=1e-5, atol=1e-6)
        assert together.epochs == alone.epochs == member.epochs
        for a, b in zip(together.history, alone.history, strict=True):
            assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.eval_loss == pytest.approx(b.eval_loss, rel=1e-5)


def test_full_batch_in_chunks_equals_one_chunk(monkeypatch):
    """Chunking a full batch changes only the order of float sums, dropout masks included."""
    train, evaluation = _toy_data(600, seed=6), _toy_data(64, seed=7)
    members = [Member(seed=0, learning_rate=1e-3, epochs=3, input_dropout=0.2, dropout=0.1, l1=1e-4)]
    monkeypatch.setattr("mnistlab.train.fit.FULL_BATCH_ROWS", 10**6)
    (whole,) = _fit(members, train, evaluation, None)
    monkeypatch.setattr("mnistlab.train.fit.FULL_BATCH_ROWS", 1)  # chunks of at most 256 rows: 200, 200, 200
    (chunked,) = _fit(members, train, evaluation, None)
    # Within a thousandth of one Adam step (lr 1e-3): Adam divides by sqrt(v), which magnifies rounding
    # differences in the gradients of weights whose gradients are tiny.
    torch.testing.assert_close(chunked.params, whole.params, rtol=1e-5, atol=1e-6)
    assert [e.loss for e in chunked.history] == pytest.approx([e.loss for e in whole.history], rel=1e-5)


def test_compiled_steps_agree_with_eager_for_each_stack_they_serve():
    """Compiled steps run without dynamo's guards, kept per signature: stacks whose tensors have the
    same shapes but that bind different values into the step (dropout in one, an L1 penalty in the
    other) each get a graph of their own, and one graph serves data of any row count."""
    (x, y), evaluation = _toy_data(320, seed=8), _toy_data(64, seed=9)
    dropping = Member(seed=0, learning_rate=1e-3, epochs=2, input_dropout=0.2, dropout=0.1)
    penalised = Member(seed=0, learning_rate=1e-3, epochs=2, l1=1e-3)
    for member, rows, batch_size in [
        (dropping, 320, 32),
        (penalised, 320, 32),
        (dropping, 288, 32),
        (dropping, 320, None),
    ]:
        train = x[:rows], y[:rows]
        (compiled,) = _fit([member], train, evaluation, batch_size, Engine())
        (eager,) = _fit([member], train, evaluation, batch_size)
        torch.testing.assert_close(compiled.params, eager.params, rtol=1e-4, atol=1e-5)
        assert compiled.history[-1].loss == pytest.approx(eager.history[-1].loss, rel=1e-4)


def test_a_finished_member_is_frozen_while_others_train():
    train, evaluation = _toy_data(96), _toy_data(32, seed=3)
    short, long = Member(seed=0, learning_rate=1e-3, epochs=1), Member(seed=1, learning_rate=1e-3, epochs=3)
    frozen, trained = _fit([short, long], train, evaluation, 32)
    # The same stack shape, both members stopping after one epoch: a lone matmul may split its sums
    # across threads differently from a batched one, so bit-for-bit comparisons keep the stack's shape.
    one_epoch, _ = _fit([short, replace(long, epochs=1)], train, evaluation, 32)
    assert torch.equal(frozen.params, one_epoch.params) and frozen.epochs == 1
    assert trained.epochs == 3


def _memorise_then_diverge():
    """Training labels y; 'validation' the same images with other labels: its loss rises as training fits y."""
    x, y = _toy_data(128, seed=5)
    return (x, y), (x, (y + 1) % 10)


def test_early_stopping_stops_and_restores_the_best_epoch():
    train, evaluation = _memorise_then_diverge()
    rule = EarlyStopping(monitor="val_loss", patience=2)
    member = Member(seed=4, learning_rate=1e-2, epochs=20, early_stopping=rule)
    (result,) = _fit([member], train, evaluation, 32)
    losses = [e.eval_loss for e in result.history]
    best = 1 + losses.index(min(losses))
    assert result.stopped_early and result.epochs == best + 2 < 20
    assert result.best_epoch == best
    (until_best,) = _fit([replace(member, epochs=best, early_stopping=None)], train, evaluation, 32)
    assert torch.equal(result.params, until_best.params)


def test_best_weights_restored_also_when_the_last_epoch_ends_the_run():
    train, evaluation = _memorise_then_diverge()
    member = Member(seed=4, learning_rate=1e-2, epochs=4, early_stopping=EarlyStopping(patience=10))
    (result,) = _fit([member], train, evaluation, 32)
    assert not result.stopped_early and result.epochs == 4 and result.best_epoch < 4
    (until_best,) = _fit([replace(member, epochs=result.best_epoch, early_stopping=None)], train, evaluation, 32)
    assert torch.equal(result.params, until_best.params)


def test_a_member_rides_the_longest_member_whose_first_epochs_are_its_training():
    whole = Member(seed=0, learning_rate=1e-3, epochs=10)
    stopping = replace(whole, early_stopping=EarlyStopping(patience=2))
    members = [
        stopping,
        replace(whole, epochs=5),  # a shorter budget: the first epochs of the whole run
        whole,
        replace(whole, epochs=12, early_stopping=EarlyStopping()),  # may stop: nobody's prefix, no leader
        replace(stopping, epochs=12),  # a longer budget than the whole run's
        replace(stopping, schedule="cosine"),  # its rates depend on its budget
        replace(stopping, seed=1),
        replace(stopping, l2=1e-4),
        whole,  # a twin: the first of equals leads
    ]
    assert leaders(members) == [2, 2, 2, 3, 4, 5, 6, 7, 2]
    assert leaders([stopping, whole], keys=["a", "b"]) == [0, 1]  # other random streams


def test_a_run_that_is_the_first_epochs_of_another_is_read_off_its_training(monkeypatch):
    """Early stopping on a model that also trains its whole budget costs no row of the stack: its history is
    the whole run's first epochs, and its weights those of a run of that many epochs, bit for bit."""
    train, evaluation = _memorise_then_diverge()
    whole = Member(seed=4, learning_rate=1e-2, epochs=12)
    last = replace(whole, early_stopping=EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=False))
    best = replace(whole, early_stopping=EarlyStopping(monitor="val_loss", patience=2))
    rows = []
    lockstep = fit_module.Lockstep
    monkeypatch.setattr(
        fit_module, "Lockstep", lambda arch, members, *a: rows.append(members) or lockstep(arch, members, *a)
    )
    stopped_last, trained, stopped_best = _fit([last, whole, best], train, evaluation, 32)
    assert rows == [[whole]]
    assert trained.epochs == 12 and stopped_last.stopped_early and stopped_best.stopped_early
    assert stopped_last.history == stopped_best.history == trained.history[: stopped_last.epochs]
    losses = [e.eval_loss for e in trained.history]
    assert stopped_best.best_epoch == 1 + losses.index(min(losses)) == stopped_last.epochs - 2
    for result, epochs in [(stopped_best, stopped_best.best_epoch), (stopped_last, stopped_last.epochs)]:
        (alone,) = _fit([replace(whole, epochs=epochs)], train, evaluation, 32)
        assert torch.equal(result.params, alone.params)
    numbers = [(e.loss, e.accuracy, e.eval_loss, e.eval_accuracy) for e in alone.history]
    assert [(e.loss, e.accuracy, e.eval_loss, e.eval_accuracy) for e in stopped_best.history] == numbers


def test_stopper_follows_keras_rules():
    stopper = Stopper(EarlyStopping(monitor="val_loss", patience=1, min_delta=0.1))
    assert stopper.update(1, 1.0) == (True, False)
    assert stopper.update(2, 0.95) == (False, True)  # not better by min_delta; patience 1 used up
    accuracy = Stopper(EarlyStopping(monitor="val_accuracy", patience=0))
    assert accuracy.update(1, 0.5) == (True, False)
    assert accuracy.update(2, 0.6) == (True, False)
    assert accuracy.update(3, 0.55) == (False, True) and accuracy.best_epoch == 2


def test_short_real_run_is_deterministic_and_learns(mnist):
    """The compiled engine, twice, on a real subset: identical histories and > 90% validation accuracy."""
    x, y = mnist.split("train")
    member = Member(seed=0, learning_rate=1e-3, epochs=3, dropout=0.1)
    runs = [_fit([member], (x[:10_000], y[:10_000]), mnist.split("validation"), 32, Engine())[0] for _ in range(2)]
    assert runs[0].history[-1].eval_accuracy > 0.90
    assert [(e.loss, e.accuracy, e.eval_loss, e.eval_accuracy) for e in runs[0].history] == [
        (e.loss, e.accuracy, e.eval_loss, e.eval_accuracy) for e in runs[1].history
    ]
    assert torch.equal(runs[0].params, runs[1].params)


def test_protocol_retrains_for_the_epochs_phase_one_ran(small_mnist):
    rule = EarlyStopping(patience=1)
    members = [
        Member(seed=0, learning_rate=1e-2, epochs=30, early_stopping=rule),
        Member(seed=1, learning_rate=1e-3, epochs=2),
        Member(seed=0, learning_rate=1e-2, epochs=30, early_stopping=replace(rule, restore_best_weights=False)),
    ]
    early, plain, kept = train_protocol(SMALL, members, small_mnist.on(torch.device("cpu")), 64, EAGER)
    assert early.phase2.epochs == early.phase1.epochs < 30
    assert early.phase1.stopped_early and early.phase1.restored_best
    assert curve_marks(early.phase1) == {
        "lowest validation loss": early.phase1.best_epoch,
        "restored best epoch": early.phase1.best_epoch,
        "early stop": early.phase1.epochs,
    }
    # The same run without restoring: the curves mark no restored epoch, which would mislead.
    assert not kept.phase1.restored_best
    assert "restored best epoch" not in curve_marks(kept.phase1) and "early stop" in curve_marks(kept.phase1)
    assert (plain.phase1.epochs, plain.phase2.epochs) == (2, 2)
    assert [e.eval_loss for e in plain.phase2.history] != [e.eval_loss for e in plain.phase1.history]
    for split in ("train", "validation", "full", "test"):
        assert 0.5 < plain.scores[split].accuracy <= 1 and plain.scores[split].loss > 0
    assert plain.scores["validation"].loss == pytest.approx(plain.phase1.history[-1].eval_loss, rel=1e-5)
    assert plain.scores["test"].accuracy == pytest.approx(plain.phase2.history[-1].eval_accuracy)


def test_random_streams_are_independent():
    seeds = {seed_for(s, stream) for s in range(3) for stream in ("init", "shuffle-1", "shuffle-2", "dropout-1")}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)


def test_runs_of_one_seed_share_initial_weights_and_data_order_whatever_the_experiment():
    """Why the report pairs runs by seed: the same seed gives two experiments the same starting point and
    the same batches, so their difference is the experiments', not the seeds'."""
    from mnistlab.spec import config
    from mnistlab.train.fit import Lockstep, epoch_batches

    x, y = _toy_data(256)
    powerful, l2 = (config.load(name).hyperparameters for name in ("powerful", "l2"))
    arch = Architecture(784, config.load("powerful").hidden)
    stack = Lockstep(arch, [powerful, l2], [streams(powerful, 1), streams(l2, 1)], (x, y), 32, EAGER)
    for kernel, bias in stack.state.weights:
        assert torch.equal(kernel[0], kernel[1]) and torch.equal(bias[0], bias[1])
    for batch in epoch_batches(stack.shufflers, 256, 32, torch.device("cpu")):
        assert torch.equal(batch[0], batch[1])
    other_seed = Lockstep(arch, [powerful], [streams(replace(powerful, seed=1), 1)], (x, y), 32, EAGER)
    assert not torch.equal(other_seed.state.weights[0][0][0], stack.state.weights[0][0][0])


def test_the_stacking_key_and_the_step_key_come_from_one_description():
    """What a step does beyond the plain model (`spec.StepWork`) is described once: the plan sorts runs by
    it, the step binds it, and the compiled step's signature holds it. A new hyperparameter for the step
    is a field there, which all three then follow."""
    from dataclasses import fields

    from mnistlab.studies.plan import stacks
    from mnistlab.train.fit import Lockstep
    from mnistlab.train.steps import _signature

    plain = Member(seed=0, learning_rate=1e-3, epochs=1)
    asks = {
        "dropout": replace(plain, input_dropout=0.1),
        "l1": replace(plain, l1=1e-5),
        "l2": replace(plain, l2=1e-5),
        "label_smoothing": replace(plain, label_smoothing=0.1),
        "ema": replace(plain, ema=0.9),
        "augmentation": replace(plain, augmentation=Augmentation(rotation=5)),
        "elastic": replace(plain, augmentation=Augmentation(elastic=1)),
    }
    assert set(asks) == {f.name for f in fields(StepWork)}  # every field has a member that asks for it
    assert StepWork.of([plain]) == StepWork()
    for name, member in asks.items():
        work = StepWork.of([plain, member])
        assert getattr(work, name) and work == StepWork.of([member])
        x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        stack = Lockstep(SMALL_SQUARE, [plain, member], [streams(plain, 1), streams(member, 1)], (x, y), 32, Engine())
        assert stack.eager.keywords["work"] == work  # the flags bound into the step
        batch = torch.zeros(2, 32, dtype=torch.int64)
        assert work in _signature(stack.eager, (stack.state, x, y, batch))[0][1][-1]  # the compiled step's key
    # The plan sorts a group's runs by the same description: the plain runs, then each kind of work.
    experiment = config.load("powerful", ["train.epochs=1"])
    planned = [
        PlannedRun(replace(experiment, hyperparameters=replace(member, seed=i)), RunFolder(f"x/{i}"))
        for i, member in enumerate([asks["l2"], plain, asks["dropout"], plain])
    ]
    (stack,) = stacks(planned, rows=512)
    assert [StepWork.of([r.experiment.hyperparameters]) for r in stack] == sorted(
        StepWork.of([r.experiment.hyperparameters]) for r in planned
    )
