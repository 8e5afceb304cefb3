"""Training: the epoch loop, evaluation, checkpoints, the LR schedule, the input-wait clock, outputs and
their repair, resume, torchrun helpers, and the run builder that composes them with the loaders.

The engine works on any iterable of `(images, targets)` batches (a `dalimix.DaliLoader` in the scripts), with
int or soft targets, a plain, `ManifoldMixup`-wrapped or DDP-wrapped model, optional AMP, and a
`DistContext` so that losses, correct counts and sample counts are summed over ranks and only rank 0 shows
progress bars and writes files. Checkpoints hold plain data only and load with
`torch.load(weights_only=True)`: loading one never runs code. Where each piece lives: docs/DESIGN.md.

This package also answers to the old name `dalimix.engine` (until dalimix 0.3): the names below are the
ones that module had.
"""
from __future__ import annotations

from dalimix.train.checkpoint import (CHECKPOINT_VERSION, CheckpointError, checkpoint_epoch, convert_checkpoint,
                                      dali_checkpoint, load_checkpoint, save_checkpoint)
from dalimix.train.evaluate import evaluate
from dalimix.train.fit import fit
from dalimix.train.loop import train_one_epoch
from dalimix.train.lr_schedule import StepSchedule, restore_schedule, step_schedule, warmup_cosine
from dalimix.train.metrics import accuracy_counts, logits_of
from dalimix.train.models import unwrap
from dalimix.train.optim import param_groups
from dalimix.train.outputs import OUTPUT_FILES, repair_outputs
from dalimix.train.rng import rng_state, set_rng_state
from dalimix.train.seen import SeenRecorder
from dalimix.train.state import FitConfig, TrainState
from dalimix.train.wait_clock import INPUT_WAIT_THRESHOLD, WaitClock, input_wait_advice

__all__ = [
    "param_groups", "warmup_cosine", "step_schedule", "StepSchedule", "unwrap", "accuracy_counts", "logits_of",
    "train_one_epoch", "evaluate", "rng_state", "set_rng_state", "dali_checkpoint", "save_checkpoint",
    "load_checkpoint", "convert_checkpoint", "checkpoint_epoch", "CheckpointError", "CHECKPOINT_VERSION",
    "restore_schedule", "repair_outputs", "OUTPUT_FILES", "SeenRecorder", "FitConfig", "TrainState", "fit",
    "INPUT_WAIT_THRESHOLD", "WaitClock", "input_wait_advice",
]
