"""Training: Keras' Adam over a stack of models, early stopping, and the lab report's two-phase protocol.

`fit` trains M members of one architecture in lockstep. Each member keeps its own seed, learning
rate, penalties, dropout rates, data order, epoch budget and early-stopping state; a member that is
done is frozen (its updates are multiplied by zero) while the others go on. Data stays on the device
as tensors indexed by a per-epoch permutation: no DataLoader, and no host sync inside an epoch unless
a progress bar asks for live numbers.

`train_protocol` is the report's protocol: phase 1 trains on the 50k split and evaluates the
validation split every epoch; phase 2 trains fresh models on all 60k for as many epochs as phase 1
ran, and evaluates the test split.
"""

import math
import time
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain

import numpy as np
import torch
from tqdm import tqdm

from mnistlab.data import Dataset
from mnistlab.engine import Engine, compile_step, flush_denormals
from mnistlab.model import (
    Architecture,
    Regularization,
    batch_grads,
    evaluate,
    flat,
    init_params,
    layers,
    mean_grads,
    penalty,
)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-7  # Keras' default; PyTorch's is 1e-8
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
FULL_BATCH_ROWS = 8192  # rows x members per chunk of a full batch: activations the allocator reuses


@dataclass(frozen=True)
class EarlyStopping:
    """Keras' EarlyStopping, except that best weights are restored however the run ends."""

    monitor: str = "val_loss"
    patience: int = 0
    min_delta: float = 0.0
    restore_best_weights: bool = True


@dataclass(frozen=True)
class Member:
    """One model of a stack: the numbers in which members of one architecture may differ."""

    seed: int
    learning_rate: float
    epochs: int
    input_dropout: float = 0.0
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    early_stopping: EarlyStopping | None = None


@dataclass
class Epoch:
    epoch: int  # 1-based
    loss: float  # running mean over the epoch's batches, dropout on: what Keras prints
    accuracy: float
    eval_loss: float  # clean: dropout off, penalty included
    eval_accuracy: float
    seconds: float


@dataclass
class Fit:
    params: torch.Tensor  # (P,) the final weights: the best epoch's when early stopping restored them
    history: list[Epoch]
    best_epoch: int | None  # by the early-stopping monitor
    stopped_early: bool
    restored_best: bool = False  # params are the best epoch's, not the last one's

    @property
    def epochs(self) -> int:
        return len(self.history)


def seed_for(seed: int, stream: str) -> int:
    """An independent seed for one random stream ('init', 'shuffle-1', 'dropout-2', ...) of a run's seed."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # 63 bits: torch seeds and int64 keys take it


@dataclass
class StackState:
    """Everything a training step reads or changes, on the device; a step changes it in place.

    Weights and Adam's moments are kept per layer, each a tensor of its own, rather than as views into
    one flat tensor: the compiler then fuses each layer's update into the kernel that finishes its
    gradient, where one flat update would first copy every gradient into a concatenated buffer.
    """

    weights: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (kernel (M, in, out), bias (M, 1, out))
    adam_m: list[tuple[torch.Tensor, torch.Tensor]]  # Adam's first moment, shaped as the weights
    adam_v: list[tuple[torch.Tensor, torch.Tensor]]  # Adam's second moment
    beta_powers: torch.Tensor  # (2,) beta1**t and beta2**t after t steps
    step: torch.Tensor  # () int64 steps taken, which also numbers the dropout masks
    keys: torch.Tensor  # (M,) int64 key of each member's dropout stream
    learning_rate: torch.Tensor  # (M,)
    active: torch.Tensor  # (M,) 1 while a member trains, 0 once it is done: its updates vanish
    reg: Regularization

    @classmethod
    def start(cls, arch: Architecture, params: torch.Tensor, keys, learning_rate, reg: Regularization):
        """A fresh state from (M, P) initial parameters: Adam's moments zero, no step taken."""
        weights = [(kernel.clone(), bias.clone()) for kernel, bias in layers(params, arch)]
        zeros = [[(torch.zeros_like(kernel), torch.zeros_like(bias)) for kernel, bias in weights] for _ in "mv"]
        return cls(
            weights,
            *zeros,
            beta_powers=torch.ones(2, device=params.device),
            step=torch.zeros((), dtype=torch.int64, device=params.device),
            keys=keys,
            learning_rate=learning_rate,
            active=torch.ones(len(params), device=params.device),
            reg=reg,
        )

    @property
    def params(self) -> torch.Tensor:
        """(M, P) a flat copy of the weights."""
        return flat(self.weights)


