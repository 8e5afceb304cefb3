"""Truncated train graphs for the profiler: each stops after one more stage of the ImageNet train graph.

They run the same `TrainGraph` body as `train_pipeline`, stopped early, so timing them side by side splits
the loader's time into read, decode+crop, (resize,) augment and mix without drifting from the real graph.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from nvidia.dali import pipeline_def

from dalimix import native
from dalimix.config import MixConfig
from dalimix.data.shards import ShardSource
from dalimix.ops.erasing import ErasingConfig
from dalimix.ops.policy import parse_color_jitter, parse_policy
from dalimix.pipelines.inputs import READER, make_source, read_samples
from dalimix.pipelines.options import IMAGENET_MEAN, IMAGENET_STD, normalize_device
from dalimix.pipelines.train_graph import STAGES, TrainGraph
from dalimix.spec import PipelineSpec

__all__ = ["stages", "stage_pipeline"]


def stages(device: str = "cpu", device_id: Optional[int] = None, augmenting: bool = False) -> tuple[str, ...]:
    """The stages of the train graph on this device: without a separate resize where it is fused, with
    "policy" (resize, flip and the per-sample policy) where one runs."""
    base = STAGES["native" if native.available(device, device_id) else "stock"]
    return base[:2] + ("policy",) + base[2:] if augmenting else base


def stage_pipeline(data_dir: str | os.PathLike, stage: str, *, batch_size: int, crop: int = 224,
                   device: str = "cpu", num_threads: int = 4, seed: int = 0, mix: Optional[MixConfig] = None,
                   device_id: Optional[int] = None, dtype: str = "float32", auto_augment: Optional[str] = None,
                   color_jitter: Any = None, interpolation: str = "bilinear", re_prob: float = 0.0,
                   re_mode: str = "const", re_order: str = "after_mix") -> PipelineSpec:
    """The train graph up to and including `stage` (one of `stages(device, augmenting=...)`); outputs one
    tensor batch. `data_dir` is a folder tree or tar shards, as for `train_pipeline`; the policy and
    erasing arguments are `train_pipeline`'s (erasing runs in the last stage only)."""
    device, dev = normalize_device(device, device_id)
    policy = parse_policy(auto_augment, mean=IMAGENET_MEAN, interpolation=interpolation)
    jitter = parse_color_jitter(color_jitter)
    allowed = stages(device, dev, augmenting=policy is not None or jitter is not None)
    if stage not in allowed:
        raise ValueError(f"stage must be one of {allowed}, got {stage!r}")
    source = make_source(data_dir, file_list=None, verify=True, classes=None, allow_outside_root=False,
                         batch_size=batch_size, shard_id=0, num_shards=1, train=True, seed=seed, first_epoch=0,
                         max_batches=None)
    mix = (mix or MixConfig()).with_classes(max(len(source.classes), 1))
    body = TrainGraph(crop=crop, device=device, device_id=dev, mix=mix, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      flip_prob=0.5, dtype=dtype, layout="CHW", mean=IMAGENET_MEAN, std=IMAGENET_STD, antialias=False,
                      erasing=ErasingConfig(prob=re_prob, mode=re_mode), policy=policy, jitter=jitter,
                      interpolation=interpolation, erase_before=re_order == "before_mix")

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=dev, seed=seed)
    def graph():
        data, labels = read_samples(source, train=True, seed=seed)
        return body(data, labels, stop=stage)

    return PipelineSpec(pipeline=graph(), outputs=("images", "targets"), source=source, last_batch="drop",
                        layout="CHW", classes=list(source.classes), settings=body.describe(),
                        reader_name=READER if isinstance(source, ShardSource) else None)
