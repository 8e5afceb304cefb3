"""How long training waits for its input: a per-epoch clock, the advice line, and the tuning command."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable, Iterator, Optional

import torch

from dalimix.train.distributed import DistContext

INPUT_WAIT_THRESHOLD = 0.10  # share of training time spent waiting for batches above which `fit` says so


class WaitClock:
    """How long one rank's training waits for its next batch, over one epoch.

    Host: the seconds spent inside the loader's `next` (no synchronisation: on the CPU the step is synchronous,
    so this is the whole story). CUDA: the GPU's idle time between steps, from two CUDA events per step, one
    after the step's last kernel was queued, one after `next` returned, before the batch's first use: when the
    host queued step k+1 before the GPU finished step k the gap is ~0, otherwise it is exactly the time the GPU
    sat idle for want of a batch (the DALI output copy included, as it runs on the model's stream). No host
    synchronisation is added: events are read once they have completed (checked with a non-blocking query each
    step, and all of them after the epoch's closing synchronisation); the cost is two event records per step
    (microseconds). The first batch of the epoch is kept apart (`first_wait`): it holds one-time costs (the
    pipeline build in the first epoch, the refill after an epoch boundary) that say little about steady state.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.batches = 0
        self.first_wait = 0.0              # seconds until the first batch arrived
        self.host_wait = 0.0               # seconds in `next` for the later batches
        self.t_first: Optional[float] = None
        self.gap_ms = 0.0                  # GPU idle between steps (later steps only)
        self._pending: list[tuple[Any, Any]] = []  # (end of step k, start of step k+1), not yet read
        self._end_first: Any = None        # the end of the first step
        self._end_last: Any = None         # the end of the latest step
        self._read_until: Any = None       # the latest start-of-step event whose gap was read

    def batches_of(self, loader: Iterable) -> Iterator[Any]:
        """Iterate `loader`, timing each `next`."""
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            if self.batches == 0:
                self.first_wait, self.t_first = now - t, now
            else:
                self.host_wait += now - t
            self.batches += 1
            yield batch

    def step_start(self) -> None:
        """Call after the batch arrived, before the step queues any work on the GPU."""
        if self.cuda and self._end_last is not None:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._pending.append((self._end_last, start))

    def step_end(self) -> None:
        """Call after the step's last GPU work was queued."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if self._end_first is None:
                self._end_first = end
            self._end_last = end
            self._read(everything=False)

    def _read(self, everything: bool) -> None:
        """Add up the gaps whose events completed (all of them with `everything`: after a synchronisation)."""
        done = 0
        for end, start in self._pending:
            if not everything and not start.query():  # `end` precedes `start` on the stream
                break
            self.gap_ms += end.elapsed_time(start)
            self._read_until = start
            done += 1
        del self._pending[:done]

    def share(self, final: bool = False) -> float:
        """The share of the time since the first batch spent waiting for the later ones (nan before the
        second batch). CUDA: the GPU's idle share, from the events completed so far (with `final`, after the
        epoch's synchronisation: all of them, up to the end of the last step); otherwise the host's share in
        `next`."""
        if not self.cuda:
            return self.host_share(time.perf_counter())
        self._read(everything=final)
        until = self._end_last if final else self._read_until
        if self._end_first is None or until is None or until is self._end_first:
            return float("nan")
        span = self._end_first.elapsed_time(until)
        return min(1.0, self.gap_ms / span) if span > 0 else float("nan")

    def host_share(self, end: float) -> float:
        """The host's share of the time from the first batch to `end` (perf_counter) spent in `next`."""
        if self.t_first is None or self.batches < 2 or end <= self.t_first:
            return float("nan")
        return min(1.0, self.host_wait / (end - self.t_first))


def input_wait_advice(share: float, *, where: str = "", command: Optional[str] = None,
                      threshold: float = INPUT_WAIT_THRESHOLD) -> Optional[str]:
    """One line saying the model waits for its input `share` of the time, with what to run, or None when
    `share` does not exceed `threshold` (or is not a number)."""
    if not isinstance(share, (int, float)) or not math.isfinite(share) or share <= threshold:
        return None
    command = command or "dalimix-profile --tune --data <train folder> --device <cpu|gpu>"
    return (f"input wait {share:.0%}{where} (over {threshold:.0%}): the model waits for its batches; "
            f"`{command}` searches DALI threads, prefetch depth and batch size for faster loader settings")


def tune_command(loader: Any, ctx: DistContext) -> str:
    """The profiler's tuning command for this run's train loader, as far as the loader tells its settings."""
    parts = ["dalimix-profile --tune"]
    files = getattr(getattr(loader, "source", None), "files", None)
    if files:
        parts.append(f"--data {os.path.dirname(os.path.dirname(os.path.abspath(files[0])))}")
    else:
        parts.append("--data <train folder>")
    parts.append(f"--device {'gpu' if ctx.device.type == 'cuda' else 'cpu'}")
    pipeline = getattr(loader, "pipeline", None)
    threads = getattr(pipeline, "num_threads", None)
    if isinstance(threads, int):
        parts.append(f"--threads {threads}")
    batch = getattr(loader, "batch_size", None)
    if isinstance(batch, int):
        parts.append(f"--batch-size {batch}")
    depth = getattr(pipeline, "prefetch_queue_depth", None)
    if isinstance(depth, int) and depth != 2:
        parts.append(f"--prefetch {depth}")
    return " ".join(parts)
