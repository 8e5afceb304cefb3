"""A small training engine: one epoch of training, top-1/top-5 evaluation, checkpoints, the epoch loop.

It works on any iterable of `(images, targets)` batches (a `dalimix.DaliLoader` in the scripts), with
int or soft targets, a plain, `ManifoldMixup`-wrapped or DDP-wrapped model, optional AMP, and a
`dalimix.distributed.DistContext` so that losses, correct counts and sample counts are summed over ranks
and only rank 0 shows progress bars and writes files. It never imports `pipelines` (see docs/DESIGN.md); what it
knows about DALI is the pipeline checkpoint that makes a resumed run draw the same augmentations.

Every epoch also measures how long training waited for its input (`input_wait`: the share of training time
each rank spent waiting for its next batch; on CUDA the GPU's idle time between steps, read from CUDA events
without adding synchronisation), shows it on the progress bar, logs it, and says once per run, pointing at
`dalimix-profile --tune`, when it exceeds `FitConfig.input_wait_threshold` (10%).

Output of `fit` (rank 0, in `output`): `metrics.jsonl` (a line per epoch), `summary.json`, `checkpoint.pt`
(latest, every epoch), `best.pt` (best val top-1) and `curves.png`. Every file is written to a tmp name and
renamed, the checkpoint first; a resumed `fit` repairs whatever a crash between two writes left behind.
Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts, bytes) and load with
`torch.load(weights_only=True)`: loading one never runs code.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dalimix.atomic_files import fsync_file, json_safe, write_text
from dalimix.distributed import DistContext
from dalimix.losses import SoftTargetCrossEntropy

__all__ = [
    "param_groups", "warmup_cosine", "unwrap", "accuracy_counts", "train_one_epoch", "evaluate",
    "rng_state", "set_rng_state", "dali_checkpoint", "save_checkpoint",
    "load_checkpoint", "convert_checkpoint", "checkpoint_epoch", "CheckpointError", "restore_schedule",
    "repair_outputs", "OUTPUT_FILES", "SeenRecorder", "FitConfig", "TrainState", "fit", "INPUT_WAIT_THRESHOLD",
    "input_wait_advice",
]

CHECKPOINT_VERSION = 2  # 2: plain data only (loads with weights_only=True)


# -- optimisation ------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Optimizer groups: weight decay on weights, none on biases and norm scales (1-D parameters).

    With `decay_norm_and_bias` every trainable parameter is decayed (torchvision's default recipe).
    """
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP and/or ManifoldMixup (what checkpoints store and evaluation runs)."""
    from dalimix.manifold import ManifoldMixup

    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, ManifoldMixup):
            model = model.model
        else:
            return model


def _logits(out: Any) -> torch.Tensor:
    """Logits from a model output (tensor, or e.g. torchvision's InceptionOutputs / GoogLeNetOutputs)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a logits tensor [N, num_classes]")


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """How many rows have their label among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return [hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


# -- progress ----------------------------------------------------------------------------------------------
def _bar(iterable: Iterable, *, total: Optional[int], desc: str, enabled: bool) -> Any:
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True,
                unit="batch", file=sys.stderr, mininterval=0.5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- input wait --------------------------------------------------------------------------------------------
INPUT_WAIT_THRESHOLD = 0.10  # share of training time spent waiting for batches above which `fit` says so


class _WaitClock:
    """How long one rank's training waits for its next batch, over one epoch.

    Host: the seconds spent inside the loader's `next` (no synchronisation: on the CPU the step is synchronous,
    so this is the whole story). CUDA: the GPU's idle time between steps, from two CUDA events per step, one
    after the step's last kernel was queued, one after `next` returned, before the batch's first use: when the
    host queued step k+1 before the GPU finished step k the gap is ~0, otherwise it is exactly the time the GPU
    sat idle for want of a batch (the DALI output copy included, as it runs on the model's stream). No host
    synchronisation is added: events are read once they have completed (checked with a non-blocking query each
    step, and all of them after the epoch's closing synchronisation); the cost is two event records per step
    (microseconds). The first batch of the epoch is kept apart (`first_wait`): it holds one-time costs (the
    pipeline build in the first epoch, the refill after an epoch boundary) that say little about steady state.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.batches = 0
        self.first_wait = 0.0              # seconds until the first batch arrived
        self.host_wait = 0.0               # seconds in `next` for the later batches
        self.t_first: Optional[float] = None
        self.gap_ms = 0.0                  # GPU idle between steps (later steps only)
        self._pending: list[tuple[Any, Any]] = []  # (end of step k, start of step k+1), not yet read
        self._end_first: Any = None        # the end of the first step
        self._end_last: Any = None         # the end of the latest step
        self._read_until: Any = None       # the latest start-of-step event whose gap was read

    def batches_of(self, loader: Iterable) -> Iterator[Any]:
        """Iterate `loader`, timing each `next`."""
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            if self.batches == 0:
                self.first_wait, self.t_first = now - t, now
            else:
                self.host_wait += now - t
            self.batches += 1
            yield batch

    def step_start(self) -> None:
        """Call after the batch arrived, before the step queues any work on the GPU."""
        if self.cuda and self._end_last is not None:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._pending.append((self._end_last, start))

    def step_end(self) -> None:
        """Call after the step's last GPU work was queued."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if self._end_first is None:
                self._end_first = end
            self._end_last = end
            self._read(everything=False)

    def _read(self, everything: bool) -> None:
        """Add up the gaps whose events completed (all of them with `everything`: after a synchronisation)."""
        done = 0
        for end, start in self._pending:
            if not everything and not start.query():  # `end` precedes `start` on the stream
                break
            self.gap_ms += end.elapsed_time(start)
            self._read_until = start
            done += 1
        del self._pending[:done]

    def share(self, final: bool = False) -> float:
        """The share of the time since the first batch spent waiting for the later ones (nan before the
        second batch). CUDA: the GPU's idle share, from the events completed so far (with `final`, after the
        epoch's synchronisation: all of them, up to the end of the last step); otherwise the host's share in
        `next`."""
        if not self.cuda:
            return self.host_share(time.perf_counter())
        self._read(everything=final)
        until = self._end_last if final else self._read_until
        if self._end_first is None or until is None or until is self._end_first:
            return float("nan")
        span = self._end_first.elapsed_time(until)
        return min(1.0, self.gap_ms / span) if span > 0 else float("nan")

    def host_share(self, end: float) -> float:
        """The host's share of the time from the first batch to `end` (perf_counter) spent in `next`."""
        if self.t_first is None or self.batches < 2 or end <= self.t_first:
            return float("nan")
        return min(1.0, self.host_wait / (end - self.t_first))


def input_wait_advice(share: float, *, where: str = "", command: Optional[str] = None,
                      threshold: float = INPUT_WAIT_THRESHOLD) -> Optional[str]:
    """One line saying the model waits for its input `share` of the time, with what to run, or None when
    `share` does not exceed `threshold` (or is not a number)."""
    if not isinstance(share, (int, float)) or not math.isfinite(share) or share <= threshold:
        return None
    command = command or "dalimix-profile --tune --data <train folder> --device <cpu|gpu>"
    return (f"input wait {share:.0%}{where} (over {threshold:.0%}): the model waits for its batches; "
            f"`{command}` searches DALI threads, prefetch depth and batch size for faster loader settings")


class SeenRecorder:
    """Debug record of what each rank read: per epoch and split, the file indices of every batch (from the
    loader's stateless `FileSource`, which is what DALI was fed) and the labels the loader actually yielded
    (int targets; the argmax for soft targets, which is the label only without pixel mixing).

    Written as JSON by `dump(path)`; used to check that DDP ranks read disjoint shards.
    """

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def record(self, split: str, epoch: int, step: int, loader: Any, targets: torch.Tensor) -> None:
        source = getattr(loader, "source", None)
        n = int(targets.shape[0])
        entry = self.records.setdefault(f"{split}/{epoch}", {"indices": [], "files": [], "labels": []})
        if n == 0:
            return
        if source is not None:
            idx = [int(i) for i in source.batch_indices(epoch, step)]
            entry["indices"] += idx
            entry["files"] += [os.path.join(*source.files[i].split(os.sep)[-2:]) for i in idx]
        labels = targets.argmax(dim=1) if targets.is_floating_point() else targets
        entry["labels"] += [int(v) for v in labels.cpu().tolist()]

    def dump(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(self.records, fh)


# -- one epoch ---------------------------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *, ctx: DistContext,
                    epoch: int = 0, epochs: Optional[int] = None, scheduler: Any = None, scaler: Any = None,
                    amp_dtype: Optional[torch.dtype] = None, manifold: bool = False,
                    max_grad_norm: Optional[float] = None, progress: bool = True, print_freq: int = 10,
                    recorder: Optional[SeenRecorder] = None) -> dict[str, float]:
    """Train `model` for one pass over `loader`; return loss, images, time, images/s and lr, summed over ranks,
    and how long training waited for its input.

    Targets may be int labels (cross-entropy) or float soft targets `[N, K]` (SoftTargetCrossEntropy). With
    `manifold`, `model` is (or DDP-wraps) a `ManifoldMixup` and is called as `model(x, targets)`, returning
    `(logits, mixed_targets)`. The scheduler is stepped after every optimizer step. `scaler` is a
    `torch.amp.GradScaler` (or None); `amp_dtype` turns on autocast with that dtype.

    Input wait (each rank, from its second batch on; see `_WaitClock`): `input_wait` is the mean over ranks of
    the share of training time spent waiting for the next batch (on CUDA the GPU's idle time between steps,
    from CUDA events, no added synchronisation; on the CPU the time inside the loader's `next`),
    `input_wait_max` / `input_wait_rank` the worst rank, `input_wait_host` the mean share of host time inside
    `next`, `first_batch_wait` the mean seconds until the first batch (pipeline build, refill).
    """
    model.train()
    device = ctx.device
    soft_loss = SoftTargetCrossEntropy()
    total = len(loader) if hasattr(loader, "__len__") else None
    show = progress and ctx.is_main
    desc = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "") + " train"
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    bad_steps = torch.zeros((), dtype=torch.int64, device=device)
    steps = 0
    lr = optimizer.param_groups[0]["lr"]
    clock = _WaitClock(device)
    _sync(device)
    t0 = time.perf_counter()
    bar = _bar(clock.batches_of(loader), total=total, desc=desc, enabled=show)
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
            logits = _logits(out)
        loss = soft_loss(logits, targets) if targets.is_floating_point() else F.cross_entropy(logits.float(), targets)
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
        if scheduler is not None:
            scheduler.step()
        detached = loss.detach().double()
        finite = torch.isfinite(detached)
        loss_sum += torch.where(finite, detached * n, torch.zeros_like(detached))
        seen += torch.where(finite, torch.full_like(detached, n), torch.zeros_like(detached))
        bad_steps += (~finite).long()
        steps += 1
        clock.step_end()
        if print_freq > 0 and steps % print_freq == 0:
            # One host sync every print_freq steps: progress, and an early stop when training diverged.
            current = float(detached)
            if not math.isfinite(current) and (scaler is None or not scaler.is_enabled()):
                raise FloatingPointError(f"training loss is {current} at epoch {epoch + 1}, step {step + 1} "
                                         f"(lr {lr:.4g}); lower --lr or check the data")
            if show:
                wait = clock.share()  # the loss read above synchronised the host with the GPU
                bar.set_postfix(loss=f"{current:.4f}", lr=f"{lr:.4g}",
                                wait="-" if math.isnan(wait) else f"{wait:.0%}", refresh=False)
    _sync(device)
    end = time.perf_counter()
    elapsed = end - t0
    share, host_share = clock.share(final=True), clock.host_share(end)
    # Each rank's wait share in its own slot of the sum, so that every rank learns the worst one.
    slots = [0.0] * ctx.world_size
    slots[ctx.rank] = share
    totals = ctx.all_reduce_sum([float(loss_sum), float(seen), float(bad_steps), float(steps), elapsed,
                                 host_share, clock.first_wait, *slots])
    loss_total, images_total, bad_total, steps_total = (float(v) for v in totals[:4])
    wall = float(totals[4]) / ctx.world_size  # mean over ranks
    shares = [float(v) for v in totals[7:]]
    worst = max(range(len(shares)), key=lambda r: -1.0 if math.isnan(shares[r]) else shares[r])
    if bad_total and (scaler is None or not scaler.is_enabled() or bad_total >= steps_total):
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
        "input_wait_method": "gpu_idle" if device.type == "cuda" else "host",
    }


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, ctx: DistContext, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = True, desc: str = "eval", epoch: int = 0,
             recorder: Optional[SeenRecorder] = None) -> dict[str, float]:
    """Val loss, top-1 and top-5 (percent) and sample count of `model` over `loader`, summed over ranks.

    Pass the bare model (see `unwrap`): evaluation is per rank, without DDP. Empty batches (the padding of
    short val shards) are skipped. Soft targets are scored against their argmax.
    """
    was_training = model.training
    model.eval()
    device = ctx.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = _bar(loader, total=total, desc=desc, enabled=progress and ctx.is_main)
    for step, (images, targets) in enumerate(bar):
        if recorder is not None:
            recorder.record("val", epoch, step, loader, targets)
        n = images.shape[0]
        if n == 0:
            continue
        images = images.to(device, non_blocking=True)
        labels = targets.to(device, non_blocking=True)
        if labels.is_floating_point():
            labels = labels.argmax(dim=1)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = _logits(model(images))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        c1, c5 = accuracy_counts(logits, labels)
        sums += torch.stack([loss.double(), c1.double(), c5.double(), torch.tensor(float(n), dtype=torch.float64,
                                                                                   device=device)])
    loss, c1, c5, n = (float(v) for v in ctx.all_reduce_sum(sums.cpu()))
    model.train(was_training)
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan"), "val_samples": 0}
    return {"val_loss": loss / n, "val_top1": 100.0 * c1 / n, "val_top5": 100.0 * c5 / n, "val_samples": int(n)}


