"""ImageNet train and val pipelines: decode fused with the random-resized crop, then resample, mix, flip,
normalise and erase (one native operator), or resize + centre crop + normalise for val.

The same graph runs on the GPU (`device="gpu"`: nvJPEG / hardware decoder, GPU augmentation, outputs stay
on the GPU) and on the CPU (`device="cpu"`: `device_id=None`, no CUDA needed). Both builders return a
`dalimix.spec.PipelineSpec`: the DALI pipeline and what `dalimix.DaliLoader` needs to know about it (output
names, file source, last-batch policy, layout, classes, mixing schedule). See docs/DESIGN.md.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dalimix import native, shards
from dalimix import validation as V
from dalimix.config import MixConfig
from dalimix.dataset import Dataset, read_file_list, scan_folder
from dalimix.ops import erasing as erasing_ops
from dalimix.ops.mix import mix as mix_images
from dalimix.ops.mix import mix_draws, native_mix_params
from dalimix.ops.schedule import MixSchedule
from dalimix.ops.targets import smoothed_targets
from dalimix.source import FileSource
from dalimix.spec import PipelineSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEVICES = ("gpu", "cpu")
DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}


def _prefetch(value: Any, *, graph_reads_gpu_shapes: bool = False) -> Any:
    """Check `prefetch_queue_depth`: an int >= 1, or {"cpu_size": n, "gpu_size": m} for separate queues."""
    if isinstance(value, dict):
        if set(value) != {"cpu_size", "gpu_size"} or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value.values()):
            raise V.ArgumentError("prefetch_queue_depth", f"prefetch_queue_depth must be an int >= 1 or a dict "
                                  f"with int 'cpu_size' and 'gpu_size' >= 1, got {value!r}")
        if graph_reads_gpu_shapes:
            # Separate queues switch DALI's dynamic executor off, and without it a GPU graph cannot read its
            # shapes on the CPU, which the stock-operator graph does for mixing and erasing.
            raise V.ArgumentError("prefetch_queue_depth", "prefetch_queue_depth as a dict (separate CPU/GPU queues) "
                                  "cannot be used with mixing or random erasing on the GPU without dalimix's native "
                                  f"operators ({native.why_unavailable('gpu')}); give an int")
        return {k: int(v) for k, v in value.items()}
    return V.positive_int("prefetch_queue_depth", value)


# What `decoder_options` may set on DALI's GPU decoder (nvJPEG / hardware JPEG): the hardware decoder's
# share of the batch, the decoder's memory padding, and buffers preallocated for images of a given size.
DECODER_OPTIONS = ("hw_decoder_load", "device_memory_padding", "host_memory_padding", "device_memory_padding_jpeg2k",
                   "host_memory_padding_jpeg2k", "preallocate_width_hint", "preallocate_height_hint")


def _decoder_options(options: Optional[dict], device: str) -> tuple[tuple[str, Any], ...]:
    if not options:
        return ()
    unknown = sorted(set(options) - set(DECODER_OPTIONS))
    if unknown:
        raise V.ArgumentError("decoder_options", f"decoder_options: unknown {unknown}; expected some of "
                                                 f"{DECODER_OPTIONS}")
    if device != "gpu":
        raise V.ArgumentError("decoder_options", "decoder_options tune the GPU decoder; they apply with device='gpu'")
    return tuple(sorted(options.items()))


def _device_id(device: str, device_id: Optional[int]) -> Optional[int]:
    V.one_of("device", device, DEVICES)
    if device == "cpu":
        return None
    if device_id is not None:
        return int(device_id)
    return int(os.environ.get("LOCAL_RANK", 0))


def _load(data_dir: str | os.PathLike, file_list: Optional[str], verify: bool,
          classes: Optional[Sequence[str]], allow_outside_root: bool = False) -> Dataset:
    if file_list is not None:
        return read_file_list(file_list, data_dir, classes=classes, verify=verify,
                              allow_outside_root=allow_outside_root)
    return scan_folder(data_dir, verify=verify, classes=classes)


def _seeds(seed: Optional[int], shard_id: int, num_shards: int) -> tuple[int, int]:
    """(order seed shared by all shards, augmentation seed distinct per shard)."""
    if seed is None:
        # Shards must agree on the order or they would overlap; augmentation may differ freely.
        order_seed = 0 if num_shards > 1 else random.SystemRandom().randrange(2 ** 31)
        return order_seed, random.SystemRandom().randrange(2 ** 31)
    V.optional_epoch("seed", seed)  # None or an int >= 0
    return int(seed), (int(seed) * 1_000_003 + shard_id * 7919 + 1) % (2 ** 31)


def normalize_images(images: Any, *, crop: Optional[int], mirror: Any, dtype: str, layout: str,
                     mean: Sequence[float], std: Sequence[float]) -> Any:
    V.one_of("dtype", dtype, tuple(DTYPES))
    return fn.crop_mirror_normalize(
        images, dtype=DTYPES[dtype], output_layout=layout, crop=(crop, crop) if crop else None,
        mean=[m * 255 for m in mean], std=[s * 255 for s in std], mirror=mirror)


READER = "Reader"  # the name of the webdataset reader of shard pipelines (DaliLoader asks it for the epoch)


def make_source(data_dir: str | os.PathLike, *, file_list: Optional[str], verify: bool,
            classes: Optional[Sequence[str]], allow_outside_root: bool, batch_size: int, shard_id: int,
            num_shards: int, train: bool, seed: int, first_epoch: int, max_batches: Optional[int]) -> Any:
    """The file source of a pipeline: a `FileSource` over a folder tree or file list, or a `ShardSource`
    over tar shards (a brace pattern, a folder of .tar files or one .tar)."""
    if file_list is None and shards.is_shard_spec(data_dir):
        if max_batches is not None:
            raise V.ArgumentError("max_batches_per_epoch", "max_batches_per_epoch works with folder datasets only: "
                                  "the webdataset reader of tar shards decides where an epoch ends")
        indexes = shards.index_shards(shards.resolve_shards(data_dir), verify=verify)
        names = shards.read_classes([ix.shard for ix in indexes], [l for ix in indexes for l in ix.labels], classes)
        return shards.ShardSource(indexes, names, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards,
                                  drop_last=train, start_epoch=first_epoch)
    dataset = _load(data_dir, file_list, verify, classes, allow_outside_root)
    source = FileSource(dataset.files, dataset.labels, batch_size=batch_size, shard_id=shard_id,
                        num_shards=num_shards, shuffle=train, seed=seed, drop_last=train, start_epoch=first_epoch,
                        max_batches=max_batches, classes=dataset.classes)
    return source


def read_samples(source: Any, *, train: bool, seed: int) -> tuple[Any, Any]:
    """(encoded images, int labels) inside a graph: from the file source, or DALI's webdataset reader."""
    if not isinstance(source, shards.ShardSource):
        return fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                  dtype=[types.UINT8, types.INT32])
    jpegs, cls = fn.readers.webdataset(
        paths=source.paths, index_paths=source.index_paths, ext=[";".join(shards.IMAGE_EXTS), shards.LABEL_EXT],
        case_sensitive_extensions=False, missing_component_behavior="error", shard_id=source.shard_id,
        num_shards=source.num_shards, pad_last_batch=True, random_shuffle=train,
        initial_fill=max(1, min(4096, source.samples_per_shard)), seed=seed, name=READER)
    if native.available("cpu"):
        return jpegs, fn.dalimix.parse_label(cls)
    return jpegs, fn.python_function(cls, function=shards.parse_label, batch_processing=False)


