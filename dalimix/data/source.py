"""The file source of dalimix pipelines: encoded images and labels, in a seeded order, sharded evenly.

DALI's own readers shuffle with an internal generator and shard contiguously, which makes shard lengths
differ, hides which file sits in which batch, and cannot be replayed from a seed and an epoch. This source
is a stateless function of (epoch, iteration), as DALI's `external_source` wants, so:
- every epoch order is `permutation(seed, epoch)`, identical on every rank, so shards are disjoint;
- train shards take a strided slice of the order padded to a multiple of `num_shards` (as PyTorch's
  DistributedSampler does), so every shard yields the same number of full batches;
- val shards take contiguous ranges without padding, and the last batch is short, never duplicated;
- a decode error can be traced back to the files of the failing batch;
- resuming at epoch `e` only needs `start_epoch = e`;
- with `repeats=R` (repeated augmentation, DeiT's RASampler and torchvision's `--ra-sampler`), each train
  epoch keeps its length per shard and holds about len/R distinct images, each R times with independent
  augmentation: the order's images are repeated R times in a row and dealt out with the same stride, so the R
  copies go to R different shards when there are at least R. Copies that land on one shard are spread over the
  epoch (all first copies, then all second copies, each round in its own seeded order), so they share a
  batch (and its BatchNorm statistics) only where the shard holds fewer distinct images than a batch.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from dalimix import validation as V


# Reads in flight by default ("auto", reads_in_flight=None): one at a time while a file takes less than
# SLOW_READ_S to read (local disks and the page cache, where threads only add overhead), AUTO_IN_FLIGHT at once
# when files take longer (network storage, object stores behind FUSE). docs/BENCHMARKS.md section 8.
AUTO_IN_FLIGHT = 16
SLOW_READ_S = 0.0005


class FileSource:
    """Batches of (encoded file bytes, int32 label) for `fn.external_source(..., batch_info=True)`."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], *, batch_size: int, shard_id: int = 0,
                 num_shards: int = 1, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 start_epoch: int = 0, read_ahead: int = 2, max_batches: int | None = None,
                 classes: Sequence[str] = (), repeats: int = 1, reads_in_flight: int | None = None):
        if len(files) != len(labels):
            raise ValueError(f"files ({len(files)}) and labels ({len(labels)}) differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
        self.files = list(files)
        self.classes = list(classes)  # names of the labels, index = label
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size = int(batch_size)
        self.shard_id = int(shard_id)
        self.num_shards = int(num_shards)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.start_epoch = int(start_epoch)
        self.repeats = V.positive_int("repeats", repeats)
        if self.repeats > 1 and not drop_last:
            raise V.ArgumentError("repeats", "repeats: repeated augmentation is for train sources (drop_last); "
                                             "a val pass reads each image once")
        n = len(self.files)
        if drop_last:
            self.samples_per_shard = math.ceil(n / num_shards)
            self.batches_per_epoch = self.samples_per_shard // batch_size
            if self.batches_per_epoch == 0:
                raise V.ArgumentError("batch_size", f"batch_size {batch_size} is larger than the "
                                      f"{self.samples_per_shard} samples per shard ({n} files over {num_shards} "
                                      f"shard(s)); no full batch can be made")
        else:
            lo, hi = self._range(shard_id)
            self.samples_per_shard = hi - lo
            self.batches_per_epoch = max(math.ceil((h - l) / batch_size)
                                         for l, h in map(self._range, range(num_shards)))
        # Val shards may hold one batch fewer than the longest; the loader pads those with empty batches.
        self.own_batches = (self.batches_per_epoch if drop_last
                            else math.ceil(self.samples_per_shard / batch_size))
        if max_batches is not None:
            # A shorter epoch (smoke runs): the first `max_batches` batches of each epoch's order.
            V.positive_int("max_batches_per_epoch", max_batches)
            self.batches_per_epoch = min(self.batches_per_epoch, max_batches)
            self.own_batches = min(self.own_batches, max_batches)
        self._orders: dict[int, np.ndarray] = {}
        self.read_ahead = int(read_ahead)
        self.reads_in_flight = None if reads_in_flight is None else V.positive_int("reads_in_flight",
                                                                                   reads_in_flight)
        self._file_seconds = 0.0  # recent seconds per file read (auto reads in flight)
        self._pool: ThreadPoolExecutor | None = None
        self._file_pool: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[int, int], Future] = {}
        self._cut: set[int] = set()

    def cut(self, epoch: int) -> None:
        """End dataset epoch `epoch` early: its batches not yet asked for are not made (a loader whose epoch
        was left, or whose prepared batches are stale, ends it without reading the rest)."""
        self._cut.add(int(epoch))

    def uncut(self, epoch: int) -> None:
        self._cut.discard(int(epoch))

    def _range(self, shard: int) -> tuple[int, int]:
        n = len(self.files)
        return n * shard // self.num_shards, n * (shard + 1) // self.num_shards

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Indices into `files` that this shard reads in `epoch`, in order."""
        cached = self._orders.get(epoch)
        if cached is not None:
            return cached
        n = len(self.files)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        if self.drop_last:
            total = self.samples_per_shard * self.num_shards
            if self.repeats > 1:
                order = np.repeat(order, self.repeats)
            order = np.resize(order, max(total, len(order)))  # cyclically up to a multiple of num_shards
            idx = order[self.shard_id::self.num_shards][:self.samples_per_shard]
            if self.repeats > 1:
                idx = self._spread_copies(idx, epoch)
        else:
            lo, hi = self._range(self.shard_id)
            idx = order[lo:hi]
        self._orders = {e: v for e, v in self._orders.items() if abs(e - epoch) <= 1}  # this and next epoch
        self._orders[epoch] = idx
        return idx

    def _spread_copies(self, idx: np.ndarray, epoch: int) -> np.ndarray:
        """`idx` with the copies of an image on this shard apart: round r holds every image's r-th copy, each
        round in its own order drawn from (seed, epoch, shard, r)."""
        by_file = np.argsort(idx, kind="stable")
        ordered = idx[by_file]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        copy = np.empty(len(idx), dtype=np.int64)
        copy[by_file] = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
        if len(idx) == 0 or copy.max() == 0:
            return idx
        rounds = []
        for r in range(int(copy.max()) + 1):
            part = idx[copy == r]
            rng = np.random.default_rng([self.seed, epoch, self.shard_id, r + 1])
            rounds.append(part[rng.permutation(len(part))] if self.shuffle else part)
        return np.concatenate(rounds)

    def batch_indices(self, epoch: int, iteration: int) -> np.ndarray:
        """Indices of the files in batch `iteration` of `epoch` (empty past the end of this shard)."""
        idx = self.epoch_indices(epoch)
        return idx[iteration * self.batch_size:(iteration + 1) * self.batch_size]

    def batch_files(self, epoch: int, iteration: int) -> list[str]:
        return [self.files[i] for i in self.batch_indices(epoch, iteration)]

    def epoch_of(self, info: Any) -> int:
        """The dataset epoch of a DALI `BatchInfo` (DALI counts from 0 at pipeline build)."""
        return self.start_epoch + int(info.epoch_idx)

    def _read(self, epoch: int, iteration: int) -> list[np.ndarray]:
        """The batch's file bytes, in order: `reads_in_flight` contiguous shares read at once (one task each)."""
        idx = self.batch_indices(epoch, iteration)
        wanted = self.reads_in_flight or (AUTO_IN_FLIGHT if self._file_seconds > SLOW_READ_S else 1)
        k = min(wanted, len(idx))
        t = time.perf_counter()
        if k <= 1:
            out = [np.fromfile(self.files[i], dtype=np.uint8) for i in idx]
        else:
            if self._file_pool is None:
                self._file_pool = ThreadPoolExecutor(max_workers=max(k, AUTO_IN_FLIGHT),
                                                     thread_name_prefix="dalimix-file")
            shares = np.array_split(idx, k)
            parts = self._file_pool.map(lambda share: [np.fromfile(self.files[i], dtype=np.uint8) for i in share],
                                        shares)
            out = [data for part in parts for data in part]
        if len(idx):
            per_file = (time.perf_counter() - t) * k / len(idx)
            self._file_seconds = per_file if not self._file_seconds else 0.7 * self._file_seconds + 0.3 * per_file
        return out

    def _next_key(self, epoch: int, iteration: int) -> tuple[int, int]:
        return (epoch, iteration + 1) if iteration + 1 < self.own_batches else (epoch + 1, 0)

    def __call__(self, info: Any) -> tuple[list[np.ndarray], np.ndarray]:
        epoch = self.epoch_of(info)
        it = int(info.iteration)
        if it >= self.own_batches or epoch in self._cut:
            raise StopIteration
        labels = self.labels[self.batch_indices(epoch, it)]
        if self.read_ahead <= 0:
            return self._read(epoch, it), labels
        # Reading releases the GIL: a thread fetches the next batches' bytes while DALI decodes this one.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dalimix-read")
        key = (epoch, it)
        pending = self._pending.pop(key, None)
        if pending is None:
            self._pending.clear()  # out of order (a reset or a resume): start afresh
        ahead = key
        for _ in range(self.read_ahead):
            ahead = self._next_key(*ahead)
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self._read, *ahead)
        return (pending.result() if pending is not None else self._read(epoch, it)), labels

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"], state["_pending"], state["_cut"], state["_file_pool"] = None, {}, set(), None
        return state