# -- state ---------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states, as plain data (tensors, numbers)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(np_state["bit_generator"]),
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states from `rng_state()` (or the tuple form of dalimix checkpoints before version 2)."""
    py = state["python"]
    if isinstance(py, Mapping):
        py = (int(py["version"]), tuple(int(v) for v in torch.as_tensor(py["state"]).tolist()), py["gauss"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        npy = {"bit_generator": npy["bit_generator"],
               "state": {"key": np.asarray(torch.as_tensor(npy["key"]).numpy(), dtype=np.uint32),
                         "pos": int(npy["pos"])},
               "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])}
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def dali_checkpoint(loader: Any) -> Optional[bytes]:
    """The DALI pipeline state behind `loader` after the batches it has yielded (prefetching accounted for),
    or None when its pipeline keeps no checkpoints (a bare pipeline, or one built without checkpointing)."""
    spec = getattr(loader, "spec", None)
    if spec is None or not spec.checkpointing:
        return None
    return loader.checkpoint()


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


# -- checkpoints: plain data only ---------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that is refused or cannot be read; the message names the file and the reason."""


_PLAIN = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first entry of `obj` that is not plain data (what weights_only loads)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: checkpoints hold only plain data "
                    f"(tensors, numbers, strings, bytes, lists, dicts)")


