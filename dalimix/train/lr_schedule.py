"""Learning-rate schedules stepped once per optimizer step, and restoring one at another run's steps per epoch."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch


class _WarmupCosine:
    """lr factor at optimizer step `s`: linear warmup to 1, then cosine decay to `min_ratio`."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: `warmup_steps` of linear warmup from lr/warmup_steps to lr, then cosine to
    `min_lr_ratio * lr` at `total_steps`. Call `.step()` after every optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


class StepSchedule:
    """lr factor at optimizer step `s`: linear warmup, then times `gamma` at each milestone epoch."""

    def __init__(self, steps_per_epoch: int, milestones: Sequence[int], gamma: float, warmup_steps: int = 0):
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        epoch = step // self.steps_per_epoch
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)


def step_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, milestones: Sequence[int], gamma: float,
                  warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup, then the lr times `gamma` at each milestone epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, StepSchedule(steps_per_epoch, milestones, gamma, warmup_steps))


def restore_schedule(scheduler: Any, state: Mapping[str, Any], *, epoch: int, steps_per_epoch: int) -> int:
    """Load a `warmup_cosine` scheduler's checkpointed state at the start of `epoch`, in this run's steps.

    The schedule's shape (total and warmup steps, built from this run's steps per epoch) is `scheduler`'s;
    the base learning rates come from `state`. The position becomes `epoch * steps_per_epoch` and the
    optimizer's lr is set to the schedule's value there, so a run resumed with another batch size or number
    of ranks (other steps per epoch) still ends its last epoch at the end of the cosine. Returns the step
    count stored in `state` (equal to the new position unless the steps per epoch changed).
    """
    if epoch < 0 or steps_per_epoch < 1:
        raise ValueError(f"restore_schedule: need epoch >= 0 and steps_per_epoch >= 1, got {epoch}, {steps_per_epoch}")
    stored = int(state.get("last_epoch", 0))
    step = int(epoch) * int(steps_per_epoch)
    base_lrs = list(state.get("base_lrs", scheduler.base_lrs))
    lrs = [base * lam(step) for lam, base in zip(scheduler.lr_lambdas, base_lrs)]
    # The scheduler's own state_dict format (public load_state_dict), at the new position; the lambdas
    # (the schedule's shape) are this run's, not the checkpoint's.
    sd = dict(scheduler.state_dict(), base_lrs=base_lrs, last_epoch=step, _step_count=step + 1, _last_lr=lrs)
    sd["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(sd)
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    return stored
