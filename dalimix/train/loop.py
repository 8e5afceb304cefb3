"""One epoch of training over any iterable of `(images, targets)` batches, summed over ranks."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dalimix.losses import SoftTargetCrossEntropy
from dalimix.train.distributed import DistContext
from dalimix.train.metrics import logits_of
from dalimix.train.progress import progress_bar, sync
from dalimix.train.seen import SeenRecorder
from dalimix.train.wait_clock import WaitClock


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *, ctx: DistContext,
                    epoch: int = 0, epochs: Optional[int] = None, scheduler: Any = None, scaler: Any = None,
                    amp_dtype: Optional[torch.dtype] = None, manifold: bool = False,
                    max_grad_norm: Optional[float] = None, progress: bool = True, print_freq: int = 10,
                    recorder: Optional[SeenRecorder] = None,
                    after_step: Optional[Callable[[], None]] = None,
                    criterion: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
                    ) -> dict[str, float]:
    """Train `model` for one pass over `loader`; return loss, images, time, images/s and lr, summed over ranks,
    and how long training waited for its input.

    Targets may be int labels (cross-entropy) or float soft targets `[N, K]` (SoftTargetCrossEntropy), or go
    to `criterion(logits, targets)` where one is given (e.g. `BinarySoftTargetCrossEntropy`). With
    `manifold`, `model` is (or DDP-wraps) a `ManifoldMixup` and is called as `model(x, targets)`, returning
    `(logits, mixed_targets)`. The scheduler is stepped after every optimizer step, then `after_step` called
    (the weights' moving average). `scaler` is a
    `torch.amp.GradScaler` (or None); `amp_dtype` turns on autocast with that dtype.

    Input wait (each rank, from its second batch on; see `WaitClock`): `input_wait` is the mean over ranks of
    the share of training time spent waiting for the next batch (on CUDA the GPU's idle time between steps,
    from CUDA events, no added synchronisation; on the CPU the time inside the loader's `next`),
    `input_wait_max` / `input_wait_rank` the worst rank, `input_wait_host` the mean share of host time inside
    `next`, `first_batch_wait` the mean seconds until the first batch (pipeline build, refill).
    """
    model.train()
    device = ctx.device
    total = len(loader) if hasattr(loader, "__len__") else None
    show = progress and ctx.is_main
    desc = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "") + " train"
    sums = _Sums(device)
    lr = optimizer.param_groups[0]["lr"]
    clock = WaitClock(device)
    sync(device)
    t0 = time.perf_counter()
    bar = progress_bar(clock.batches_of(loader), total=total, desc=desc, enabled=show)
    for step, (images, targets) in enumerate(bar):
        if recorder is not None:
            recorder.record("train", epoch, step, loader, targets)
        n = images.shape[0]
        if n == 0:
            continue
        clock.step_start()
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if manifold:
                out, targets = model(images, targets)
            else:
                out = model(images)
            logits = logits_of(out)
        loss = (criterion or _default_loss)(logits, targets)
        _backward(loss, model, optimizer, scaler, max_grad_norm)
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        detached = sums.add(loss, n)
        clock.step_end()
        if print_freq > 0 and sums.steps % print_freq == 0:
            # One host sync every print_freq steps: progress, and an early stop when training diverged.
            current = float(detached)
            if not math.isfinite(current) and (scaler is None or not scaler.is_enabled()):
                raise FloatingPointError(f"training loss is {current} at epoch {epoch + 1}, step {step + 1} "
                                         f"(lr {lr:.4g}); lower --lr or check the data")
            if show:
                wait = clock.share()  # the loss read above synchronised the host with the GPU
                bar.set_postfix(loss=f"{current:.4f}", lr=f"{lr:.4g}",
                                wait="-" if math.isnan(wait) else f"{wait:.0%}", refresh=False)
    sync(device)
    end = time.perf_counter()
    return _epoch_result(sums, clock, ctx, elapsed=end - t0, end=end, lr=lr, epoch=epoch,
                         amp=scaler is not None and scaler.is_enabled())


_SOFT_LOSS = SoftTargetCrossEntropy()


def _default_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy on float targets, cross-entropy on int labels."""
    return _SOFT_LOSS(logits, targets) if targets.is_floating_point() else F.cross_entropy(logits.float(), targets)


class _Sums:
    """Running sums of one rank's epoch, on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.seen = torch.zeros((), dtype=torch.float64, device=device)
        self.bad = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """Count a step of `n` samples; a non-finite loss counts as a bad step, not into the mean."""
        detached = loss.detach().double()
        finite = torch.isfinite(detached)
        self.loss += torch.where(finite, detached * n, torch.zeros_like(detached))
        self.seen += torch.where(finite, torch.full_like(detached, n), torch.zeros_like(detached))
        self.bad += (~finite).long()
        self.steps += 1
        return detached


def _backward(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
              max_grad_norm: Optional[float]) -> None:
    """Backward pass and optimizer step, through the AMP scaler when one is on, clipping when asked."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if max_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()


def _epoch_result(sums: _Sums, clock: WaitClock, ctx: DistContext, *, elapsed: float, end: float, lr: float,
                  epoch: int, amp: bool) -> dict[str, Any]:
    """The epoch's figures summed (or averaged) over ranks; raises when training diverged."""
    share, host_share = clock.share(final=True), clock.host_share(end)
    # Each rank's wait share in its own slot of the sum, so that every rank learns the worst one.
    slots = [0.0] * ctx.world_size
    slots[ctx.rank] = share
    totals = ctx.all_reduce_sum([float(sums.loss), float(sums.seen), float(sums.bad), float(sums.steps), elapsed,
                                 host_share, clock.first_wait, *slots])
    loss_total, images_total, bad_total, steps_total = (float(v) for v in totals[:4])
    wall = float(totals[4]) / ctx.world_size  # mean over ranks
    shares = [float(v) for v in totals[7:]]
    worst = max(range(len(shares)), key=lambda r: -1.0 if math.isnan(shares[r]) else shares[r])
    if bad_total and (not amp or bad_total >= steps_total):
        raise FloatingPointError(f"training loss was non-finite in {int(bad_total)} of {int(steps_total)} steps of "
                                 f"epoch {epoch + 1}; lower --lr or check the data")
    # Images count every sample fed to the model (non-finite AMP steps included) for the throughput.
    fed = images_total + bad_total * (images_total / max(1.0, steps_total - bad_total))
    return {
        "train_loss": loss_total / images_total if images_total else float("nan"),
        "train_images": fed,
        "train_time": wall,
        "images_per_sec": fed / wall if wall > 0 else float("nan"),
        "lr": float(lr),
        "train_steps": steps_total / ctx.world_size,
        "input_wait": float(np.mean(shares)),
        "input_wait_max": shares[worst],
        "input_wait_rank": worst,
        "input_wait_host": float(totals[5]) / ctx.world_size,
        "first_batch_wait": float(totals[6]) / ctx.world_size,
        "input_wait_method": "gpu_idle" if ctx.device.type == "cuda" else "host",
    }