# Where a truncated train graph stops (the profiler's stage breakdown). The native path has no separate
# resize: "augment" is the fused resample + flip + normalise, "mix" adds mixing to it.
STAGES = {"native": ("read", "decode", "augment", "mix"), "stock": ("read", "decode", "resize", "augment", "mix")}


@dataclass(frozen=True)
class TrainGraph:
    """The body of the ImageNet train graph, from encoded files to (images, targets).

    One definition serves `train_pipeline` and the profiler's truncated stage graphs, so they cannot drift.
    With dalimix's native plugin, decode is followed by one fused operator (resample the random-resized
    crop, mix, flip, normalise, erase); without it, by stock DALI operators doing the same.
    """

    crop: int
    device: str
    device_id: Optional[int]
    mix: Optional[MixConfig]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float
    dtype: str
    layout: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    antialias: bool
    erasing: erasing_ops.ErasingConfig
    decoder_options: tuple[tuple[str, Any], ...] = ()  # extra arguments of the GPU (mixed) decoder

    @property
    def native(self) -> bool:
        return native.available(self.device, self.device_id)

    def describe(self) -> str:
        """The settings a failure may come from, by their `train_pipeline` names."""
        mixing = f"mix={self.mix.mode} mixup_alpha={self.mix.mixup_alpha} cutmix_alpha={self.mix.cutmix_alpha}" \
            if self.mix is not None and self.mix.mixing else "mix=off"
        erase = f"re_prob={self.erasing.prob} re_mode={self.erasing.mode!r} re_count={self.erasing.count}" \
            if self.erasing.prob > 0 else "re_prob=0"
        path = "dalimix native operators" if self.native else \
            f"stock DALI operators ({native.why_unavailable(self.device)})"
        return (f"device={self.device!r}, dtype={self.dtype!r}, channels_last={self.layout == 'HWC'}, crop={self.crop}, "
                f"antialias={self.antialias}, {mixing}, {erase}; {path}")

    def __call__(self, jpegs: Any, labels: Any, enabled: Any = None, stop: Optional[str] = None) -> tuple[Any, Any]:
        if stop == "read":
            return jpegs, labels
        images = fn.decoders.image_random_crop(
            jpegs, device="mixed" if self.device == "gpu" else "cpu", output_type=types.RGB,
            random_area=list(self.scale), random_aspect_ratio=list(self.ratio), num_attempts=10,
            **dict(self.decoder_options))
        if stop == "decode":
            return images, labels
        mixing = self.mix is not None and self.mix.mixing and stop in (None, "mix")
        if enabled is None and mixing:
            enabled = fn.cast(fn.cast(labels, dtype=types.FLOAT) * 0.0 + 1.0, dtype=types.BOOL)
        body = self._native if self.native else self._stock
        images, targets = body(images, labels, enabled, mixing, stop)
        return images, (targets.gpu() if self.device == "gpu" else targets)

    def _targets(self, labels: Any) -> Any:
        if self.mix is not None and self.mix.soft_targets:
            return smoothed_targets(labels, self.mix.num_classes, self.mix.label_smoothing)
        return labels

    def _mirror(self) -> Any:
        return fn.random.coin_flip(probability=self.flip_prob) if self.flip_prob > 0 else None

    def _native(self, images: Any, labels: Any, enabled: Any, mixing: bool, stop: Optional[str]) -> tuple[Any, Any]:
        size = [self.crop, self.crop]
        args: dict[str, Any] = dict(size=size, antialias=self.antialias, mean=[m * 255 for m in self.mean],
                                    std=[s * 255 for s in self.std], dtype=DTYPES[self.dtype],
                                    output_layout=self.layout, device=self.device)
        mirror = self._mirror()
        if mirror is not None:
            args["mirror"] = mirror
        if mixing:
            partner, kind, lam, box, targets = native_mix_params(self.mix, labels, mix_draws(self.mix, labels),
                                                                 enabled, size=(self.crop, self.crop))
            args.update(partner=partner, kind=kind, weight=lam, box=box)
        else:
            targets = self._targets(labels)
        if self.erasing.prob > 0 and stop is None:
            cfg = self.erasing
            apply = fn.random.coin_flip(probability=cfg.prob, dtype=types.BOOL)
            uniforms = fn.random.uniform(range=[0.0, 1.0], shape=[1 + 4 * erasing_ops.ATTEMPTS * cfg.count])
            args.update(erase=fn.dalimix.erase_params(apply, uniforms, count=cfg.count, size=size),
                        erase_mode=erasing_ops.MODES.index(cfg.mode),
                        erase_seed=fn.random.uniform(range=[0, 2 ** 31 - 1], dtype=types.INT32))
        return fn.dalimix.resample_mix(images, **args), targets

    def _stock(self, images: Any, labels: Any, enabled: Any, mixing: bool, stop: Optional[str]) -> tuple[Any, Any]:
        images = fn.resize(images, resize_x=self.crop, resize_y=self.crop, interp_type=types.INTERP_LINEAR,
                           antialias=self.antialias)
        if stop == "resize":
            return images, labels
        mirror = self._mirror()

        def finish(branch: Any, take: Any) -> Any:
            # Flip and normalise per branch, so mixup blends stay float (no rounding, no uint8 cast).
            return normalize_images(branch, crop=None, mirror=take(mirror) if mirror is not None else 0,
                                    dtype=self.dtype, layout=self.layout, mean=self.mean, std=self.std)

        if mixing:
            images, targets = mix_images(images, labels, self.mix, layout="HWC", enabled=enabled, finish=finish)
        else:
            images, targets = finish(images, lambda node: node), self._targets(labels)
        if self.erasing.prob > 0 and stop is None:
            images = erasing_ops.random_erasing(images, self.erasing, layout=self.layout, dtype=self.dtype)
        return images, targets


