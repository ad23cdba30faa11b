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

import numpy as np
import torch
from tqdm import tqdm

from mnistlab.data import Dataset
from mnistlab.engine import Engine, compile_step, flush_denormals, room_to_recompile
from mnistlab.model import Architecture, Regularization, evaluate, init_params, loss_and_grads

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-7  # Keras' default; PyTorch's is 1e-8
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")


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

    @property
    def epochs(self) -> int:
        return len(self.history)


def seed_for(seed: int, stream: str) -> int:
    """An independent seed for one random stream ('init', 'shuffle-1', 'dropout-2', ...) of a run's seed."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # 63 bits: torch seeds and int64 keys take it


def train_step(
    params,
    adam_m,
    adam_v,
    beta_powers,
    x,
    y,
    batch,
    step,
    keys,
    learning_rate,
    active,
    reg,
    totals,
    *,
    arch,
    dropout_layers,
    penalties,
    matmul_dtype,
):
    """One batch for every member: forward, backward, Adam. Everything it changes, it changes in place.

    batch: (M, B) row indices into x and y, or None for all rows in order (full-batch training,
    where the order of rows cannot matter and gathering them would only copy the data set).
    """
    if batch is None:
        xb, yb = x.expand(len(params), *x.shape), y.expand(len(params), *y.shape)
    else:
        xb, yb = x[batch], y[batch]
    loss, correct, grad = loss_and_grads(params, arch, reg, xb, yb, keys, step, dropout_layers, penalties, matmul_dtype)
    beta1, beta2 = ADAM_BETAS
    # Keras' Adam: bias correction folded into the step size, epsilon added to the uncorrected sqrt(v).
    beta_powers.mul_(torch.tensor(ADAM_BETAS, device=params.device))
    adam_m.lerp_(grad, 1 - beta1)
    adam_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = learning_rate * active * torch.sqrt(1 - beta_powers[1]) / (1 - beta_powers[0])
    params.sub_(step_size.unsqueeze(1) * adam_m / (adam_v.sqrt() + ADAM_EPSILON))
    step.add_(1)
    totals[0].add_(loss * yb.shape[1])
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
    device = engine.device
    if device.type == "cpu":
        flush_denormals()
    x, y = train
    size = len(y)
    batch_size = min(batch_size or size, size)
    stack = len(members)

    params = init_params(arch, [seed_for(m.seed, "init") for m in members], device)
    adam_m, adam_v = torch.zeros_like(params), torch.zeros_like(params)
    beta_powers = torch.ones(2, device=device)
    reg = Regularization.of(arch, [vars(m) for m in members], device)
    learning_rate = torch.tensor([m.learning_rate for m in members], device=device)
    active = torch.ones(stack, device=device)
    keys = torch.tensor([seed_for(m.seed, f"dropout-{phase}") for m in members], device=device)
    step = torch.zeros((), dtype=torch.int64, device=device)
    shufflers = [torch.Generator().manual_seed(seed_for(m.seed, f"shuffle-{phase}")) for m in members]
    state = (params, adam_m, adam_v, beta_powers, x, y)

    step_fn = partial(
        train_step,
        arch=arch,
        dropout_layers=tuple(i for i in range(len(arch.shapes)) if reg.dropout[:, i].any()),
        penalties=(bool(reg.l1.any()), bool(reg.l2.any())),
        matmul_dtype=engine.matmul_dtype,
    )
    compiled = compile_step(step_fn, device) if engine.compile else step_fn
    # The data size differs between the phases (50k vs 60k rows): kept symbolic in the compiled graph,
    # phase 2 reuses phase 1's compilation instead of paying for another.
    torch._dynamo.mark_dynamic(x, 0)
    torch._dynamo.mark_dynamic(y, 0)

    tracker = _Tracker(members, params)
    with room_to_recompile():
        for epoch in range(1, max(m.epochs for m in members) + 1):
            start = time.perf_counter()
            totals = (torch.zeros(stack, device=device), torch.zeros(stack, device=device))
            hyper = (keys, learning_rate, active, reg, totals)
            batches = _epoch_batches(shufflers, size, batch_size, device)
            with _progress(engine, phase, epoch, tracker.last_epoch, -(-size // batch_size)) as bar:
                for index, batch in enumerate(batches):
                    # Keras trains on the short last batch too: eagerly, so it costs no second compiled shape.
                    short = batch is not None and batch.shape[1] < batch_size
                    (step_fn if short else compiled)(*state, batch, step, *hyper)
                    bar.tick(index, totals, batch_size)
                train_loss, train_acc = (t / size for t in totals)
                eval_loss, eval_acc = evaluate(params, arch, reg, *evaluation)
                numbers = torch.stack([train_loss, train_acc, eval_loss, eval_acc]).tolist()  # the epoch's one sync
                bar.finish(numbers, tracker.running)
            tracker.end_epoch(epoch, numbers, time.perf_counter() - start, params, active)
            if not tracker.running:
                break
    return tracker.fits(params)


def _epoch_batches(shufflers: list[torch.Generator], size: int, batch_size: int, device: torch.device):
    """An epoch's (M, B) row indices, each member in its own shuffled order; a single None for full batch."""
    if batch_size >= size:
        yield None
        return
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
                Fit(final.clone(), self.histories[member], stopper and stopper.best_epoch, self.stopped[member])
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
        metrics["early_stopping"] = {"stopped_early": first.stopped_early, "best_epoch": first.best_epoch}
        results.append(Result(first, second, metrics, seconds))
    return results
