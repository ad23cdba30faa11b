"""The lab's presets trained with Keras 3, as the lab would have written it, beside mnistlab's own engine.

A `Sequential` of Dense layers (Glorot-uniform kernels, zero biases: Keras' defaults, as the presets say),
`Dropout` before each Dense layer where the preset drops, `kernel_regularizer` L1/L2, softmax and sparse
categorical cross-entropy, `Adam` with the preset's learning rate and Keras' own epsilon, the preset's
batch size with Keras' per-epoch shuffle, and Keras' `EarlyStopping` with the preset's monitor, patience,
min_delta and restore_best_weights. Phase 1 fits the first 50,000 training images and validates on the
last 10,000, as `validation_split` does; phase 2 fits a fresh model on all 60,000 for as many epochs,
and the test set is evaluated after every epoch of it. Numbers are `model.evaluate`'s.

Keras runs on its PyTorch backend (`KERAS_BACKEND=torch`) unless the environment names another: no
TensorFlow is needed. Each run trains alone, in this process: Keras has no lockstep stacks. What only
mnistlab's engine does (distortions, a moving average of the weights, a crop, label smoothing, learning
rate schedules, bf16 matmuls) is refused before anything trains (`lacks`).

One difference of rule: Keras restores the best weights only when early stopping stopped the run;
mnistlab restores them however the run ends. None of the lab's presets restores.
"""

import os
import time

import numpy as np
import torch

from mnistlab.data import SPLITS, Splits
from mnistlab.extras import require
from mnistlab.records import Epoch, Fit, RunResult, Score
from mnistlab.spec import Architecture, Hyperparameters
from mnistlab.train.fit import seed_for
from mnistlab.train.progress import ProgressBars

EVAL_BATCH = 10_000


def lacks(member: Hyperparameters, crop: int, precision: str) -> str | None:
    """What of a run only mnistlab's engine does, in words, or None where Keras can train it as it is."""
    lacking = [
        ("distortions of training images ([augmentation])", member.augmentation is not None),
        ("a moving average of the weights (train.ema)", member.ema > 0),
        ("a crop of the image border (model.crop)", crop > 0),
        ("label smoothing with integer labels (train.label_smoothing)", member.label_smoothing > 0),
        ("a learning rate schedule (train.schedule, train.warmup_epochs)", member.schedule != "constant"),
        ("a learning rate warm-up (train.warmup_epochs)", member.warmup_epochs > 0),
        ("bf16 matmuls (--precision bf16)", precision == "bf16"),
    ]
    found = [what for what, needed in lacking if needed]
    return ", ".join(found) or None


def backend() -> str:
    """The Keras backend the engine runs on: the environment's KERAS_BACKEND, else torch."""
    return os.environ.setdefault("KERAS_BACKEND", "torch")


def version() -> str:
    require("--engine keras", "keras")
    backend()
    import keras

    return f"keras {keras.__version__} ({keras.backend.backend()} backend)"


def train_protocol(
    arch: Architecture,
    members: list[Hyperparameters],
    splits: Splits,
    batch_size: int | None,
    progress: ProgressBars | None = None,
) -> list[RunResult]:
    """Both phases for each member, one after the other (see the module's docstring)."""
    report = (progress or ProgressBars.OFF).report
    planned = [2 * m.epochs for m in members]  # phase 2 repeats phase 1's epochs; early stopping shortens it
    done = [0] * len(members)

    def tick(member: int, planned_now: int | None = None) -> None:
        done[member] += 1
        if planned_now is not None:
            planned[member] = planned_now
        if report is not None:
            report(sum(done), sum(planned))

    started = time.perf_counter()
    results = [_run(arch, member, splits, batch_size, lambda *a, i=i: tick(i, *a)) for i, member in enumerate(members)]
    return [RunResult(r.phase1, r.phase2, r.scores, time.perf_counter() - started) for r in results]


