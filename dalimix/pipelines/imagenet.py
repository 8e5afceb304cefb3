"""ImageNet train and val pipelines: decode fused with the random-resized crop, then resample, mix, flip,
normalise and erase (one native operator), or resize + centre crop + normalise for val.

The same graph runs on the GPU (`device="gpu"`: nvJPEG / hardware decoder, GPU augmentation, outputs stay
on the GPU) and on the CPU (`device="cpu"`: `device_id=None`, no CUDA needed). Both builders return a
`dalimix.spec.PipelineSpec`: the DALI pipeline and what `dalimix.DaliLoader` needs to know about it (output
names, file source, last-batch policy, layout, classes, mixing schedule). See docs/DESIGN.md.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from nvidia.dali import fn, pipeline_def, types

from dalimix import native
from dalimix import validation as V
from dalimix.config import MixConfig
from dalimix.data import shards
from dalimix.ops import erasing as erasing_ops
from dalimix.ops.policy import parse_color_jitter, parse_policy
from dalimix.ops.schedule import MixSchedule
from dalimix.pipelines.inputs import READER, make_source, read_samples
from dalimix.pipelines.options import (DECODER_OPTIONS, IMAGENET_MEAN, IMAGENET_STD, decoder_options as
                                       check_decoder_options, graph_dtype, normalize_device, prefetch_depth, seeds)
from dalimix.pipelines.train_graph import STAGES, TrainGraph, normalize_images
from dalimix.spec import PipelineSpec

TRAIN_INTERPOLATIONS = ("bilinear", "bicubic", "random")
RE_ORDERS = ("after_mix", "before_mix")

__all__ = ["train_pipeline", "val_pipeline", "IMAGENET_MEAN", "IMAGENET_STD", "DECODER_OPTIONS", "STAGES", "READER",
           "TrainGraph", "make_source", "read_samples", "normalize_images"]


def train_pipeline(data_dir: str | os.PathLike, *, batch_size: int, crop: int = 224, device: Any = "gpu",
                   num_threads: int = 4, mix: Optional[MixConfig] = None, shard_id: int = 0, num_shards: int = 1,
                   seed: Optional[int] = None, device_id: Optional[int] = None, file_list: Optional[str] = None,
                   scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                   flip_prob: float = 0.5, dtype: str = "float32", channels_last: bool = False,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   antialias: bool = False, re_prob: float = 0.0, re_mode: str = "const", re_count: int = 1,
                   mix_off_epoch: Optional[int] = None, first_epoch: int = 0, verify_files: bool = True,
                   classes: Optional[Sequence[str]] = None, prefetch_queue_depth: int | dict = 2,
                   checkpoint: Optional[bytes] = None, allow_outside_root: bool = False,
                   max_batches_per_epoch: Optional[int] = None,
                   decoder_options: Optional[dict] = None, auto_augment: Optional[str] = None,
                   color_jitter: Any = None, interpolation: str = "bilinear",
                   re_order: str = "after_mix", repeats: int = 1,
                   reads_in_flight: Optional[int] = None) -> PipelineSpec:
    """The ImageNet training pipeline, outputs `("images", "targets")`, as a `PipelineSpec`.

    Decode is fused with the random-resized crop (`scale`, `ratio`), then resample to `crop`
    (`interpolation` "bilinear", "bicubic", or "random": either per image, as timm's train.py), optional
    mixup / CutMix (`mix`), random flip, normalisation to `dtype` CHW (HWC with `channels_last`) and
    optional random erasing, after mixing (timm's train.py) or, with `re_order="before_mix"`, each image's
    own regions before it is mixed (DeiT, ConvNeXt, torchvision). `auto_augment` runs a per-sample policy
    with its library's meaning: timm's strings (`"rand-m9-mstd0.5-inc1"`, `"3a"`, ...) or torchvision's
    (`"ra"`, `"ta_wide"`, `"imagenet"`), and `color_jitter` (a number, or (b, c, s[, h])) torchvision's
    ColorJitter after it; then the order is crop -> resize to `crop` -> flip -> policy / jitter -> mix ->
    normalise (timm turns colour jitter off when it runs a policy other than 3a: pass None then). Each
    epoch is a seeded shuffle, sharded so every shard yields the same number of full batches; the last
    partial batch is dropped. `mix_off_epoch` turns mixing off from that epoch on
    (the schedule is a per-iteration input: `DaliLoader.set_mix` changes it between epochs).
    `first_epoch` is the dataset epoch the pipeline starts at. `checkpoint` (from `DaliLoader.checkpoint()`)
    restores the augmentation state of a run: pass the `first_epoch` that run's pipeline was built with, as
    DALI restores its own epoch count. `max_batches_per_epoch` shortens every epoch (smoke runs).
    `decoder_options` go to DALI's GPU decoder (see `DECODER_OPTIONS`; `dalimix-profile --tune` finds them).
    `device` is "gpu" or "cpu", or torch's "cuda", "cuda:N" or a `torch.device`; a GPU without an index is
    `device_id`, else this rank's. `dtype` "bfloat16" is written as float32 and converted by `DaliLoader`.
    `mix=MixConfig(...)` with `num_classes=None` (its default) takes the class count of the data.
    `repeats=R` is repeated augmentation (DeiT's RASampler, torchvision's `--ra-sampler`): each epoch keeps
    its length and holds about len/R distinct images, R times each, the copies on different ranks where
    there are at least R (see `dalimix.data.source`); folder datasets only. `reads_in_flight` files of a
    batch are read at once (default: one while files read fast, 16 when each takes over 0.5 ms).
    """
    batch_size, num_threads, num_shards = _sizes(batch_size, num_threads, num_shards, shard_id)
    crop = V.positive_int("crop", crop)
    scale = V.range_pair("scale", scale)
    if scale[1] > 1.0:
        raise V.ArgumentError("scale", f"scale must lie in (0, 1], got {scale!r}")
    ratio = V.range_pair("ratio", ratio)
    V.probability("flip_prob", flip_prob)
    if mix is not None and not isinstance(mix, MixConfig):
        raise V.ArgumentError("mix", f"mix must be None or a dalimix.MixConfig, got {type(mix).__name__}")
    out_dtype, loader_dtype = graph_dtype(dtype)
    erasing = erasing_ops.ErasingConfig(prob=re_prob, mode=re_mode, count=re_count)
    V.one_of("interpolation", interpolation, TRAIN_INTERPOLATIONS)
    V.one_of("re_order", re_order, RE_ORDERS)
    policy = parse_policy(auto_augment, mean=mean, interpolation=interpolation)
    jitter = parse_color_jitter(color_jitter)
    V.optional_epoch("mix_off_epoch", mix_off_epoch)
    V.optional_epoch("first_epoch", first_epoch)
    device, dev_id = normalize_device(device, device_id)
    order_seed, aug_seed = seeds(seed, shard_id, num_shards)

    source = make_source(data_dir, file_list=file_list, verify=verify_files, classes=classes,
                         allow_outside_root=allow_outside_root, batch_size=batch_size, shard_id=shard_id,
                         num_shards=num_shards, train=True, seed=order_seed, first_epoch=first_epoch,
                         max_batches=max_batches_per_epoch, repeats=repeats, reads_in_flight=reads_in_flight)
    if mix is not None:
        try:
            mix = mix.with_classes(len(source.classes))
        except V.ArgumentError as exc:
            raise V.ArgumentError("num_classes", f"{exc} found in {str(data_dir)!r}") from None
    schedule = MixSchedule(source, off_epoch=mix_off_epoch) if mix is not None and mix.mixing else None
    layout = "HWC" if channels_last else "CHW"
    body = TrainGraph(crop=crop, device=device, device_id=dev_id, mix=mix, scale=scale, ratio=ratio,
                      flip_prob=flip_prob, dtype=out_dtype, layout=layout, mean=tuple(mean), std=tuple(std),
                      antialias=antialias, erasing=erasing,
                      decoder_options=check_decoder_options(decoder_options, device), policy=policy, jitter=jitter,
                      interpolation=interpolation, erase_before=re_order == "before_mix")
    stock_gpu = device == "gpu" and not body.native
    prefetch = prefetch_depth(prefetch_queue_depth, graph_reads_gpu_shapes=stock_gpu and (
        erasing.prob > 0 or (mix is not None and mix.mixing)),
        why_stock=native.why_unavailable(device, dev_id) if stock_gpu else "")
    # DALI keeps no checkpoints with separate CPU/GPU queues: such a pipeline resumes without its draws.
    checkpointing = not isinstance(prefetch, dict)
    if checkpoint is not None and not checkpointing:
        raise V.ArgumentError("checkpoint", "checkpoint: a pipeline with separate CPU/GPU prefetch queues "
                                            "(prefetch_queue_depth as a dict) keeps no DALI checkpoints; give an int")

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev_id, seed=aug_seed,
                  prefetch_queue_depth=prefetch, enable_checkpointing=checkpointing)
    def graph():
        jpegs, labels = read_samples(source, train=True, seed=aug_seed)
        enabled = None
        if schedule is not None:
            enabled = fn.external_source(source=schedule, batch=True, batch_info=True, dtype=types.BOOL)
        return body(jpegs, labels, enabled)

    pipe = graph(checkpoint=checkpoint) if checkpoint is not None else graph()
    return PipelineSpec(pipeline=pipe, outputs=("images", "targets"), source=source, last_batch="drop",
                        layout=layout, classes=list(source.classes), schedule=schedule, checkpointing=checkpointing,
                        settings=body.describe(), output_dtype=loader_dtype,
                        reader_name=READER if isinstance(source, shards.ShardSource) else None)


def _sizes(batch_size: int, num_threads: int, num_shards: int, shard_id: int) -> tuple[int, int, int]:
    """The checked batch size, thread count and shard count (and shard index) of a builder."""
    batch_size = V.positive_int("batch_size", batch_size)
    num_threads = V.positive_int("num_threads", num_threads)
    num_shards = V.positive_int("num_shards", num_shards)
    V.index_below("shard_id", shard_id, num_shards, "num_shards")
    return batch_size, num_threads, num_shards


def val_pipeline(data_dir: str | os.PathLike, *, batch_size: int, crop: int = 224, resize: int = 256,
                 device: Any = "gpu", num_threads: int = 4, shard_id: int = 0, num_shards: int = 1,
                 device_id: Optional[int] = None, file_list: Optional[str] = None, dtype: str = "float32",
                 channels_last: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, antialias: bool = True, verify_files: bool = True,
                 classes: Optional[Sequence[str]] = None, prefetch_queue_depth: int | dict = 2,
                 allow_outside_root: bool = False, max_batches_per_epoch: Optional[int] = None,
                 interpolation: str = "bilinear", reads_in_flight: Optional[int] = None) -> PipelineSpec:
    """The ImageNet validation pipeline, outputs `("images", "targets")` with int labels, as a `PipelineSpec`.

    Resize the shorter side to `resize` (`interpolation` "bilinear" or "bicubic"), centre-crop `crop`,
    normalise. Shards are contiguous ranges that
    together cover every image exactly once; the last batch is short rather than padded.
    `max_batches_per_epoch` evaluates only the first batches of each shard (smoke runs).
    """
    batch_size, num_threads, num_shards = _sizes(batch_size, num_threads, num_shards, shard_id)
    crop = V.positive_int("crop", crop)
    resize = V.positive_int("resize", resize)
    if crop > resize:
        raise V.ArgumentError("crop", f"crop ({crop}) must not exceed resize ({resize})")
    out_dtype, loader_dtype = graph_dtype(dtype)
    V.one_of("interpolation", interpolation, ("bilinear", "bicubic"))
    device, dev_id = normalize_device(device, device_id)
    prefetch = prefetch_depth(prefetch_queue_depth)
    source = make_source(data_dir, file_list=file_list, verify=verify_files, classes=classes,
                         allow_outside_root=allow_outside_root, batch_size=batch_size, shard_id=shard_id,
                         num_shards=num_shards, train=False, seed=0, first_epoch=0, max_batches=max_batches_per_epoch,
                         reads_in_flight=reads_in_flight)
    layout = "HWC" if channels_last else "CHW"
    decode_device = "mixed" if device == "gpu" else "cpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev_id, seed=0,
                  prefetch_queue_depth=prefetch)
    def graph():
        jpegs, labels = read_samples(source, train=False, seed=0)
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=resize, antialias=antialias,
                           interp_type=types.INTERP_CUBIC if interpolation == "bicubic" else types.INTERP_LINEAR)
        images = normalize_images(images, crop=crop, mirror=0, dtype=out_dtype, layout=layout, mean=mean, std=std)
        return images, (labels.gpu() if device == "gpu" else labels)

    pipe = graph()
    settings = (f"device={device!r}, dtype={dtype!r}, channels_last={channels_last}, crop={crop}, resize={resize}, "
                f"interpolation={interpolation!r}, antialias={antialias}")
    sharded = isinstance(source, shards.ShardSource)
    return PipelineSpec(pipeline=pipe, outputs=("images", "targets"), source=source, last_batch="partial",
                        layout=layout, classes=list(source.classes), settings=settings, output_dtype=loader_dtype,
                        reader_name=READER if sharded else None)
