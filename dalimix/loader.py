"""`DaliLoader`: a DALI pipeline as a drop-in replacement for `torch.utils.data.DataLoader`.

Each `iter()` is one epoch of `(images, targets)` torch tensors on the pipeline's device, as a DataLoader's
is: a new `iter()` starts a new epoch even when the last one was left early (`rest_of_epoch()` continues it
instead). With dalimix's own pipelines (a `PipelineSpec`) it knows its length, keeps every rank at the
same number of batches without an empty one, turns a decode failure into an error that names the file, and
answers what training scripts ask of a DataLoader: `.dataset`, `.sampler` (`set_epoch`), `.batch_sampler`,
`set_epoch(epoch)` and timm's `mixup_enabled`. Any other DALI pipeline with named outputs works too.

Epochs and prefetching: DALI prepares the first batches of the next epoch as soon as one ends. When an
epoch's order or mixing changes after that (`set_epoch` to another epoch, `mixup_enabled`, `set_mix`),
the batches already prepared are dropped and made again, so a change made between two epochs holds for
every batch of the next one.
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
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class LoaderDataset:
    """What `loader.dataset` answers, as a torchvision `ImageFolder` would: the samples of the whole dataset
    (every rank's), their labels and the class names. `len()` is the number of samples."""

    def __init__(self, source: Any, classes: Sequence[str]):
        self._source = source
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self._source.files)

    @property
    def files(self) -> list[str]:
        return list(self._source.files)

    @property
    def targets(self) -> list[int]:
        labels = getattr(self._source, "labels", None)
        if labels is None:
            raise AttributeError("the labels of tar shards are read with the images; they are not listed up front")
        return [int(v) for v in labels]

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.files, self.targets))

    def __repr__(self) -> str:
        return f"LoaderDataset({len(self)} samples, {len(self.classes)} classes)"


class LoaderSampler:
    """What `loader.sampler` answers, as a `DistributedSampler` would: `set_epoch(epoch)` decides the epoch
    the next `iter(loader)` reads (order, augmentation, mixing schedule); `len()` is the samples one rank
    reads per epoch; iterating gives their indices into `loader.dataset`."""

    def __init__(self, loader: "DaliLoader"):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        loader = self._loader
        if loader.last_batch == "drop":
            return len(loader) * loader.batch_size
        return int(getattr(loader.source, "samples_per_shard", 0))

    def __iter__(self) -> Iterator[int]:
        source = self._loader.source
        if not hasattr(source, "epoch_indices"):
            raise TypeError("the order of tar shards is decided by DALI's webdataset reader, not listed up front")
        indices = source.epoch_indices(self._loader.epoch)
        return iter(int(i) for i in indices[:len(self)])


