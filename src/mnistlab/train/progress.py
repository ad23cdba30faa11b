"""Progress of a stack in training: Keras-like bars, one per epoch, with live loss and accuracy, and a
count of the epochs its models have trained and have left, for a plan's one bar (`studies.progress`).
Off, they cost nothing: no bar, and no host sync inside an epoch."""

from collections.abc import Callable

from tqdm.auto import tqdm

# Called after every epoch with (model-epochs trained, model-epochs planned) of the whole stack.
Report = Callable[[int, int], None]


class ProgressBars:
    """Bars labelled `label` (a run's name and phase); `ProgressBars.OFF` draws none. `report`, where
    given, hears the stack's epoch counts after every epoch, bars or not."""

    OFF: "ProgressBars"

    def __init__(self, label: str = "", enabled: bool = True, report: Report | None = None):
        self.label, self.enabled, self.report = label, enabled, report

    def within(self, part: str) -> "ProgressBars":
        """Bars for a part of this work, such as one phase of a run."""
        return ProgressBars(f"{self.label} {part}".strip(), self.enabled, self.report)

    def epoch(self, epoch: int, epochs: int, steps: int) -> "_EpochBar":
        return _EpochBar(f"{self.label} epoch {epoch}/{epochs}".strip(), steps, self.enabled)


ProgressBars.OFF = ProgressBars(enabled=False)


class EpochCount:
    """The epochs a stack's models have trained, and the epochs they are still planned to train, over
    both phases of the protocol: phase 2 trains each model for as many epochs as its phase 1 ran, so
    what early stopping cuts from phase 1 comes off phase 2's plan too, and a pruned model has none."""

    def __init__(self, budgets: list[int], report: Report | None):
        self.budgets, self.report = budgets, report
        self.phase1: list[int] | None = None  # epochs each model trained in phase 1, once it ended
        self.phase2: list[int] = []  # epochs each model retrains in phase 2

    def tell(self, done: list[int], left: list[int], pruned: frozenset[int] = frozenset()) -> None:
        """After an epoch of the current phase: per model, the epochs done in it and the epochs it has left,
        and in phase 1 the models that were pruned (they retrain nothing)."""
        if self.report is None:
            return
        if self.phase1 is None:
            ahead = [d + rest for d, rest in zip(done, left, strict=True)]
            again = sum(a for member, a in enumerate(ahead) if member not in pruned)
            self.report(sum(done), sum(ahead) + again)
        else:
            self.report(sum(self.phase1) + sum(done), sum(self.phase1) + sum(self.phase2))

    def end_phase1(self, trained: list[int], retrained: list[int]) -> None:
        """Phase 1 ended with these epochs per model; phase 2 retrains these (per model that goes on)."""
        self.phase1, self.phase2 = trained, retrained


class _EpochBar:
    def __init__(self, description: str, steps: int, enabled: bool):
        self.bar = tqdm(total=steps, desc=description, unit="step", leave=False) if enabled else None
        self.every = max(1, steps // 50)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def tick(self, index: int, totals, batch_size: int) -> None:
        """After batch `index`, with the epoch's running totals (a host sync, every 50th of an epoch)."""
        if self.bar is not None and (index + 1) % self.every == 0:
            seen = (index + 1) * batch_size
            self.bar.set_postfix_str(
                _describe(totals.loss_sum.mean() / seen, totals.correct.mean() / seen), refresh=False
            )
            self.bar.update(self.every)

    def finish(self, numbers, rows: list[int]) -> None:
        """The epoch's numbers (`EpochNumbers`), averaged over the stack's `rows` still training."""
        if self.bar is not None:
            loss, acc, val_loss, val_acc = (sum(column[row] for row in rows) / len(rows) for column in numbers)
            self.bar.n = self.bar.total
            self.bar.set_postfix_str(f"{_describe(loss, acc)}, eval loss {val_loss:.4f}, eval acc {val_acc:.4f}")


def _describe(loss, accuracy) -> str:
    return f"loss {float(loss):.4f}, acc {float(accuracy):.4f}"
