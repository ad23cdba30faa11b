"""Training a stack of models in lockstep: Keras' Adam, early stopping, one compiled step.

`fit` trains M members of one architecture in lockstep. Each member keeps its own hyperparameters
(learning rate and its schedule, penalties, dropout rates, label smoothing, epoch budget, early
stopping, a moving average of its weights, image distortions) and its own random streams (initial
weights, data order, dropout masks, distortions); a member that is done is frozen (its updates are
multiplied by zero) while the others go on. A member whose training is the first epochs of another's
(`spec.leaders`: the early-stopping run of a model also trained whole) is no row of the stack: it reads
its numbers and weights off that member's row until it ends. A search's pruner (`judge`) may stop
members between epochs; the stack then sheds their rows and trains on without them, where that saves
more than a new compiled step costs. What no member asks for is left out of
the compiled step, so the lab's presets train exactly as they did before these existed. Data stays on
the device as tensors indexed by a per-epoch permutation: no DataLoader, and no host sync inside an
epoch unless a progress bar asks for live numbers.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch

from mnistlab.nn.mlp import (
    Regularization,
    batch_grads,
    evaluate,
    flat,
    init_params,
    layers,
    mean_grads,
    penalty,
)
from mnistlab.records import EpochNumbers, Fit
from mnistlab.spec import Architecture, Hyperparameters, StepWork, leaders
from mnistlab.train.augment import distort, strengths
from mnistlab.train.engine import Engine, flush_denormals
from mnistlab.train.progress import EpochCount, ProgressBars
from mnistlab.train.schedule import Schedule
from mnistlab.train.steps import compile_step, readiness
from mnistlab.train.tracker import Tracker

ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-7  # Keras' default; PyTorch's is 1e-8
FULL_BATCH_ROWS = 8192  # rows x members per chunk of a full batch: activations the allocator reuses
LOAD_SHARE = 0.15  # loading a stored step, as a share of compiling it (about 4 s of 18-30: stored_steps)

Judge = Callable[[int, dict[int, float]], dict[int, str]]
"""After an epoch, the running members' validation losses (member -> loss) -> the members to stop now,
each with the reason: a search's pruner (`studies.pruning`)."""


def seed_for(seed: int, stream: str) -> int:
    """An independent seed for one named random stream ('init', 'shuffle-1', 'dropout-2', ...) of a run's seed."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # 63 bits: torch seeds and int64 keys take it


@dataclass(frozen=True)
class Streams:
    """The seeds of one member's random streams in one training: initial weights, data order, dropout
    masks and image distortions."""

    init: int
    shuffle: int
    dropout: int
    augment: int = 0


class Totals(NamedTuple):
    """(M,) running sums over an epoch's batches, on the device."""

    loss_sum: torch.Tensor  # of each batch's mean loss times its rows
    correct: torch.Tensor


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
    learning_rate: torch.Tensor  # (M,) of this step: a schedule rewrites it before each step
    active: torch.Tensor  # (M,) 1 while a member trains, 0 once it is done: its updates vanish
    reg: Regularization
    # Only where some member asks for them (else None, and the compiled step leaves them out):
    average: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # moving average of the weights
    average_decay: torch.Tensor | None = None  # (M,) its decay; 0: the member keeps its plain weights
    distortion: torch.Tensor | None = None  # (M, 5) augmentation strengths (`augment.strengths`)
    distortion_keys: torch.Tensor | None = None  # (M,) int64 key of each member's distortion stream

    @classmethod
    def start(cls, arch: Architecture, params: torch.Tensor, keys, learning_rate, reg: Regularization, **extra):
        """A fresh state from (M, P) initial parameters: Adam's moments zero, no step taken."""
        weights = [(kernel.clone(), bias.clone()) for kernel, bias in layers(params, arch)]
        zeros = [[(torch.zeros_like(kernel), torch.zeros_like(bias)) for kernel, bias in weights] for _ in "mv"]
        if extra.get("average_decay") is not None:
            extra["average"] = [(kernel.clone(), bias.clone()) for kernel, bias in weights]
        return cls(
            weights,
            *zeros,
            beta_powers=torch.ones(2, device=params.device),
            step=torch.zeros((), dtype=torch.int64, device=params.device),
            keys=keys,
            learning_rate=learning_rate,
            active=torch.ones(len(params), device=params.device),
            reg=reg,
            **extra,
        )

    def rows(self, index: torch.Tensor) -> "StackState":
        """The state of the members at `index` alone, as if they had always trained without the others: a
        member's numbers never depend on its neighbours (its random streams are its own), only the step
        count and Adam's bias correction are shared, and those every member has in common."""

        def take(value):
            if value is None or value is self.beta_powers or value is self.step:
                return value
            if isinstance(value, list):
                return [(kernel[index], bias[index]) for kernel, bias in value]
            if isinstance(value, Regularization):
                return Regularization(*(getattr(value, f.name)[index] for f in fields(value)))
            return value[index]

        return StackState(**{f.name: take(getattr(self, f.name)) for f in fields(self)})

    @property
    def params(self) -> torch.Tensor:
        """(M, P) a flat copy of each member's model: its moving average where it keeps one, else its weights."""
        if self.average is None:
            return flat(self.weights)
        averaged = (self.average_decay > 0).view(-1, 1)
        return torch.where(averaged, flat(self.average), flat(self.weights))