def train_step(state: StackState, x, y, batch, totals, *, arch, dropout_members, penalties, bf16_layers):
    """One mini-batch for every member, batch (M, B) being row indices into x and y: forward,
    backward, Adam. Compiled, it is one graph."""
    nll, correct, grads = batch_grads(
        state.weights, arch, state.reg, x[batch], y[batch], state.keys, state.step, dropout_members, bf16_layers
    )
    apply_gradients(state, totals, nll, correct, grads, batch.shape[1], penalties)


def chunk_grads(state: StackState, x, y, first_row, *, arch, dropout_members, bf16_layers):
    """The summed data gradient of rows first_row.. of a full batch, which every member sees whole."""
    members = len(state.keys)
    xs, ys = x.expand(members, *x.shape), y.expand(members, *y.shape)
    return batch_grads(
        state.weights, arch, state.reg, xs, ys, state.keys, state.step, dropout_members, bf16_layers, first_row
    )


def apply_gradients(state: StackState, totals, nll, correct, grads, rows, penalties) -> None:
    """The end of every step: the mean over the batch's rows, the penalty, Keras' Adam, the running totals."""
    loss = nll / rows
    if any(penalties):
        loss = loss + penalty(state.weights, state.reg)
    beta1, beta2 = ADAM_BETAS
    state.beta_powers.mul_(torch.tensor(ADAM_BETAS, device=loss.device))
    # Keras' Adam: bias correction folded into the step size, epsilon added to the uncorrected sqrt(v).
    corrected = torch.sqrt(1 - state.beta_powers[1]) / (1 - state.beta_powers[0])
    step_size = (state.learning_rate * state.active * corrected).view(-1, 1, 1)
    layer_grads = mean_grads(state.weights, state.reg, grads, rows, penalties)
    per_tensor = (chain.from_iterable(pairs) for pairs in (state.weights, state.adam_m, state.adam_v, layer_grads))
    for weight, m, v, grad in zip(*per_tensor, strict=True):
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        weight.sub_(step_size * m / (v.sqrt() + ADAM_EPSILON))
    state.step.add_(1)
    totals[0].add_(loss * rows)
    totals[1].add_(correct)


class _Stopper:
    """Early-stopping state of one member, with Keras' rules for improvement and patience."""

    def __init__(self, rule: EarlyStopping):
        self.rule = rule
        self.sign = -1.0 if rule.monitor.endswith("accuracy") else 1.0  # we minimise sign * value
        self.best = math.inf
        self.best_epoch = None
        self.wait = 0

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """(improved, stop) after `epoch` with the monitored `value`."""
        if self.sign * value < self.best - self.rule.min_delta:
            self.best, self.best_epoch, self.wait = self.sign * value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.wait >= self.rule.patience and epoch > 1