def train_pipeline(data_dir: str | os.PathLike, *, batch_size: int, crop: int = 224, device: str = "gpu",
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
                   decoder_options: Optional[dict] = None) -> PipelineSpec:
    """The ImageNet training pipeline, outputs `("images", "targets")`, as a `PipelineSpec`.

    Decode is fused with the random-resized crop (`scale`, `ratio`), then resample to `crop`, optional
    mixup / CutMix (`mix`), random flip, normalisation to `dtype` CHW (HWC with `channels_last`) and
    optional random erasing. Each epoch is a seeded shuffle, sharded so every shard yields the same number
    of full batches; the last partial batch is dropped. `mix_off_epoch` turns mixing off from that epoch on
    (the schedule is a per-iteration input: `DaliLoader.set_mix` changes it between epochs).
    `first_epoch` is the dataset epoch the pipeline starts at. `checkpoint` (from `DaliLoader.checkpoint()`)
    restores the augmentation state of a run: pass the `first_epoch` that run's pipeline was built with, as
    DALI restores its own epoch count. `max_batches_per_epoch` shortens every epoch (smoke runs).
    `decoder_options` go to DALI's GPU decoder (see `DECODER_OPTIONS`; `dalimix-profile --tune` finds them).
    """
    batch_size = V.positive_int("batch_size", batch_size)
    crop = V.positive_int("crop", crop)
    num_threads = V.positive_int("num_threads", num_threads)
    num_shards = V.positive_int("num_shards", num_shards)
    V.index_below("shard_id", shard_id, num_shards, "num_shards")
    scale = V.range_pair("scale", scale)
    if scale[1] > 1.0:
        raise V.ArgumentError("scale", f"scale must lie in (0, 1], got {scale!r}")
    ratio = V.range_pair("ratio", ratio)
    V.probability("flip_prob", flip_prob)
    if mix is not None and not isinstance(mix, MixConfig):
        raise V.ArgumentError("mix", f"mix must be None or a dalimix.MixConfig, got {type(mix).__name__}")
    V.one_of("dtype", dtype, tuple(DTYPES))
    erasing = erasing_ops.ErasingConfig(prob=re_prob, mode=re_mode, count=re_count)
    V.optional_epoch("mix_off_epoch", mix_off_epoch)
    V.optional_epoch("first_epoch", first_epoch)
    dev_id = _device_id(device, device_id)
    order_seed, aug_seed = _seeds(seed, shard_id, num_shards)

    source = make_source(data_dir, file_list=file_list, verify=verify_files, classes=classes,
                     allow_outside_root=allow_outside_root, batch_size=batch_size, shard_id=shard_id,
                     num_shards=num_shards, train=True, seed=order_seed, first_epoch=first_epoch,
                     max_batches=max_batches_per_epoch)
    if mix is not None and mix.num_classes < len(source.classes):
        raise V.ArgumentError("num_classes", f"mix.num_classes={mix.num_classes} is smaller than the "
                                             f"{len(source.classes)} classes found in {str(data_dir)!r}")
    schedule = MixSchedule(source, off_epoch=mix_off_epoch) if mix is not None and mix.mixing else None
    layout = "HWC" if channels_last else "CHW"
    body = TrainGraph(crop=crop, device=device, device_id=dev_id, mix=mix, scale=scale, ratio=ratio,
                      flip_prob=flip_prob, dtype=dtype, layout=layout, mean=tuple(mean), std=tuple(std),
                      antialias=antialias, erasing=erasing,
                      decoder_options=_decoder_options(decoder_options, device))
    prefetch_queue_depth = _prefetch(prefetch_queue_depth, graph_reads_gpu_shapes=device == "gpu" and not body.native
                                     and (erasing.prob > 0 or (mix is not None and mix.mixing)))

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev_id, seed=aug_seed,
                  prefetch_queue_depth=prefetch_queue_depth, enable_checkpointing=True)
    def graph():
        jpegs, labels = read_samples(source, train=True, seed=aug_seed)
        enabled = None
        if schedule is not None:
            enabled = fn.external_source(source=schedule, batch=True, batch_info=True, dtype=types.BOOL)
        return body(jpegs, labels, enabled)

    pipe = graph(checkpoint=checkpoint) if checkpoint is not None else graph()
    return PipelineSpec(pipeline=pipe, outputs=("images", "targets"), source=source, last_batch="drop",
                        layout=layout, classes=list(source.classes), schedule=schedule, checkpointing=True,
                        settings=body.describe(), reader_name=READER if isinstance(source, shards.ShardSource) else None)