def train_step(state: StackState, x, y, batch, totals: Totals, *, arch, work: StepWork, dropout_members, bf16_layers):
    """One mini-batch for every member, batch (M, B) being row indices into x and y: distortion where
    asked for, forward, backward, Adam, moving average. Compiled, it is one graph."""
    images = x[batch]
    if work.augmentation:
        images = distort(
            images, state.distortion, state.distortion_keys, state.step, arch.side, arch.crop, work.elastic
        )
    data_term = batch_grads(
        state.weights,
        arch,
        state.reg,
        images,
        y[batch],
        state.keys,
        state.step,
        dropout_members,
        bf16_layers,
        smoothing=work.label_smoothing,
    )
    apply_gradients(state, totals, *data_term, batch.shape[1], work)
    if work.ema:
        update_average(state)


def update_average(state: StackState) -> None:
    """The moving average of each member's weights, after its step; frozen members' stays put.

    The decay warms up as (1 + t) / (10 + t) (as TensorFlow's ExponentialMovingAverage with num_updates
    does), so the first steps do not tie the average to the random initial weights."""
    t = state.step.to(torch.float32)
    decay = torch.minimum(state.average_decay, (1 + t) / (10 + t))
    keep = (1 - (1 - decay) * state.active).view(-1, 1, 1)
    for average, weight in zip(chain.from_iterable(state.average), chain.from_iterable(state.weights), strict=True):
        average.mul_(keep).add_(weight * (1 - keep))


def chunk_grads(state: StackState, x, y, first_row, *, arch, work: StepWork, dropout_members, bf16_layers):
    """The summed data gradient of rows first_row.. of a full batch, which every member sees whole."""
    members = len(state.keys)
    xs, ys = x.expand(members, *x.shape), y.expand(members, *y.shape)
    return batch_grads(
        state.weights,
        arch,
        state.reg,
        xs,
        ys,
        state.keys,
        state.step,
        dropout_members,
        bf16_layers,
        first_row,
        work.label_smoothing,
    )


def apply_gradients(state: StackState, totals: Totals, nll, correct, grads, rows, work: StepWork) -> None:
    """The end of every step: the mean over the batch's rows, the penalty, Keras' Adam, the running totals."""
    loss = nll / rows
    if work.penalty:
        loss = loss + penalty(state.weights, state.reg)
    beta1, beta2 = ADAM_BETAS
    state.beta_powers.mul_(torch.tensor(ADAM_BETAS, device=loss.device))
    # Keras' Adam: bias correction folded into the step size, epsilon added to the uncorrected sqrt(v).
    corrected = torch.sqrt(1 - state.beta_powers[1]) / (1 - state.beta_powers[0])
    step_size = (state.learning_rate * state.active * corrected).view(-1, 1, 1)
    layer_grads = mean_grads(state.weights, state.reg, grads, rows, work)
    per_tensor = (chain.from_iterable(pairs) for pairs in (state.weights, state.adam_m, state.adam_v, layer_grads))
    for weight, m, v, grad in zip(*per_tensor, strict=True):
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        weight.sub_(step_size * m / (v.sqrt() + ADAM_EPSILON))
    state.step.add_(1)
    totals.loss_sum.add_(loss * rows)
    totals.correct.add_(correct)


