"""What `fit` is told (`FitConfig`) and what a checkpoint gives back (`TrainState`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from dalimix.train.seen import SeenRecorder
from dalimix.train.wait_clock import INPUT_WAIT_THRESHOLD


@dataclass
class FitConfig:
    """How `fit` runs: epochs, where to write, what to print."""

    epochs: int
    output: Optional[str] = None
    amp_dtype: Optional[torch.dtype] = None
    manifold: bool = False                 # the train model is (DDP of) ManifoldMixup
    mix_off_epoch: Optional[int] = None    # manifold mixup off from this epoch on (0-based), as in-loader mixing
    max_grad_norm: Optional[float] = None
    progress: bool = True
    print_freq: int = 10
    run_info: dict[str, Any] = field(default_factory=dict)  # args etc., copied into summary/checkpoints
    first_epoch: int = 0                  # the dataset epoch the train pipeline was built to start at
    plot_title: str = ""
    recorder: Optional[SeenRecorder] = None
    recorder_path: Optional[str] = None
    stop_epoch: Optional[int] = None      # leave after this many epochs are done (the schedule spans `epochs`)
    resumed_from: Optional[str] = None    # the checkpoint file `state` came from (repairs best.pt from it)
    input_wait_threshold: float = INPUT_WAIT_THRESHOLD  # say so (once) when an epoch waits longer for input
    tune_command: Optional[str] = None    # what that line tells users to run (default: made from the loader)
    criterion: Optional[Callable[[Any, Any], Any]] = None  # the training loss (None: soft-target / plain CE)


@dataclass
class TrainState:
    """What a checkpoint restores: the next epoch to run, the history so far, the best result."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1
    wall_time: float = 0.0
    best_ema_top1: float = -1.0            # the weights' moving average (--model-ema), evaluated beside them
    best_ema_epoch: int = -1

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> "TrainState":
        """The state after the epoch `checkpoint` was written at (as `load_checkpoint` returns it)."""
        return cls(epoch=int(checkpoint["epoch"]) + 1, history=[dict(r) for r in checkpoint.get("history", [])],
                   best_top1=float(checkpoint.get("best_top1", -1.0)),
                   best_top5=float(checkpoint.get("best_top5", -1.0)),
                   best_epoch=int(checkpoint.get("best_epoch", -1)), wall_time=float(checkpoint.get("wall_time", 0.0)),
                   best_ema_top1=float(checkpoint.get("best_ema_top1", -1.0)),
                   best_ema_epoch=int(checkpoint.get("best_ema_epoch", -1)))
