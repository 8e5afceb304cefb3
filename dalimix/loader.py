"""`DaliLoader`: a DALI pipeline as a drop-in replacement for `torch.utils.data.DataLoader`.

Each `for` over it is one epoch of `(images, targets)` torch tensors on the pipeline's device (no manual
reset). With dalimix's own pipelines it knows its length, pads short val shards with empty batches so every
rank yields the same number of batches (DDP must not hang), and turns a decode failure into an error that
names the file. Any other pipeline with named outputs works too.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator, Optional, Sequence

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dalimix.dataset import DecodeError, find_undecodable

_POLICIES = {"drop": LastBatchPolicy.DROP, "partial": LastBatchPolicy.PARTIAL, "fill": LastBatchPolicy.FILL}


class DaliLoader:
    """Iterate a DALI pipeline as `(images, targets)` torch tensors, one epoch per `for`.

    images: float NCHW (a channels_last view when the pipeline's layout is HWC); targets: int64 [N] for
    class labels, float32 [N, num_classes] for soft targets. For pipelines not built by dalimix pass
    `output_map` (names of the outputs, images first) and, for a DALI reader, `reader_name` so the length
    is known. `len()` is batches per epoch. A `for` that is left early resumes where it stopped.
    """

    def __init__(self, pipeline: Any, output_map: Optional[Sequence[str]] = None, *,
                 reader_name: Optional[str] = None, last_batch: Optional[str] = None):
        self.pipeline = pipeline
        self.output_map = list(output_map or getattr(pipeline, "dalimix_output_map", None) or [])
        if len(self.output_map) < 1:
            raise ValueError("output_map is required for a pipeline not built by dalimix (names of its outputs, "
                             "e.g. ['images', 'targets'])")
        if len(set(self.output_map)) != len(self.output_map):
            raise ValueError(f"output_map names must be unique, got {self.output_map}")
        self.source = getattr(pipeline, "dalimix_source", None)
        self.layout = getattr(pipeline, "dalimix_layout", None)
        self.schedule = getattr(pipeline, "dalimix_schedule", None)
        self.classes = getattr(pipeline, "dalimix_classes", None)
        policy = last_batch or getattr(pipeline, "dalimix_last_batch", None) or "partial"
        if policy not in _POLICIES:
            raise ValueError(f"last_batch must be one of {tuple(_POLICIES)}, got {policy!r}")
        self.last_batch = policy
        self.reader_name = reader_name
        self.batch_size = int(pipeline.max_batch_size)
        self._iterator: Optional[DALIGenericIterator] = None
        self._in_epoch = 0          # batches yielded in the current epoch
        self.epoch = self.source.start_epoch if self.source is not None else 0
        self._empty: Optional[tuple[torch.Tensor, ...]] = None

    def __len__(self) -> int:
        if self.source is not None:
            return self.source.batches_per_epoch
        it = self._get_iterator()
        size = getattr(it, "_size", -1)
        if size is None or size < 0:
            raise TypeError("this pipeline's length is unknown; pass reader_name= for a DALI reader")
        shards = getattr(it, "_shards_num", 1)
        per_shard = -(-size // shards) if shards > 1 else size
        if self.last_batch == "drop":
            return per_shard // self.batch_size
        return -(-per_shard // self.batch_size)

    def _get_iterator(self) -> DALIGenericIterator:
        if self._iterator is None:
            kwargs: dict[str, Any] = dict(auto_reset=True, last_batch_policy=_POLICIES[self.last_batch],
                                          prepare_first_batch=False)
            if self.reader_name is not None:
                kwargs["reader_name"] = self.reader_name
            with warnings.catch_warnings():
                # DALI warns that external_source-driven pipelines have no known size; we track it.
                warnings.simplefilter("ignore")
                try:
                    self._iterator = DALIGenericIterator(self.pipeline, self.output_map, **kwargs)
                except RuntimeError as exc:
                    settings = getattr(self.pipeline, "dalimix_settings", None)
                    if settings is None:
                        raise
                    raise RuntimeError(f"building the DALI pipeline ({settings}) failed: {exc}") from exc
        return self._iterator

    def checkpoint(self) -> bytes:
        """The pipeline's DALI state after the batches yielded so far (prefetching accounted for), to pass
        as `train_pipeline(checkpoint=...)` when resuming. Needs a pipeline built with checkpointing."""
        if not getattr(self.pipeline, "_enable_checkpointing", False):
            raise ValueError("this pipeline was built without enable_checkpointing=True")
        return self._get_iterator().checkpoints()[0]

    def set_mix(self, enabled: bool, from_epoch: Optional[int] = None) -> None:
        """Turn in-pipeline mixing on or off from `from_epoch` (default: the next epoch not yet started)."""
        if self.schedule is None:
            raise ValueError("this pipeline was built without mixing (train_pipeline(mix=MixConfig(...)))")
        self.schedule.set(enabled, self.epoch + (1 if self._in_epoch else 0) if from_epoch is None else from_epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        it = self._get_iterator()
        expected = len(self) if self.source is not None else None
        while True:
            try:
                data = next(it)
            except StopIteration:
                break
            except RuntimeError as exc:
                raise self._explain(exc) from exc
            batch = self._convert(data[0])
            self._in_epoch += 1
            yield batch
        # Short val shards: empty batches so that every shard yields the same count.
        while expected is not None and self._in_epoch < expected and self._empty is not None:
            self._in_epoch += 1
            yield self._empty
        self._in_epoch = 0
        self.epoch += 1

    def _convert(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = []
        for i, name in enumerate(self.output_map):
            t = data[name]
            if i == 0 and self.layout == "HWC" and t.dim() == 4:
                t = t.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last
            elif i > 0 and not t.is_floating_point():
                t = t.reshape(t.shape[0], -1)
                t = t.reshape(-1).long() if t.shape[1] == 1 else t.long()
            out.append(t)
        # Real empty tensors, not views of this batch: a view would keep the batch's (zero-copy, GPU) memory alive.
        self._empty = tuple(torch.empty((0, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in out)
        return tuple(out)

    def _explain(self, exc: RuntimeError) -> Exception:
        """Name the file behind a DALI failure where the pipeline is dalimix's own."""
        if self.source is None:
            return exc
        depth = getattr(self.pipeline, "prefetch_queue_depth", 2)
        depth = max(depth.values()) if isinstance(depth, dict) else int(depth)
        candidates: list[str] = []
        for k in range(self._in_epoch, min(self._in_epoch + depth + 2, self.source.own_batches)):
            candidates += self.source.batch_files(self.epoch, k)
        bad = find_undecodable(candidates) if candidates else []
        device_id = getattr(self.pipeline, "device_id", None)
        if not bad and candidates and device_id is not None:
            # nvJPEG may reject a file the CPU decoder reads: try the suspects on the GPU, one by one.
            bad = find_undecodable(candidates, device="gpu", device_id=device_id)
        if bad:
            return DecodeError(bad, str(exc))
        settings = getattr(self.pipeline, "dalimix_settings", None)
        where = f" ({settings})" if settings else ""
        return RuntimeError(f"DALI pipeline{where} failed in epoch {self.epoch}, batch {self._in_epoch}: {exc}")