def fit(
    arch: Architecture,
    members: list[Hyperparameters],
    streams: list[Streams],
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    batch_size: int | None,
    engine: Engine,
    progress: ProgressBars | None = None,
    count: EpochCount | None = None,
    judge: Judge | None = None,
) -> list[Fit]:
    """Train a stack of members, each with its own random streams, on `train`, evaluating `evaluation`
    every epoch, telling `count` the epochs done and left after each, and `judge` (if any) the validation
    losses, which may stop members. batch_size None: full batch."""
    if engine.device.type == "cpu":
        flush_denormals()
    leader = leaders(members, streams)
    trained = sorted(set(leader))
    stack = Lockstep(arch, [members[i] for i in trained], [streams[i] for i in trained], train, batch_size, engine)
    tracker = Tracker(members, [trained.index(i) for i in leader], stack.state.params)
    steps = math.ceil(len(train[1]) / stack.batch_size)
    for epoch in range(1, tracker.last_epoch + 1):
        start = time.perf_counter()
        with (progress or ProgressBars.OFF).epoch(epoch, tracker.last_epoch, steps) as bar:
            train_loss, train_acc = stack.train_epoch(bar)
            params = stack.state.params
            eval_loss, eval_acc = evaluate(params, arch, stack.state.reg, *evaluation)
            # The epoch's one host sync.
            numbers = EpochNumbers(*torch.stack([train_loss, train_acc, eval_loss, eval_acc]).tolist())
            bar.finish(numbers, tracker.running_rows)
        seconds = time.perf_counter() - start
        tracker.end_epoch(epoch, numbers, seconds, params, stack.state.active)
        tracker.computed(steps)
        if judge is not None and tracker.running:
            losses = {member: numbers.eval_loss[tracker.rows[member]] for member in tracker.running}
            for member, reason in judge(epoch, losses).items():
                tracker.prune(member, reason, params)
            tracker.freeze(stack.state.active)
            if tracker.running and (kept := stack.shed(tracker.running_rows, seconds, max(tracker.counts()[1]))):
                tracker.renumber(kept)
        if count is not None:
            count.tell(*tracker.counts(), frozenset(m for m, why in enumerate(tracker.pruned) if why))
        if not tracker.running:
            break
    return tracker.fits()


