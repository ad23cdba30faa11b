"""Keras-like progress bars, one per epoch, with live loss and accuracy. Off, they cost nothing: no bar,
and no host sync inside an epoch."""

from tqdm import tqdm


class ProgressBars:
    """Bars labelled `label` (a run's name and phase); `ProgressBars.OFF` draws none."""

    OFF: "ProgressBars"

    def __init__(self, label: str = "", enabled: bool = True):
        self.label, self.enabled = label, enabled

    def within(self, part: str) -> "ProgressBars":
        """Bars for a part of this work, such as one phase of a run."""
        return ProgressBars(f"{self.label} {part}".strip(), self.enabled)

    def epoch(self, epoch: int, epochs: int, steps: int) -> "_EpochBar":
        return _EpochBar(f"{self.label} epoch {epoch}/{epochs}".strip(), steps, self.enabled)


ProgressBars.OFF = ProgressBars(enabled=False)


class _EpochBar:
    def __init__(self, description: str, steps: int, enabled: bool):
        self.bar = tqdm(total=steps, desc=description, unit="step", leave=True) if enabled else None
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