def fit(
    arch: Architecture,
    members: list[Member],
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    batch_size: int | None,
    phase: int,
    engine: Engine,
) -> list[Fit]:
    """Train a stack of members on `train`, evaluating `evaluation` every epoch. batch_size None: full batch."""
    if engine.device.type == "cpu":
        flush_denormals()
    stack = _Stack(arch, members, train, batch_size, phase, engine)
    tracker = _Tracker(members, stack.state.params)
    steps = -(-len(train[1]) // stack.batch_size)
    for epoch in range(1, tracker.last_epoch + 1):
        start = time.perf_counter()
        with _progress(engine, phase, epoch, tracker.last_epoch, steps) as bar:
            train_loss, train_acc = stack.train_epoch(bar)
            params = stack.state.params
            eval_loss, eval_acc = evaluate(params, arch, stack.state.reg, *evaluation)
            numbers = torch.stack([train_loss, train_acc, eval_loss, eval_acc]).tolist()  # the epoch's one sync
            bar.finish(numbers, tracker.running)
        tracker.end_epoch(epoch, numbers, time.perf_counter() - start, params, stack.state.active)
        if not tracker.running:
            break
    return tracker.fits(stack.state.params)


class _Stack:
    """A stack in training: its state, its data, and the compiled step that updates it."""

    def __init__(self, arch, members, train, batch_size, phase, engine):
        device = engine.device
        self.x, self.y = train
        self.batch_size = min(batch_size or len(self.y), len(self.y))
        params = init_params(arch, [seed_for(m.seed, "init") for m in members], device)
        reg = Regularization.of(arch, [vars(m) for m in members], device)
        keys = torch.tensor([seed_for(m.seed, f"dropout-{phase}") for m in members], device=device)
        learning_rate = torch.tensor([m.learning_rate for m in members], device=device)
        self.state = StackState.start(arch, params, keys, learning_rate, reg)
        self.shufflers = [torch.Generator().manual_seed(seed_for(m.seed, f"shuffle-{phase}")) for m in members]
        self.penalties = (bool(reg.l1.any()), bool(reg.l2.any()))
        fixed = {
            "arch": arch,
            "dropout_members": reg.dropout_members(),
            "bf16_layers": engine.bf16_layers(arch.shapes, self.batch_size),
        }
        self.full_batch = self.batch_size == len(self.y)
        if self.full_batch:
            self.eager = partial(chunk_grads, **fixed)
        else:
            self.eager = partial(train_step, penalties=self.penalties, **fixed)
        self.compiled = compile_step(self.eager) if engine.compile else self.eager

    def train_epoch(self, bar) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch for every member; (M,) running training loss and accuracy, on the device."""
        members, device = len(self.state.keys), self.state.keys.device
        totals = (torch.zeros(members, device=device), torch.zeros(members, device=device))
        if self.full_batch:
            self._full_batch_step(totals)
            bar.tick(0, totals, len(self.y))
        else:
            batches = _epoch_batches(self.shufflers, len(self.y), self.batch_size, device)
            for index, batch in enumerate(batches):
                # Keras trains on the short last batch too: eagerly, so it costs no second compiled shape.
                step_fn = self.eager if batch.shape[1] < self.batch_size else self.compiled
                step_fn(self.state, self.x, self.y, batch, totals)
                bar.tick(index, totals, self.batch_size)
        return totals[0] / len(self.y), totals[1] / len(self.y)

    def _full_batch_step(self, totals) -> None:
        """One step over all rows, in order (their order cannot matter), as gradients summed over row
        chunks: activations of a whole 50k batch would be allocated, page-faulted in and freed every step."""
        # Chunks of (nearly) equal size: a short last chunk would make the compiler specialise again.
        chunks = -(-len(self.y) // max(256, FULL_BATCH_ROWS // len(self.state.keys)))
        chunk_rows = -(-len(self.y) // chunks)
        nll = correct = 0
        grads = None
        for start in range(0, len(self.y), chunk_rows):
            rows = self.x[start : start + chunk_rows], self.y[start : start + chunk_rows]
            chunk = self.compiled(self.state, *rows, torch.tensor(start, device=self.x.device))
            nll, correct = nll + chunk[0], correct + chunk[1]
            if grads is None:
                grads = chunk[2]
            else:
                grads = [(k + chunk_k, b + chunk_b) for (k, b), (chunk_k, chunk_b) in zip(grads, chunk[2], strict=True)]
        apply_gradients(self.state, totals, nll, correct, grads, len(self.y), self.penalties)


def _epoch_batches(shufflers: list[torch.Generator], size: int, batch_size: int, device: torch.device):
    """An epoch's (M, B) row indices, each member in its own shuffled order."""
    # (size, stack), so that a batch's strides do not depend on the data size: no recompile in phase 2.
    order = torch.stack([torch.randperm(size, generator=g) for g in shufflers], dim=1).to(device)
    full_steps = size // batch_size
    batches = order[: full_steps * batch_size].view(full_steps, batch_size, -1).permute(0, 2, 1)
    yield from batches
    if size % batch_size:
        yield order[full_steps * batch_size :].T


class _Tracker:
    """Per-member bookkeeping between epochs: histories, epoch budgets, early stopping, best weights."""

    def __init__(self, members: list[Member], params: torch.Tensor):
        self.members = members
        self.stoppers = [_Stopper(m.early_stopping) if m.early_stopping else None for m in members]
        self.restoring = [s is not None and s.rule.restore_best_weights for s in self.stoppers]
        self.best_params = params.clone() if any(self.restoring) else None
        self.histories: list[list[Epoch]] = [[] for _ in members]
        self.stopped = [False] * len(members)
        self.running = list(range(len(members)))
        self.last_epoch = max(m.epochs for m in members)

    def end_epoch(self, epoch: int, numbers: list[list[float]], seconds: float, params, active) -> None:
        """Record the epoch for the running members; freeze those that are done."""
        for member in list(self.running):
            loss, acc, val_loss, val_acc = (column[member] for column in numbers)
            self.histories[member].append(Epoch(epoch, loss, acc, val_loss, val_acc, seconds))
            done = epoch >= self.members[member].epochs
            stopper = self.stoppers[member]
            if stopper:
                monitored = {"loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc}
                improved, stop = stopper.update(epoch, monitored[stopper.rule.monitor])
                if improved and self.restoring[member]:
                    self.best_params[member] = params[member]
                self.stopped[member] = stop and not done
                done = done or stop
            if done:
                self.running.remove(member)
                active[member] = 0.0

    def fits(self, params: torch.Tensor) -> list[Fit]:
        fits = []
        for member, stopper in enumerate(self.stoppers):
            final = self.best_params[member] if self.restoring[member] else params[member]
            fits.append(
                Fit(
                    final.clone(),
                    self.histories[member],
                    stopper and stopper.best_epoch,
                    self.stopped[member],
                    self.restoring[member],
                )
            )
        return fits


class _progress:
    """A Keras-like bar per epoch, with live loss and accuracy; a no-op (and no host sync) when off."""

    def __init__(self, engine: Engine, phase: int, epoch: int, epochs: int, steps: int):
        self.bar = None
        if engine.progress:
            label = f"{engine.label} " if engine.label else ""
            self.bar = tqdm(total=steps, desc=f"{label}phase {phase} epoch {epoch}/{epochs}", unit="step", leave=True)
            self.every = max(1, steps // 50)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def tick(self, index: int, totals, batch_size: int) -> None:
        if self.bar is not None and (index + 1) % self.every == 0:
            seen = (index + 1) * batch_size
            self.bar.set_postfix_str(_describe(totals[0].mean() / seen, totals[1].mean() / seen), refresh=False)
            self.bar.update(self.every)

    def finish(self, numbers: list[list[float]], running: list[int]) -> None:
        if self.bar is not None:
            loss, acc, val_loss, val_acc = (np.mean([column[m] for m in running]) for column in numbers)
            self.bar.n = self.bar.total
            self.bar.set_postfix_str(f"{_describe(loss, acc)}, eval loss {val_loss:.4f}, eval acc {val_acc:.4f}")


def _describe(loss, accuracy) -> str:
    return f"loss {float(loss):.4f}, acc {float(accuracy):.4f}"


@dataclass
class Result:
    """One member's run of the two-phase protocol."""

    phase1: Fit  # on the train split, evaluated on validation
    phase2: Fit  # on the full 60k, evaluated on test
    metrics: dict  # split -> {"loss", "accuracy"} clean, plus the epochs of each phase
    seconds: float  # wall time of the stack this member trained in


def train_protocol(
    arch: Architecture, members: list[Member], dataset: Dataset, batch_size: int | None, engine: Engine
) -> list[Result]:
    """The report's two phases for a stack of members (see the module's docstring)."""
    start = time.perf_counter()
    splits = {
        name: tuple(t.to(engine.device) for t in dataset.split(name))
        for name in ("train", "validation", "full", "test")
    }
    reg = Regularization.of(arch, [vars(m) for m in members], engine.device)

    phase1 = fit(arch, members, splits["train"], splits["validation"], batch_size, 1, engine)
    stack1 = torch.stack([f.params for f in phase1])
    retrain = [replace(m, epochs=f.epochs, early_stopping=None) for m, f in zip(members, phase1, strict=True)]
    phase2 = fit(arch, retrain, splits["full"], splits["test"], batch_size, 2, engine)
    stack2 = torch.stack([f.params for f in phase2])

    clean = {
        "train": evaluate(stack1, arch, reg, *splits["train"]),
        "validation": evaluate(stack1, arch, reg, *splits["validation"]),
        "full": evaluate(stack2, arch, reg, *splits["full"]),
        "test": evaluate(stack2, arch, reg, *splits["test"]),
    }
    seconds = time.perf_counter() - start
    results = []
    for member, (first, second) in enumerate(zip(phase1, phase2, strict=True)):
        metrics = {
            split: {"loss": loss[member].item(), "accuracy": acc[member].item()} for split, (loss, acc) in clean.items()
        }
        metrics["epochs"] = {"phase1": first.epochs, "phase2": second.epochs}
        metrics["early_stopping"] = {
            "stopped_early": first.stopped_early,
            "best_epoch": first.best_epoch,
            "restored_best_weights": first.restored_best,
        }
        results.append(Result(first, second, metrics, seconds))
    return results