class Lockstep:
    """A stack in training: its state, its data, and the compiled step that updates it."""

    def __init__(self, arch, members: list[Hyperparameters], streams: list[Streams], train, batch_size, engine):
        device = engine.device
        self.arch, self.engine, self.members = arch, engine, members
        self.x, self.y = train
        self.batch_size = min(batch_size or len(self.y), len(self.y))
        params = init_params(arch, [s.init for s in streams], device)
        reg = Regularization.of(arch, members, device)
        keys = torch.tensor([s.dropout for s in streams], device=device)
        self.learning_rate = torch.tensor([m.learning_rate for m in members], device=device)
        self.work = StepWork.of(members)
        extras = _extras(self.work, members, streams, device)
        self.state = StackState.start(arch, params, keys, self.learning_rate.clone(), reg, **extras)
        self.shufflers = [torch.Generator().manual_seed(s.shuffle) for s in streams]
        self.schedule = Schedule(members, math.ceil(len(self.y) / self.batch_size))
        self.full_batch = self.batch_size == len(self.y)
        self._bind_steps()

    def _bind_steps(self) -> None:
        """The eager step and the compiled one (or the eager one again), for the stack as it is now."""
        self.eager = self._step(self.state)
        self.compiled = compile_step(self.eager) if self.engine.compile else self.eager

    def _step(self, state: StackState):
        bound = {
            "arch": self.arch,
            "work": self.work,  # what the stack began with: a shed member's work costs only a branch
            "dropout_members": state.reg.dropout_members(),
            "bf16_layers": self.engine.bf16_layers(self.arch.shapes, self.batch_size),
        }
        return partial(chunk_grads if self.full_batch else train_step, **bound)

    def shed(self, running: list[int], epoch_seconds: float, epochs_left: int) -> list[int] | None:
        """Re-pack the stack around its running rows where that pays, and return the rows it kept, in their
        new order (None: it kept them all). It keeps a power of two of rows, padded with frozen ones, so a
        search meets few step shapes, each compiled once and stored; it sheds where the work of the others
        over the epochs left outweighs what the new step costs: nothing for an eager stack or a step this
        process has, a load for a stored one, half a compile (it is stored for the next) for a new one."""
        members = len(self.state.keys)
        # At least two rows: a one-row step splits its sums among threads otherwise, and would change the
        # bits of a member that a stack of any other size leaves as they are.
        size = max(2, 1 << (len(running) - 1).bit_length())
        if size >= members:
            return None
        kept = sorted([*running, *[row for row in range(members) if row not in running][: size - len(running)]])
        saved = epoch_seconds * (1 - size / members) * epochs_left
        index = torch.tensor(kept, device=self.state.keys.device)
        state = self.state.rows(index)
        if saved <= self._new_step_seconds(state):
            return None
        self.state = state
        self.learning_rate = self.learning_rate[index]
        self.members = [self.members[i] for i in kept]
        self.shufflers = [self.shufflers[i] for i in kept]
        self.schedule = self.schedule.rows(kept)
        self._bind_steps()
        return kept

    def _new_step_seconds(self, state: StackState) -> float:
        """What a step for `state` (the kept rows) costs before it runs: nothing eager or kept, a load
        where it is stored, half a compile where it is new."""
        if not self.engine.compile:
            return 0.0
        if self.full_batch:
            return self.engine.compile_seconds / 2
        rows = len(state.keys)
        batch = torch.zeros((rows, self.batch_size), dtype=torch.int64, device=self.x.device)
        totals = Totals(*(torch.zeros(rows, device=self.x.device) for _ in range(2)))
        found = readiness(self._step(state), (state, self.x, self.y, batch, totals))
        return {"kept": 0.0, "stored": LOAD_SHARE * self.engine.compile_seconds}.get(
            found, self.engine.compile_seconds / 2
        )

    def train_epoch(self, bar) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch for every member; (M,) running training loss and accuracy, on the device."""
        members, device = len(self.state.keys), self.state.keys.device
        totals = Totals(torch.zeros(members, device=device), torch.zeros(members, device=device))
        rates = self.schedule.epoch_rates(self.learning_rate) if self.schedule.on else None
        if self.full_batch:
            if rates is not None:
                self.state.learning_rate.copy_(rates[0])
            self._full_batch_step(totals)
            bar.tick(0, totals, len(self.y))
        else:
            batches = epoch_batches(self.shufflers, len(self.y), self.batch_size, device)
            for index, batch in enumerate(batches):
                if rates is not None:
                    self.state.learning_rate.copy_(rates[index])
                # Keras trains on the short last batch too: eagerly, so it costs no second compiled shape.
                step_fn = self.eager if batch.shape[1] < self.batch_size else self.compiled
                step_fn(self.state, self.x, self.y, batch, totals)
                bar.tick(index, totals, self.batch_size)
        return totals.loss_sum / len(self.y), totals.correct / len(self.y)

    def _full_batch_step(self, totals: Totals) -> None:
        """One step over all rows, in order (their order cannot matter), as gradients summed over row
        chunks: activations of a whole 50k batch would be allocated, page-faulted in and freed every step."""
        # Chunks of (nearly) equal size: a short last chunk would make the compiler specialise again.
        chunks = math.ceil(len(self.y) / full_batch_chunk_rows(len(self.state.keys)))
        chunk_rows = math.ceil(len(self.y) / chunks)
        nll = correct = 0
        grads = None
        for start in range(0, len(self.y), chunk_rows):
            rows = self.x[start : start + chunk_rows], self.y[start : start + chunk_rows]
            part_nll, part_correct, part_grads = self.compiled(
                self.state, *rows, torch.tensor(start, device=self.x.device)
            )
            nll, correct = nll + part_nll, correct + part_correct
            if grads is None:
                grads = part_grads
            else:
                grads = [(k + pk, b + pb) for (k, b), (pk, pb) in zip(grads, part_grads, strict=True)]
        apply_gradients(self.state, totals, nll, correct, grads, len(self.y), self.work)


def _extras(work: StepWork, members: list[Hyperparameters], streams: list[Streams], device) -> dict:
    """The optional parts of a stack's state that its work asks for: a moving average, distortions."""
    extra = {}
    if work.ema:
        extra["average_decay"] = torch.tensor([m.ema for m in members], device=device)
    if work.augmentation:
        extra["distortion"] = strengths([m.augmentation for m in members], device)
        extra["distortion_keys"] = torch.tensor([s.augment for s in streams], device=device)
    return extra


def full_batch_chunk_rows(members: int) -> int:
    """At most this many rows per chunk of a full batch."""
    return max(256, FULL_BATCH_ROWS // members)


def epoch_batches(shufflers: list[torch.Generator], size: int, batch_size: int, device: torch.device):
    """An epoch's (M, B) row indices, each member in its own shuffled order."""
    # (size, stack), so that a batch's strides do not depend on the data size: no recompile in phase 2.
    order = torch.stack([torch.randperm(size, generator=g) for g in shufflers], dim=1).to(device)
    full_steps = size // batch_size
    batches = order[: full_steps * batch_size].view(full_steps, batch_size, -1).permute(0, 2, 1)
    yield from batches
    if size % batch_size:
        yield order[full_steps * batch_size :].T