def val_pipeline(data_dir: str | os.PathLike, *, batch_size: int, crop: int = 224, resize: int = 256,
                 device: str = "gpu", num_threads: int = 4, shard_id: int = 0, num_shards: int = 1,
                 device_id: Optional[int] = None, file_list: Optional[str] = None, dtype: str = "float32",
                 channels_last: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, antialias: bool = True, verify_files: bool = True,
                 classes: Optional[Sequence[str]] = None, prefetch_queue_depth: int | dict = 2,
                 allow_outside_root: bool = False, max_batches_per_epoch: Optional[int] = None) -> PipelineSpec:
    """The ImageNet validation pipeline, outputs `("images", "targets")` with int labels, as a `PipelineSpec`.

    Resize the shorter side to `resize`, centre-crop `crop`, normalise. Shards are contiguous ranges that
    together cover every image exactly once; the last batch is short rather than padded.
    `max_batches_per_epoch` evaluates only the first batches of each shard (smoke runs).
    """
    batch_size = V.positive_int("batch_size", batch_size)
    crop = V.positive_int("crop", crop)
    resize = V.positive_int("resize", resize)
    num_threads = V.positive_int("num_threads", num_threads)
    num_shards = V.positive_int("num_shards", num_shards)
    if crop > resize:
        raise V.ArgumentError("crop", f"crop ({crop}) must not exceed resize ({resize})")
    V.index_below("shard_id", shard_id, num_shards, "num_shards")
    V.one_of("dtype", dtype, tuple(DTYPES))
    dev_id = _device_id(device, device_id)
    prefetch_queue_depth = _prefetch(prefetch_queue_depth)
    source = make_source(data_dir, file_list=file_list, verify=verify_files, classes=classes,
                     allow_outside_root=allow_outside_root, batch_size=batch_size, shard_id=shard_id,
                     num_shards=num_shards, train=False, seed=0, first_epoch=0, max_batches=max_batches_per_epoch)
    layout = "HWC" if channels_last else "CHW"
    decode_device = "mixed" if device == "gpu" else "cpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev_id, seed=0,
                  prefetch_queue_depth=prefetch_queue_depth)
    def graph():
        jpegs, labels = read_samples(source, train=False, seed=0)
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=resize, interp_type=types.INTERP_LINEAR, antialias=antialias)
        images = normalize_images(images, crop=crop, mirror=0, dtype=dtype, layout=layout, mean=mean, std=std)
        return images, (labels.gpu() if device == "gpu" else labels)

    pipe = graph()
    settings = (f"device={device!r}, dtype={dtype!r}, channels_last={channels_last}, crop={crop}, resize={resize}, "
                f"antialias={antialias}")
    sharded = isinstance(source, shards.ShardSource)
    return PipelineSpec(pipeline=pipe, outputs=("images", "targets"), source=source, last_batch="partial",
                        layout=layout, classes=list(source.classes), settings=settings,
                        reader_name=READER if sharded else None)