def _to_plain(obj: Any, where: str) -> Any:
    """Plain data from what an older, trusted checkpoint held (numpy arrays and scalars become tensors/numbers)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = {k: _to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        # Unchanged mappings stay as they are (a model state_dict keeps its OrderedDict and _metadata).
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (tuple, list)):
        seq = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(seq, obj)) else type(obj)(seq)
    _check_plain(obj, where)
    return obj


def _legacy_safe_globals() -> list[Any]:
    """The numpy types of version-1 dalimix checkpoints (the numpy RNG state): data, no code, safe to allow."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.UInt32DType, dtypes.Float64DType, dtypes.Int64DType]
    return allowed


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """torch.save plain data to `path` atomically (tmp file, then rename): a crash mid-write never leaves a
    truncated checkpoint. Raises TypeError naming an entry that is not plain data."""
    state = dict(state)
    _check_plain(state, "checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    fsync_file(tmp)
    os.replace(tmp, path)


def _copy_atomic(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    fsync_file(tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str, *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `fit` onto the CPU, as data: `torch.load(weights_only=True)`, nothing runs.

    A file whose pickle needs anything but plain data (tensors, numbers, strings, lists, dicts, bytes) is
    refused with `CheckpointError` naming the file and what it asked to run, and how to convert it; the
    numpy RNG state of version-1 dalimix checkpoints is allowed. `trust=True` unpickles such a file in full
    (which runs whatever code it carries: only for files from a source you trust) and returns plain data.
    Missing files raise FileNotFoundError; foreign or corrupt files raise CheckpointError.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a file")
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is reported naming the file
        text = str(exc)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"checkpoint {path!r} could not be read: {type(exc).__name__}: "
                                  f"{text.strip().splitlines()[0] if text.strip() else exc!r}") from None
        reason = next((line.split("error:", 1)[1].strip() for line in text.splitlines()
                       if "WeightsUnpickler error:" in line), "it holds more than plain data")
        reason = reason.split(" was not an allowed global")[0].split(". Please use")[0]
        if not trust:
            raise CheckpointError(
                f"checkpoint {path!r} refused: loading it would unpickle code ({reason}), and loading a checkpoint "
                f"must never run code. dalimix checkpoints hold plain data only (tensors, numbers, strings, lists, "
                f"dicts, bytes). If the file comes from a source you trust, convert it once with "
                f"`python -c \"from dalimix.engine import convert_checkpoint; convert_checkpoint({path!r}, "
                f"'converted.pt', trust=True)\"` (or pass --trust-checkpoint to scripts/train_imagenet.py) and "
                f"use the converted file") from None
        warnings.warn(f"checkpoint {path!r}: unpickling it in full because trust=True ({reason}); this runs any code "
                      f"it carries", stacklevel=2)
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = _to_plain(state, "checkpoint") if isinstance(state, Mapping) else state
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path!r} is not a dalimix training checkpoint (no 'model'/'epoch' entries)")
    if isinstance(state.get("rng"), list):  # version 1 kept python / numpy RNG states as tuples
        state["rng"] = [_plain_rng(r) if isinstance(r, Mapping) else r for r in state["rng"]]
    return state


def convert_checkpoint(src: str, dst: str, *, trust: bool = False) -> dict[str, Any]:
    """Rewrite checkpoint `src` as a plain-data checkpoint `dst` (loads with weights_only=True); returns it.

    `trust=True` is needed for files that only load by running their pickle (older or foreign checkpoints):
    it runs that code once, here, so do it only for files from a source you trust.
    """
    state = _to_plain(load_checkpoint(src, trust=trust), "checkpoint")
    state["version"] = CHECKPOINT_VERSION
    save_checkpoint(dst, state)
    return state


def _plain_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 RNG state (python / numpy state tuples) in `rng_state()`'s form."""
    out = dict(state)
    py = state.get("python")
    if isinstance(py, (tuple, list)):
        out["python"] = {"version": int(py[0]), "state": torch.tensor([int(v) for v in py[1]], dtype=torch.int64),
                         "gauss": py[2]}
    npy = state.get("numpy")
    if isinstance(npy, (tuple, list)):
        key = npy[1]
        key = torch.from_numpy(key.astype(np.int64)) if isinstance(key, np.ndarray) else torch.as_tensor(key)
        out["numpy"] = {"bit_generator": str(npy[0]), "key": key.to(torch.int64),
                        "pos": int(npy[2]), "has_gauss": int(npy[3]), "gauss": float(npy[4])}
    return out


def checkpoint_epoch(path: str) -> Optional[int]:
    """The `epoch` a dalimix checkpoint file records, or None when it is missing or unreadable (never runs code)."""
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - any problem means "no usable epoch"
        return None


# -- the epoch loop ----------------------------------------------------------------------------------------------
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


@dataclass
class TrainState:
    """What a checkpoint restores: the next epoch to run, the history so far, the best result."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1
    wall_time: float = 0.0

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> "TrainState":
        """The state after the epoch `checkpoint` was written at (as `load_checkpoint` returns it)."""
        return cls(epoch=int(checkpoint["epoch"]) + 1, history=[dict(r) for r in checkpoint.get("history", [])],
                   best_top1=float(checkpoint.get("best_top1", -1.0)),
                   best_top5=float(checkpoint.get("best_top5", -1.0)),
                   best_epoch=int(checkpoint.get("best_epoch", -1)), wall_time=float(checkpoint.get("wall_time", 0.0)))


def _write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def _write_metrics(path: str, history: Sequence[Mapping[str, Any]]) -> None:
    # The whole log every epoch (a few KB): an appended line could be cut in half by a crash.
    write_text(path, "".join(json.dumps(json_safe(dict(row))) + "\n" for row in history))


# What fit writes in `output`, and the temporary names a crash can leave behind.
OUTPUT_FILES = ("checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json", "curves.png")
_TMP_FILES = tuple(f"{name}.tmp" for name in OUTPUT_FILES) + ("curves.png.tmp.png",)


def _plot(history: Sequence[Mapping[str, Any]], path: str, title: str,
          wait_threshold: float = INPUT_WAIT_THRESHOLD) -> None:
    from dalimix.curves import plot_curves

    try:
        plot_curves(history, path, title=title, wait_threshold=wait_threshold)  # a tmp file, then renamed
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not kill a training run
        warnings.warn(f"could not draw {path}: {exc}")


def repair_outputs(output: str, state: TrainState, cfg: FitConfig, ctx: DistContext,
                   log: Callable[[str], None] = print) -> list[str]:
    """Make the files in `output` agree with `state` (restored from `cfg.resumed_from`) after a crash.

    `fit` writes an epoch's outputs in this order: `checkpoint.pt` (the commit point), `best.pt` (a copy of
    it when val top-1 improved), `metrics.jsonl`, `curves.png`, `summary.json`, each to a tmp file renamed
    over the old one. A crash between two of them leaves files that lag the checkpoint; this rewrites them
    from `state`: removes stale tmp files, rebuilds `best.pt` from the checkpoint when the checkpoint holds
    the best epoch but `best.pt` does not, and rewrites metrics, curves and summary. Returns what it fixed.
    Call it on the rank that writes (`fit` does, before its first epoch).
    """
    fixed: list[str] = []
    for name in _TMP_FILES:
        tmp = os.path.join(output, name)
        if os.path.exists(tmp):
            os.remove(tmp)
            fixed.append(f"removed {name}")
    source = cfg.resumed_from
    best = os.path.join(output, "best.pt")
    if state.best_epoch >= 0 and source and os.path.isfile(source):
        best_epoch = checkpoint_epoch(best) if os.path.isfile(best) else None
        if best_epoch != state.best_epoch:
            if checkpoint_epoch(source) == state.best_epoch:
                if os.path.abspath(source) != os.path.abspath(best):
                    _copy_atomic(source, best)
                    fixed.append(f"best.pt rebuilt from {os.path.basename(source)} (epoch {state.best_epoch + 1})")
            elif best_epoch is not None:
                warnings.warn(f"{best} holds epoch {best_epoch + 1} but {source} says the best is epoch "
                              f"{state.best_epoch + 1}, which neither file holds; best.pt is left as it is")
    metrics_path = os.path.join(output, "metrics.jsonl")
    expected = "".join(json.dumps(json_safe(dict(row))) + "\n" for row in state.history)
    current = open(metrics_path).read() if os.path.isfile(metrics_path) else None
    if current != expected:
        write_text(metrics_path, expected)
        if current is not None and state.history:
            fixed.append("metrics.jsonl")
    if state.history:
        _plot(state.history, os.path.join(output, "curves.png"), cfg.plot_title, cfg.input_wait_threshold)
        summary_path = os.path.join(output, "summary.json")
        summary = _summary(state, cfg, ctx)
        try:
            with open(summary_path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = None
        if old is None or old.get("epochs_completed") != summary["epochs_completed"] \
                or old.get("best_epoch") != summary["best_epoch"]:
            fixed.append("summary.json")
        _write_json(summary_path, summary)
    if fixed:
        log(f"repaired the outputs in {output} to agree with the checkpoint (epoch {state.epoch}): {', '.join(fixed)}")
    return fixed


def fit(model: nn.Module, train_loader: Any, val_loader: Any, optimizer: torch.optim.Optimizer, *,
        ctx: DistContext, cfg: FitConfig, scheduler: Any = None, scaler: Any = None,
        state: Optional[TrainState] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from `state.epoch` to `cfg.epochs`, evaluating after every epoch; return the summary.

    `model` is what the training step calls (possibly `DDP(ManifoldMixup(net))`); evaluation and checkpoints
    use the bare `unwrap(model)`. Every epoch (rank 0, when `cfg.output` is set): a line in `metrics.jsonl`,
    `checkpoint.pt` (model, optimizer, scheduler, AMP scaler, epoch, every rank's RNG and DALI pipeline state),
    `best.pt` when val top-1 improved, `curves.png` and `summary.json`. Each epoch's line and row carry its
    input wait; the first epoch whose worst rank waits more than `cfg.input_wait_threshold` of its training
    time for input logs one line naming the tuning command (`cfg.tune_command`, or one made from the loader).
    """
    state = state or TrainState()
    net = unwrap(model)
    out = cfg.output
    main = ctx.is_main
    if main and out:
        os.makedirs(out, exist_ok=True)
        # A resumed run rewrites the log from the checkpoint's history (dropping epochs past it) and repairs
        # what a crash between two writes left behind.
        repair_outputs(out, state, cfg, ctx, log=log)
    start_wall = time.perf_counter()
    prior_wall = state.wall_time
    summary: dict[str, Any] = {}
    warned = False  # the input-wait line is said once per run
    last = cfg.epochs if cfg.stop_epoch is None else min(cfg.epochs, cfg.stop_epoch)
    for epoch in range(state.epoch, last):
        t0 = time.perf_counter()
        manifold = cfg.manifold and (cfg.mix_off_epoch is None or epoch < cfg.mix_off_epoch)
        train = train_one_epoch(model, train_loader, optimizer, ctx=ctx, epoch=epoch, epochs=cfg.epochs,
                                scheduler=scheduler, scaler=scaler, amp_dtype=cfg.amp_dtype, manifold=manifold,
                                max_grad_norm=cfg.max_grad_norm, progress=cfg.progress,
                                print_freq=cfg.print_freq, recorder=cfg.recorder)
        dali_state = dali_checkpoint(train_loader)
        val = evaluate(net, val_loader, ctx=ctx, amp_dtype=cfg.amp_dtype, progress=cfg.progress,
                       desc=f"epoch {epoch + 1}/{cfg.epochs} val", epoch=epoch, recorder=cfg.recorder)
        epoch_time = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train["train_loss"], "val_loss": val["val_loss"],
               "val_top1": val["val_top1"], "val_top5": val["val_top5"], "images_per_sec": train["images_per_sec"],
               "lr": train["lr"], "epoch_time": epoch_time, "train_time": train["train_time"],
               "train_images": int(train["train_images"]), "val_samples": val["val_samples"],
               "manifold_mixup": manifold, "input_wait": train["input_wait"],
               "input_wait_max": train["input_wait_max"], "input_wait_rank": train["input_wait_rank"],
               "input_wait_host": train["input_wait_host"], "first_batch_wait": train["first_batch_wait"],
               "input_wait_method": train["input_wait_method"]}
        state.history.append(row)
        improved = math.isfinite(val["val_top1"]) and val["val_top1"] > state.best_top1
        if improved:
            state.best_top1, state.best_top5, state.best_epoch = val["val_top1"], val["val_top5"], epoch
        state.epoch = epoch + 1
        state.wall_time = prior_wall + (time.perf_counter() - start_wall)
        if main:
            wait = train["input_wait"]
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['train_loss']:.4f}  val loss {val['val_loss']:.4f}"
                f"  top-1 {val['val_top1']:.2f}%  top-5 {val['val_top5']:.2f}%  "
                f"{train['images_per_sec']:.1f} img/s  input wait {_share(wait)}  lr {train['lr']:.4g}  "
                f"({epoch_time:.1f}s)")
            if not warned:
                worst, rank = train["input_wait_max"], train["input_wait_rank"]
                where = f" of epoch {epoch + 1}'s training time" + (f" on rank {rank}" if ctx.world_size > 1 else "")
                line = input_wait_advice(worst, where=where, threshold=cfg.input_wait_threshold,
                                         command=cfg.tune_command or _tune_command(train_loader, ctx))
                if line is not None:
                    log(line)
                    warned = True
        # Every rank's RNG and DALI state go into the checkpoint (collective: all ranks take part).
        rngs = ctx.all_gather_object(rng_state())
        dalis = ctx.all_gather_object(dali_state)
        summary = _summary(state, cfg, ctx)
        if main and out:
            ckpt = {
                "version": CHECKPOINT_VERSION, "epoch": epoch, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs, "dali": dalis, "first_epoch": cfg.first_epoch,
                "world_size": ctx.world_size, "history": list(state.history), "best_top1": state.best_top1,
                "best_top5": state.best_top5, "best_epoch": state.best_epoch, "wall_time": state.wall_time,
                "run_info": cfg.run_info,
            }
            # Each file goes to a tmp name and is renamed over the old one; the checkpoint first (the commit
            # point): a crash before the others are written leaves them behind it, and `repair_outputs` (run
            # by the resumed fit) rewrites them from it.
            path = os.path.join(out, "checkpoint.pt")
            save_checkpoint(path, ckpt)
            if improved:
                _copy_atomic(path, os.path.join(out, "best.pt"))
            _write_metrics(os.path.join(out, "metrics.jsonl"), state.history)
            _plot(state.history, os.path.join(out, "curves.png"), cfg.plot_title, cfg.input_wait_threshold)
            _write_json(os.path.join(out, "summary.json"), summary)
        ctx.barrier()
    if cfg.recorder is not None and cfg.recorder_path:
        cfg.recorder.dump(cfg.recorder_path)
    if not summary:
        summary = _summary(state, cfg, ctx)
        if main and out:
            _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _tune_command(loader: Any, ctx: DistContext) -> str:
    """The profiler's tuning command for this run's train loader, as far as the loader tells its settings."""
    parts = ["dalimix-profile --tune"]
    files = getattr(getattr(loader, "source", None), "files", None)
    if files:
        parts.append(f"--data {os.path.dirname(os.path.dirname(os.path.abspath(files[0])))}")
    else:
        parts.append("--data <train folder>")
    parts.append(f"--device {'gpu' if ctx.device.type == 'cuda' else 'cpu'}")
    pipeline = getattr(loader, "pipeline", None)
    threads = getattr(pipeline, "num_threads", None)
    if isinstance(threads, int):
        parts.append(f"--threads {threads}")
    batch = getattr(loader, "batch_size", None)
    if isinstance(batch, int):
        parts.append(f"--batch-size {batch}")
    depth = getattr(pipeline, "prefetch_queue_depth", None)
    if isinstance(depth, int) and depth != 2:
        parts.append(f"--prefetch {depth}")
    return " ".join(parts)


