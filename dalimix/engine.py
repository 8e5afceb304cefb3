"""A small training engine: one epoch of training, top-1/top-5 evaluation, checkpoints, the epoch loop.

It works on any iterable of `(images, targets)` batches (a `dalimix.DaliLoader` in the scripts), with
int or soft targets, a plain, `ManifoldMixup`-wrapped or DDP-wrapped model, optional AMP, and a
`dalimix.distributed.DistContext` so that losses, correct counts and sample counts are summed over ranks
and only rank 0 shows progress bars and writes files. It never imports `pipelines` (see DESIGN.md); what it
knows about DALI is the pipeline checkpoint that makes a resumed run draw the same augmentations.

Output of `fit` (rank 0, in `output`): `metrics.jsonl` (a line per epoch), `summary.json`, `checkpoint.pt`
(latest, every epoch), `best.pt` (best val top-1) and `curves.png`.
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
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dalimix.distributed import DistContext
from dalimix.losses import SoftTargetCrossEntropy

__all__ = [
    "param_groups", "warmup_cosine", "unwrap", "accuracy_counts", "train_one_epoch", "evaluate",
    "rng_state", "set_rng_state", "dali_checkpoint", "restore_dali_checkpoint", "save_checkpoint",
    "load_checkpoint", "SeenRecorder", "FitConfig", "TrainState", "fit",
]

CHECKPOINT_VERSION = 1


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
    """Train `model` for one pass over `loader`; return loss, images, time, images/s and lr, summed over ranks.

    Targets may be int labels (cross-entropy) or float soft targets `[N, K]` (SoftTargetCrossEntropy). With
    `manifold`, `model` is (or DDP-wraps) a `ManifoldMixup` and is called as `model(x, targets)`, returning
    `(logits, mixed_targets)`. The scheduler is stepped after every optimizer step. `scaler` is a
    `torch.amp.GradScaler` (or None); `amp_dtype` turns on autocast with that dtype.
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
    _sync(device)
    t0 = time.perf_counter()
    bar = _bar(loader, total=total, desc=desc, enabled=show)
    for step, (images, targets) in enumerate(bar):
        if recorder is not None:
            recorder.record("train", epoch, step, loader, targets)
        n = images.shape[0]
        if n == 0:
            continue
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
        if print_freq > 0 and steps % print_freq == 0:
            # One host sync every print_freq steps: progress, and an early stop when training diverged.
            current = float(detached)
            if not math.isfinite(current) and (scaler is None or not scaler.is_enabled()):
                raise FloatingPointError(f"training loss is {current} at epoch {epoch + 1}, step {step + 1} "
                                         f"(lr {lr:.4g}); lower --lr or check the data")
            if show:
                bar.set_postfix(loss=f"{current:.4f}", lr=f"{lr:.4g}", refresh=False)
    _sync(device)
    elapsed = time.perf_counter() - t0
    totals = ctx.all_reduce_sum([float(loss_sum), float(seen), float(bad_steps), float(steps), elapsed])
    loss_total, images_total, bad_total, steps_total = (float(v) for v in totals[:4])
    wall = float(totals[4]) / ctx.world_size  # mean over ranks
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
    """This process's python, numpy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def dali_checkpoint(loader: Any) -> Optional[bytes]:
    """The DALI pipeline state behind `loader` after the batches it has yielded (prefetching accounted for),
    or None when the pipeline was built without `enable_checkpointing`."""
    pipe = getattr(loader, "pipeline", None)
    if pipe is None or not getattr(pipe, "_enable_checkpointing", False):
        return None
    if hasattr(loader, "checkpoint"):
        return loader.checkpoint()
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "checkpoints"):
        return iterator.checkpoints()[0]
    return pipe.checkpoint()


def restore_dali_checkpoint(pipe: Any, checkpoint: bytes) -> None:
    """Make a not yet built DALI pipeline start from `checkpoint` (the same as passing `checkpoint=` to the
    Pipeline constructor, for pipelines whose factory does not take that argument)."""
    if getattr(pipe, "_built", False):
        raise RuntimeError("restore_dali_checkpoint: the pipeline is already built; restore before first use")
    if not getattr(pipe, "_enable_checkpointing", False):
        raise ValueError("restore_dali_checkpoint: the pipeline was built without enable_checkpointing=True")
    pipe._checkpoint = checkpoint
    pipe.build()


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """torch.save to `path` atomically (a crash mid-write never leaves a truncated checkpoint)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint written by `fit` onto the CPU; raise a clear error for a missing or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means "not our checkpoint"
        raise ValueError(f"checkpoint {path!r} could not be read: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"checkpoint {path!r} is not a dalimix training checkpoint (no 'model'/'epoch' entries)")
    return state


# -- the epoch loop ----------------------------------------------------------------------------------------------
@dataclass
class FitConfig:
    """How `fit` runs: epochs, where to write, what to print."""

    epochs: int
    output: Optional[str] = None
    amp_dtype: Optional[torch.dtype] = None
    manifold: bool = False                 # the train model is (DDP of) ManifoldMixup
    manifold_off_epoch: Optional[int] = None  # manifold mixup off from this epoch on (0-based)
    max_grad_norm: Optional[float] = None
    progress: bool = True
    print_freq: int = 10
    run_info: dict[str, Any] = field(default_factory=dict)  # args etc., copied into summary/checkpoints
    data_start_epoch: int = 0             # the epoch the train pipeline's epoch counter 0 stands for
    plot_title: str = ""
    recorder: Optional[SeenRecorder] = None
    recorder_path: Optional[str] = None
    stop_epoch: Optional[int] = None      # leave after this many epochs are done (the schedule spans `epochs`)


@dataclass
class TrainState:
    """What a checkpoint restores: the next epoch to run, the history so far, the best result."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1
    wall_time: float = 0.0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(_json_safe(obj), fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def _write_metrics(path: str, history: Sequence[Mapping[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        for row in history:
            fh.write(json.dumps(_json_safe(dict(row))) + "\n")
    os.replace(tmp, path)


def fit(model: nn.Module, train_loader: Any, val_loader: Any, optimizer: torch.optim.Optimizer, *,
        ctx: DistContext, cfg: FitConfig, scheduler: Any = None, scaler: Any = None,
        state: Optional[TrainState] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from `state.epoch` to `cfg.epochs`, evaluating after every epoch; return the summary.

    `model` is what the training step calls (possibly `DDP(ManifoldMixup(net))`); evaluation and checkpoints
    use the bare `unwrap(model)`. Every epoch (rank 0, when `cfg.output` is set): a line in `metrics.jsonl`,
    `checkpoint.pt` (model, optimizer, scheduler, AMP scaler, epoch, every rank's RNG and DALI pipeline state),
    `best.pt` when val top-1 improved, `curves.png` and `summary.json`.
    """
    from dalimix.curves import plot_curves

    state = state or TrainState()
    net = unwrap(model)
    out = cfg.output
    main = ctx.is_main
    if main and out:
        os.makedirs(out, exist_ok=True)
        # A resumed run rewrites the log from the checkpoint's history, dropping epochs past it.
        _write_metrics(os.path.join(out, "metrics.jsonl"), state.history)
    start_wall = time.perf_counter()
    prior_wall = state.wall_time
    summary: dict[str, Any] = {}
    last = cfg.epochs if cfg.stop_epoch is None else min(cfg.epochs, cfg.stop_epoch)
    for epoch in range(state.epoch, last):
        t0 = time.perf_counter()
        manifold = cfg.manifold and (cfg.manifold_off_epoch is None or epoch < cfg.manifold_off_epoch)
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
               "manifold_mixup": manifold}
        state.history.append(row)
        improved = math.isfinite(val["val_top1"]) and val["val_top1"] > state.best_top1
        if improved:
            state.best_top1, state.best_top5, state.best_epoch = val["val_top1"], val["val_top5"], epoch
        state.epoch = epoch + 1
        state.wall_time = prior_wall + (time.perf_counter() - start_wall)
        if main:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['train_loss']:.4f}  val loss {val['val_loss']:.4f}"
                f"  top-1 {val['val_top1']:.2f}%  top-5 {val['val_top5']:.2f}%  "
                f"{train['images_per_sec']:.1f} img/s  lr {train['lr']:.4g}  ({epoch_time:.1f}s)")
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
                "rng": rngs, "dali": dalis, "data_start_epoch": cfg.data_start_epoch,
                "world_size": ctx.world_size, "history": list(state.history), "best_top1": state.best_top1,
                "best_top5": state.best_top5, "best_epoch": state.best_epoch, "wall_time": state.wall_time,
                "run_info": cfg.run_info,
            }
            path = os.path.join(out, "checkpoint.pt")
            save_checkpoint(path, ckpt)
            if improved:
                shutil.copyfile(path, os.path.join(out, "best.pt.tmp"))
                os.replace(os.path.join(out, "best.pt.tmp"), os.path.join(out, "best.pt"))
            with open(os.path.join(out, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(_json_safe(row)) + "\n")
            try:
                plot_curves(state.history, os.path.join(out, "curves.png"), title=cfg.plot_title)
            except Exception as exc:  # noqa: BLE001 - a plotting failure must not kill a training run
                warnings.warn(f"could not draw curves.png: {exc}")
            _write_json(os.path.join(out, "summary.json"), summary)
        ctx.barrier()
    if cfg.recorder is not None and cfg.recorder_path:
        cfg.recorder.dump(cfg.recorder_path)
    if not summary:
        summary = _summary(state, cfg, ctx)
        if main and out:
            _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _summary(state: TrainState, cfg: FitConfig, ctx: DistContext) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    rates = [r["images_per_sec"] for r in state.history if r.get("images_per_sec") is not None
             and math.isfinite(r["images_per_sec"])]
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
        "wall_time": state.wall_time,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        **{k: v for k, v in cfg.run_info.items() if k != "args"},
        "args": cfg.run_info.get("args", {}),
    }
