"""The declared contract between a dalimix pipeline builder and `DaliLoader`.

`train_pipeline` and `val_pipeline` return a `PipelineSpec`: the DALI pipeline together with what a loader
must know about it and cannot ask DALI (whose file source, how the last batch is treated, the layout, the
classes, the mixing schedule). Nothing is attached to DALI's `Pipeline` object. A user's own DALI pipeline
is passed to `DaliLoader` bare, with the same facts as arguments. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from dalimix.ops.schedule import MixSchedule

LAST_BATCH = ("drop", "partial", "fill")
LAYOUTS = ("CHW", "HWC")


@dataclass(frozen=True)
class PipelineSpec:
    """A DALI pipeline built by dalimix and the facts its loader needs.

    pipeline: the DALI `Pipeline` (not built yet; `DaliLoader` builds it).
    outputs: names of the pipeline's outputs, images first (`("images", "targets")`).
    source: the file source feeding it (epoch length, shard, which file sits in which batch).
    last_batch: "drop" (train: only full batches) or "partial" (val: a short last batch, never padded).
    layout: "CHW", or "HWC" for channels_last images.
    classes: class names, index = label.
    schedule: the per-epoch mixing switch (train pipelines with mixing), else None.
    reader_name: the DALI reader that defines the epoch (tar shards), else None (dalimix's file source).
    checkpointing: whether the pipeline keeps DALI checkpoints (`DaliLoader.checkpoint()`).
    settings: the builder's settings in words, for error messages.
    output_dtype: "bfloat16" where the loader converts the images (DALI writes no bfloat16), else None.
    """

    pipeline: Any
    outputs: tuple[str, ...]
    source: Any  # FileSource, or dalimix.data.shards.ShardSource for tar shards
    last_batch: str
    layout: str
    classes: list[str]
    schedule: Optional[MixSchedule] = None
    checkpointing: bool = False
    settings: str = ""
    reader_name: Optional[str] = None
    output_dtype: Optional[str] = None  # images converted by the loader to this dtype (DALI does not write it)

    def __post_init__(self) -> None:
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {LAST_BATCH}, got {self.last_batch!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs must be unique names, images first, got {self.outputs!r}")

    @property
    def batches_per_epoch(self) -> int:
        """Batches of one epoch on every shard (short val shards are padded with empty batches)."""
        return self.source.batches_per_epoch