def _finite(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def _summary(state: TrainState, cfg: FitConfig, ctx: DistContext) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    rates = _finite(state.history, "images_per_sec")
    waits = _finite(state.history, "input_wait")
    worst = _finite(state.history, "input_wait_max")
    return {
        "epochs_completed": state.epoch,
        "epochs": cfg.epochs,
        "final_val_top1": last.get("val_top1"),
        "final_val_top5": last.get("val_top5"),
        "final_val_loss": last.get("val_loss"),
        "final_train_loss": last.get("train_loss"),
        "best_val_top1": state.best_top1 if state.best_epoch >= 0 else None,
        "best_val_top5": state.best_top5 if state.best_epoch >= 0 else None,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        # The first epoch pays for warm-up (allocations, caches); report the later ones where there are any.
        "images_per_sec": (float(np.mean(rates[1:])) if len(rates) > 1 else (rates[0] if rates else None)),
        "images_per_sec_last_epoch": last.get("images_per_sec"),
        # Share of training time waiting for input, mean over ranks, like images/s over the later epochs.
        "input_wait": (float(np.mean(waits[1:])) if len(waits) > 1 else (waits[0] if waits else None)),
        "input_wait_max": max(worst) if worst else None,  # the worst rank in the worst epoch
        "input_wait_last_epoch": last.get("input_wait"),
        "input_wait_method": last.get("input_wait_method"),
        "wall_time": state.wall_time,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        **{k: v for k, v in cfg.run_info.items() if k != "args"},
        "args": cfg.run_info.get("args", {}),
    }
