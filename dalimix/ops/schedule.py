"""Turning mixing on and off between epochs without rebuilding the pipeline.

A `MixSchedule` is the per-iteration input behind `mix(..., enabled=...)`. DALI calls it with each batch's
`BatchInfo`, and it answers from the batch's own epoch, not from when it is called, so prefetching (which
runs the graph ahead of the training loop) cannot apply a change to the wrong batches. This is what
timm's `--mixup-off-epoch` gets wrong with persistent workers: there the flag is set on a copy.
"""
from __future__ import annotations

import bisect
from typing import Any, Optional

import numpy as np

from dalimix import validation as V


class MixSchedule:
    """Which epochs mix: on by default, off from `off_epoch`, changed later with `set`."""

    def __init__(self, source: Any, off_epoch: Optional[int] = None):
        self._source = source
        self._changes: list[tuple[int, bool]] = []
        self.drawn: set[int] = set()  # epochs whose batches have asked already (recent ones)
        if V.optional_epoch("mix_off_epoch", off_epoch) is not None:
            self.set(False, from_epoch=off_epoch)

    def set(self, enabled: bool, from_epoch: int) -> set[int]:
        """Mix (or not) in every epoch from `from_epoch` on; batches already drawn are unaffected. Returns
        the epochs that already drew batches and now mix otherwise (their drawn batches are stale)."""
        if V.optional_epoch("from_epoch", from_epoch) is None:
            raise V.ArgumentError("from_epoch", "from_epoch must be an int >= 0, got None")
        before = {e: self.enabled(e) for e in self.drawn}
        self._changes = [c for c in self._changes if c[0] < from_epoch] + [(int(from_epoch), bool(enabled))]
        return {e for e, was in before.items() if self.enabled(e) != was}

    def enabled(self, epoch: int) -> bool:
        """Whether batches of `epoch` are mixed."""
        i = bisect.bisect_right([c[0] for c in self._changes], epoch)
        return self._changes[i - 1][1] if i else True

    def __call__(self, info: Any) -> np.ndarray:
        epoch = self._source.epoch_of(info)
        if epoch not in self.drawn:
            self.drawn = {e for e in self.drawn if e >= epoch - 1} | {epoch}
        return np.full((self._source.batch_size,), self.enabled(epoch), dtype=np.bool_)
