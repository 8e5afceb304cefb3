"""`DaliLoader`: a DALI pipeline as a drop-in replacement for `torch.utils.data.DataLoader`.

Each `for` over it is one epoch of `(images, targets)` torch tensors on the pipeline's device (no manual
reset). With dalimix's own pipelines (a `PipelineSpec`) it knows its length, pads short val shards with
empty batches so every rank yields the same number of batches (DDP must not hang), and turns a decode
failure into an error that names the file. Any other DALI pipeline with named outputs works too.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator, Optional, Sequence

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dalimix.data.dataset import DecodeError, find_undecodable
from dalimix.ops.schedule import MixSchedule
from dalimix.spec import PipelineSpec

_POLICIES = {"drop": LastBatchPolicy.DROP, "partial": LastBatchPolicy.PARTIAL, "fill": LastBatchPolicy.FILL}


class DaliLoader:
    """Iterate a DALI pipeline as `(images, targets)` torch tensors, one epoch per `for`.

    images: float NCHW (a channels_last view when the layout is HWC); targets: int64 [N] for class labels,
    float32 [N, num_classes] for soft targets. `len()` is batches per epoch. A `for` that is left early
    resumes where it stopped.

    Give it what `train_pipeline` / `val_pipeline` return (a `dalimix.spec.PipelineSpec`, which says all
    the rest), or a bare DALI pipeline with `output_map` (names of its outputs, images first), and for a
    DALI reader `reader_name` so the length is known; `layout="HWC"` for channels_last images.
    """

    def __init__(self, pipeline: Any, output_map: Optional[Sequence[str]] = None, *,
                 reader_name: Optional[str] = None, last_batch: Optional[str] = None,
                 layout: Optional[str] = None):
        spec = pipeline if isinstance(pipeline, PipelineSpec) else None
        if spec is not None:
            if output_map is not None or reader_name is not None or layout is not None:
                raise ValueError("output_map, reader_name and layout come with the PipelineSpec; pass them only "
                                 "with a bare DALI pipeline")
            self.pipeline = spec.pipeline
            output_map, layout, reader_name = spec.outputs, spec.layout, spec.reader_name
            last_batch = last_batch or spec.last_batch
        else:
            self.pipeline = pipeline
            if not output_map:
                raise ValueError("output_map is required for a bare DALI pipeline (names of its outputs, "
                                 "e.g. ['images', 'targets'])")
        self.spec = spec
        self.output_map = list(output_map)
        if len(set(self.output_map)) != len(self.output_map):
            raise ValueError(f"output_map names must be unique, got {self.output_map}")
        if layout not in (None, "CHW", "HWC"):
            raise ValueError(f"layout must be None, 'CHW' or 'HWC', got {layout!r}")
        self.layout = layout
        policy = last_batch or "partial"
        if policy not in _POLICIES:
            raise ValueError(f"last_batch must be one of {tuple(_POLICIES)}, got {policy!r}")
        self.last_batch = policy
        self.reader_name = reader_name
        self.batch_size = int(self.pipeline.max_batch_size)
        self._iterator: Optional[DALIGenericIterator] = None
        self._in_epoch = 0          # batches yielded in the current epoch
        self.epoch = self.source.start_epoch if self.source is not None else 0
        self._empty: Optional[tuple[torch.Tensor, ...]] = None

    @property
    def source(self) -> Any:
        """The pipeline's file source (`FileSource`, or `ShardSource` for tar shards); None for a bare pipeline."""
        return self.spec.source if self.spec is not None else None

    @property
    def schedule(self) -> Optional[MixSchedule]:
        return self.spec.schedule if self.spec is not None else None

    @property
    def classes(self) -> Optional[list[str]]:
        return self.spec.classes if self.spec is not None else None

    def __len__(self) -> int:
        if self.source is not None:
            return self.source.batches_per_epoch
        if self.reader_name is None:
            raise TypeError("this pipeline's length is unknown; pass reader_name= for a DALI reader")
        self._get_iterator()  # builds the pipeline, so that the reader knows its size
        meta = self.pipeline.reader_meta(self.reader_name)
        size = meta["epoch_size_padded"] if meta["pad_last_batch"] else meta["epoch_size"]
        per_shard = -(-size // max(1, meta["number_of_shards"]))
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
                    if self.spec is None:
                        raise
                    raise RuntimeError(f"building the DALI pipeline ({self.spec.settings}) failed: {exc}") from exc
        return self._iterator

    def checkpoint(self) -> bytes:
        """The pipeline's DALI state after the batches yielded so far (prefetching accounted for), to pass
        as `train_pipeline(checkpoint=...)` when resuming. Needs a pipeline built with checkpointing."""
        if self.spec is not None and not self.spec.checkpointing:
            raise ValueError("this pipeline was built without DALI checkpointing (val pipelines are stateless)")
        try:
            return self._get_iterator().checkpoints()[0]
        except RuntimeError as exc:
            raise ValueError(f"this pipeline keeps no DALI checkpoints (build it with "
                             f"enable_checkpointing=True): {exc}") from exc

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
        device_id = getattr(self.pipeline, "device_id", None)
        if hasattr(self.source, "epoch_members"):  # tar shards: the reader's order is not ours to replay
            bad = self.source.find_undecodable(self.epoch)
            if not bad and device_id is not None:
                bad = self.source.find_undecodable(self.epoch, device="gpu", device_id=device_id)
            if bad:
                return DecodeError(bad, str(exc))
            return RuntimeError(f"DALI pipeline ({self.spec.settings}) failed in epoch {self.epoch}, batch "
                                f"{self._in_epoch}: {exc}")
        depth = getattr(self.pipeline, "prefetch_queue_depth", 2)
        depth = max(depth.values()) if isinstance(depth, dict) else int(depth)
        candidates: list[str] = []
        for k in range(self._in_epoch, min(self._in_epoch + depth + 2, self.source.own_batches)):
            candidates += self.source.batch_files(self.epoch, k)
        bad = find_undecodable(candidates) if candidates else []
        if not bad and candidates and device_id is not None:
            # nvJPEG may reject a file the CPU decoder reads: try the suspects on the GPU, one by one.
            bad = find_undecodable(candidates, device="gpu", device_id=device_id)
        if bad:
            return DecodeError(bad, str(exc))
        where = f" ({self.spec.settings})" if self.spec is not None and self.spec.settings else ""
        return RuntimeError(f"DALI pipeline{where} failed in epoch {self.epoch}, batch {self._in_epoch}: {exc}")
