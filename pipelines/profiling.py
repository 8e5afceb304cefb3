"""Truncated train graphs for the profiler: each stops after one more stage of the ImageNet train pipeline.

Timing them side by side splits the loader's time into read, decode+crop, resize, normalise and mix.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from nvidia.dali import fn, pipeline_def, types

from dalimix.config import MixConfig
from dalimix.dataset import scan_folder
from dalimix.ops.mix import mix as mix_images
from dalimix.source import FileSource
from pipelines.imagenet import IMAGENET_MEAN, IMAGENET_STD, normalize_images

STAGES = ("read", "decode", "resize", "normalize", "mix")


def stage_pipeline(data_dir: str | os.PathLike, stage: str, *, batch_size: int, crop: int = 224,
                   device: str = "cpu", num_threads: int = 4, seed: int = 0, mix: Optional[MixConfig] = None,
                   device_id: Optional[int] = None, dtype: str = "float16") -> Any:
    """The train graph up to and including `stage` (one of STAGES); outputs one tensor batch."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    dataset = scan_folder(data_dir)
    source = FileSource(dataset.files, dataset.labels, batch_size=batch_size, seed=seed)
    dev = None if device == "cpu" else (device_id if device_id is not None else int(os.environ.get("LOCAL_RANK", 0)))
    cfg = mix or MixConfig(num_classes=max(dataset.num_classes, 1))

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev, seed=seed)
    def graph():
        data, labels = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                          dtype=[types.UINT8, types.INT32])
        if stage == "read":
            return data, labels
        images = fn.decoders.image_random_crop(data, device="cpu" if device == "cpu" else "mixed",
                                               output_type=types.RGB)
        if stage == "decode":
            return images, labels
        images = fn.resize(images, resize_x=crop, resize_y=crop, interp_type=types.INTERP_LINEAR, antialias=False)
        if stage == "resize":
            return images, labels
        mirror = fn.random.coin_flip()

        def finish(branch: Any, take: Any) -> Any:
            return normalize_images(branch, crop=None, mirror=take(mirror), dtype=dtype, layout="CHW",
                                    mean=IMAGENET_MEAN, std=IMAGENET_STD)

        if stage == "mix":
            images, _ = mix_images(images, labels, cfg, layout="HWC", finish=finish)
        else:
            images = finish(images, lambda node: node)
        return images, labels

    pipe = graph()
    pipe.dalimix_source = source
    return pipe