class DaliLoader:
    """Iterate a DALI pipeline as `(images, targets)` torch tensors, one epoch per `iter()`.

    images: float NCHW (a channels_last view when the layout is HWC), in the pipeline's dtype, or `dtype`
    (e.g. `"bfloat16"`, which DALI does not produce: the loader converts on the images' device); targets:
    int64 [N] for class labels, float32 [N, num_classes] for soft targets. `len()` is batches per epoch.

    Give it what `train_pipeline` / `val_pipeline` return (a `dalimix.spec.PipelineSpec`, which says all
    the rest), or a bare DALI pipeline with `output_map` (names of its outputs, images first), and for a
    DALI reader `reader_name` so the length is known; `layout="HWC"` for channels_last images.
    """

    def __init__(self, pipeline: Any, output_map: Optional[Sequence[str]] = None, *,
                 reader_name: Optional[str] = None, last_batch: Optional[str] = None,
                 layout: Optional[str] = None, dtype: Optional[Any] = None):
        spec = pipeline if isinstance(pipeline, PipelineSpec) else None
        if spec is not None:
            if output_map is not None or reader_name is not None or layout is not None:
                raise ValueError("output_map, reader_name and layout come with the PipelineSpec; pass them only "
                                 "with a bare DALI pipeline")
            self.pipeline = spec.pipeline
            output_map, layout, reader_name = spec.outputs, spec.layout, spec.reader_name
            last_batch = last_batch or spec.last_batch
            dtype = dtype if dtype is not None else spec.output_dtype
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
        self.dtype = _torch_dtype(dtype)
        self.reader_name = reader_name
        self.batch_size = int(self.pipeline.max_batch_size)
        self._iterator: Optional[DALIGenericIterator] = None
        self._in_epoch = 0          # batches yielded in the current epoch
        self._open = False          # an epoch was started and not read to its end
        self._prepared = False      # batches of the next epoch may have been made already (after an epoch end)
        self._generation = 0        # which iter() owns the pipeline
        self.epoch = self.source.start_epoch if self.source is not None else 0
        self._empty: Optional[tuple[torch.Tensor, ...]] = None
        self.dataset = LoaderDataset(self.source, self.classes or []) if self.source is not None else None
        self.sampler = LoaderSampler(self) if self.source is not None else None
        self.batch_sampler = None   # batches are made inside the pipeline

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

    # -- epochs -----------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Read dataset epoch `epoch` on the next `iter()`: its order, augmentation and mixing schedule
        (DistributedSampler's meaning; call it before the epoch's first batch, as training scripts do)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if self._open:
            self._close_epoch()
        if epoch == self.epoch or self.source is None:
            self.epoch = epoch
            return
        if not hasattr(self.source, "cut"):
            warnings.warn("set_epoch on tar shards: DALI's webdataset reader keeps its own order; the epoch "
                          f"number ({epoch}) now drives the mixing schedule only", RuntimeWarning, stacklevel=2)
            self.source.start_epoch += epoch - self.epoch
            self.epoch = epoch
            return
        if self._prepared:
            self._discard_prepared(epoch)
        else:
            self.source.start_epoch += epoch - self.epoch  # the next DALI epoch now maps to `epoch`
        self.epoch = epoch

    @property
    def mixup_enabled(self) -> bool:
        """Whether the next epoch mixes (timm's `loader.mixup_enabled`); setting it turns in-pipeline mixing
        on or off from the next epoch not yet started. False for a pipeline without mixing."""
        if self.schedule is None:
            return False
        return self.schedule.enabled(self.epoch + (1 if self._open else 0))

    @mixup_enabled.setter
    def mixup_enabled(self, enabled: bool) -> None:
        if self.schedule is None:
            if enabled:
                raise ValueError("this pipeline was built without mixing (train_pipeline(mix=MixConfig(...)))")
            return
        self.set_mix(bool(enabled))

    def set_mix(self, enabled: bool, from_epoch: Optional[int] = None) -> None:
        """Turn in-pipeline mixing on or off from `from_epoch` (default: the next epoch not yet started)."""
        if self.schedule is None:
            raise ValueError("this pipeline was built without mixing (train_pipeline(mix=MixConfig(...)))")
        start = self.epoch + (1 if self._open else 0) if from_epoch is None else from_epoch
        changed = self.schedule.set(enabled, start)
        if not self._open and self._prepared and self.epoch in changed:
            self._discard_prepared(self.epoch)  # the next epoch's first batches were mixed the old way

    def _close_epoch(self) -> None:
        """End the epoch in progress (left early): stop its file source and drop what DALI prepared."""
        it = self._get_iterator()
        cut = getattr(self.source, "cut", None)
        if cut is not None:
            cut(self.epoch)
        self._drain(it)
        if cut is not None:
            self.source.uncut(self.epoch)
        self._end_epoch(it)

    def _discard_prepared(self, epoch: int) -> None:
        """Drop the batches DALI made of the next epoch under settings that changed since: that DALI epoch
        is ended at once, and the one after it reads dataset epoch `epoch` from its start."""
        it = self._get_iterator()
        self.source.cut(self.epoch)
        self._drain(it)
        self.source.uncut(self.epoch)
        self.source.start_epoch += epoch - self.epoch - 1  # the next DALI epoch stands for `epoch`
        it.reset()
        self._prepared = True

    def _drain(self, it: DALIGenericIterator) -> None:
        while True:
            try:
                next(it)
            except StopIteration:
                return

    def _end_epoch(self, it: DALIGenericIterator) -> None:
        it.reset()  # DALI starts preparing the next epoch now, overlapping the end of this one
        self._prepared = True
        self._open = False
        self._in_epoch = 0
        self.epoch += 1

    # -- iteration ----------------------------------------------------------------------------------------------
    def _get_iterator(self) -> DALIGenericIterator:
        if self._iterator is None:
            kwargs: dict[str, Any] = dict(auto_reset=False, last_batch_policy=_POLICIES[self.last_batch],
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch; an epoch left early by an earlier iterator is ended first (that iterator stops)."""
        it = self._get_iterator()
        if self._open:
            self._close_epoch()
        self._generation += 1
        self._open = True
        return self._batches(it, self._generation)

    def rest_of_epoch(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches left in the epoch in progress (none when no epoch is open): to continue an epoch
        that a `for` left early, where a new `iter()` would start the next one."""
        if not self._open:
            return iter(())
        self._generation += 1
        return self._batches(self._get_iterator(), self._generation)

    def _batches(self, it: DALIGenericIterator, generation: int) -> Iterator[tuple[torch.Tensor, ...]]:
        expected = len(self) if self.source is not None else None
        split = self.source is not None and expected is not None and self.source.own_batches == expected - 1
        while True:
            if generation != self._generation:
                return  # a newer iterator took the pipeline over
            try:
                data = next(it)
            except StopIteration:
                break
            except RuntimeError as exc:
                raise self._explain(exc) from exc
            batch = self._convert(data[0])
            if split and self._in_epoch == expected - 2 and batch[0].shape[0] >= 2:
                # A val shard one batch short of the others: its last batch goes out as two halves, so that
                # every rank yields the same number of batches and none is empty.
                half = (batch[0].shape[0] + 1) // 2
                for part in (tuple(t[:half] for t in batch), tuple(t[half:] for t in batch)):
                    self._in_epoch += 1
                    yield part
                continue
            self._in_epoch += 1
            yield batch
        # Left only where a short shard's last batch has a single sample: an empty batch keeps ranks in step.
        while expected is not None and self._in_epoch < expected and self._empty is not None:
            self._in_epoch += 1
            yield self._empty
        if generation == self._generation:
            self._end_epoch(it)

    def _convert(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = []
        for i, name in enumerate(self.output_map):
            t = data[name]
            if i == 0 and self.layout == "HWC" and t.dim() == 4:
                t = t.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last
            if i == 0 and self.dtype is not None and t.dtype != self.dtype:
                t = t.to(self.dtype)  # memory format kept (channels_last stays channels_last)
            elif i > 0 and not t.is_floating_point():
                t = t.reshape(t.shape[0], -1)
                t = t.reshape(-1).long() if t.shape[1] == 1 else t.long()
            out.append(t)
        # Real empty tensors, not views of this batch: a view would keep the batch's (zero-copy, GPU) memory alive.
        self._empty = tuple(torch.empty((0, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in out)
        return tuple(out)

    def _explain(self, exc: RuntimeError) -> Exception:
        """Name the file behind a DALI decode failure where the pipeline is dalimix's own."""
        if self.source is None or not _is_decode_failure(exc):
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


# What DALI says when a file cannot be decoded, and what it says when CUDA itself failed: then the files are
# not at fault (and a probe pipeline could not even be built), so the error is passed on as it is.
_DECODE_WORDS = ("decoders.image", "nvimgcodec", "nvjpeg", "decod", "jpeg", "unsupported image", "corrupt",
                 "truncated", "unknown format", "bitstream", "invalid marker", "huffman")
_CUDA_WORDS = ("cudaerror", "cuda error", "cuda runtime", "cuda driver", "illegal memory access", "illegal address",
               "out of memory", "insufficient driver", "no cuda-capable", "launch failure", "ecc error")


def _is_decode_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    if any(w in text for w in _CUDA_WORDS):
        return False
    return any(w in text for w in _DECODE_WORDS)


def _torch_dtype(dtype: Any) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be None, a torch dtype or one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[name]
