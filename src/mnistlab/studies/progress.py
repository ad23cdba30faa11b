"""One live bar for a plan, wherever its stacks train: the model-epochs trained over every stack, the
runs finished, the time gone and an estimate of the time left.

Stacks tell their counts after every epoch (`train.progress.EpochCount`): in this process directly, and
from Dask workers, local or on a cluster, as Dask events that the scheduler forwards to this client
(`Worker.log_event`, `Client.subscribe_topic`): nothing polls. On a terminal the bar is tqdm's; in a
notebook, tqdm's widget (`tqdm.auto`); off, nothing is drawn.
"""

import threading

from tqdm.auto import tqdm

TOPIC = "mnistlab-progress"


class PlanProgress:
    """The bar of a plan of `runs` runs, whose stacks (by key) plan these many model-epochs at first."""

    def __init__(self, planned: dict[int, int], runs: int, enabled: bool):
        self.planned, self.done = dict(planned), dict.fromkeys(planned, 0)
        self.runs, self.finished = runs, 0
        self.lock = threading.Lock()  # counts arrive on Dask's event-loop thread
        self.bar = tqdm(total=sum(self.planned.values()), unit="epoch", desc="training", disable=not enabled)
        self.bar.set_postfix_str(self._runs(), refresh=False)

    def stack(self, key: int, done: int, planned: int) -> None:
        """A stack's counts after one of its epochs."""
        with self.lock:
            if key not in self.planned:
                return
            self.done[key], self.planned[key] = done, planned
            self.bar.total = sum(self.planned.values())
            self.bar.update(sum(self.done.values()) - self.bar.n)

    def ran(self, runs: int) -> None:
        """`runs` more runs are finished and written."""
        with self.lock:
            self.finished += runs
            self.bar.set_postfix_str(self._runs())

    def around(self, log):
        """`log`, printing its lines above the bar rather than through it."""

        def logged(line: str) -> None:
            with self.lock:
                self.bar.clear()
                log(line)
                self.bar.refresh()

        return log if self.bar.disable else logged

    def _runs(self) -> str:
        return f"runs {self.finished}/{self.runs}"

    def close(self) -> None:
        self.bar.close()