def _run(arch: Architecture, member: Hyperparameters, splits: Splits, batch_size, tick) -> RunResult:
    keras = _keras()
    data = {split: tuple(t.cpu().numpy() for t in getattr(splits, split)) for split in SPLITS}
    keras.utils.set_random_seed(seed_for(member.seed, "keras-1") % (1 << 32))
    first = _model(keras, arch, member)
    phase1, stopper = _fit(keras, first, member, data["train"], data["validation"], batch_size, member.epochs, tick)
    tick_phase2 = lambda: tick(2 * len(phase1))  # noqa: E731 (now the plan is known: phase 1's epochs again)
    keras.utils.set_random_seed(seed_for(member.seed, "keras-2") % (1 << 32))
    second = _model(keras, arch, member)
    phase2, _ = _fit(keras, second, None, data["full"], data["test"], batch_size, len(phase1), tick_phase2)
    scores = {}
    for split in SPLITS:
        model = first if split in ("train", "validation") else second
        loss, accuracy = model.evaluate(*data[split], batch_size=EVAL_BATCH, verbose=0)
        scores[split] = Score(float(loss), float(accuracy))
    restored = bool(stopper is not None and stopper.restore_best_weights and stopper.stopped_epoch > 0)
    best = None if stopper is None or stopper.best_epoch is None else stopper.best_epoch + 1
    return RunResult(
        Fit(_flat(first), phase1, best, bool(stopper and stopper.stopped_epoch > 0), restored),
        Fit(_flat(second), phase2, None, False),
        scores,
        0.0,
    )


def _keras():
    require("--engine keras", "keras")
    backend()
    import keras

    return keras


def _model(keras, arch: Architecture, member: Hyperparameters):
    """The Sequential model of the preset, compiled as the lab compiled it."""
    layers = [keras.Input((arch.inputs,))]
    penalty = keras.regularizers.L1L2(l1=member.l1, l2=member.l2) if member.l1 or member.l2 else None
    for index, width in enumerate([*arch.hidden, arch.classes]):
        rate = member.input_dropout if index == 0 else member.dropout
        if rate:
            layers.append(keras.layers.Dropout(rate))
        activation = arch.activation if index < len(arch.hidden) else "softmax"
        layers.append(keras.layers.Dense(width, activation=activation, kernel_regularizer=penalty))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=member.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _fit(keras, model, member: Hyperparameters | None, train, evaluation, batch_size, epochs: int, tick):
    """model.fit with the evaluated split as validation_data: the epochs as mnistlab records them, and the
    early-stopping callback (None without one). `tick()` after every epoch."""
    timing = _Timing(keras, tick)
    callbacks = [timing]
    stopper = None
    if member is not None and (rule := member.early_stopping) is not None:
        stopper = keras.callbacks.EarlyStopping(
            monitor=rule.monitor,
            patience=rule.patience,
            min_delta=rule.min_delta,
            restore_best_weights=rule.restore_best_weights,
        )
        callbacks.append(stopper)
    history = model.fit(
        *train,
        batch_size=batch_size or len(train[1]),
        epochs=epochs,
        validation_data=evaluation,
        validation_batch_size=EVAL_BATCH,
        callbacks=callbacks,
        verbose=0,
    ).history
    numbers = zip(history["loss"], history["accuracy"], history["val_loss"], history["val_accuracy"], strict=True)
    return [Epoch(i + 1, *map(float, row), timing.seconds[i]) for i, row in enumerate(numbers)], stopper


class _Timing:
    """A Keras callback that keeps each epoch's wall time and ticks the progress (made on first use:
    Keras loads lazily)."""

    def __new__(cls, keras, tick):
        class Timing(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)
                tick()

        return Timing()


def _flat(model) -> torch.Tensor:
    """The model's Dense weights as mnistlab's flat parameters: each layer's kernel (in, out), then its bias."""
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    parts = [np.asarray(w, dtype=np.float32).ravel() for layer in dense for w in layer.get_weights()]
    return torch.from_numpy(np.concatenate(parts))
