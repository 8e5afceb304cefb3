"""The epoch loop: train, evaluate, checkpoint and write the run's outputs, every epoch.

Output of `fit` (rank 0, in `cfg.output`): `metrics.jsonl` (a line per epoch), `summary.json`, `checkpoint.pt`
(latest, every epoch), `best.pt` (best val top-1) and `curves.png`. Every file is written to a tmp name and
renamed, the checkpoint first; a resumed `fit` repairs whatever a crash between two writes left behind.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from dalimix.train.checkpoint import CHECKPOINT_VERSION, copy_atomic, dali_checkpoint, save_checkpoint
from dalimix.train.distributed import DistContext
from dalimix.train.ema import ModelEma, best_ema_checkpoint
from dalimix.train.evaluate import evaluate
from dalimix.train.loop import train_one_epoch
from dalimix.train.models import unwrap
from dalimix.train.outputs import plot, repair_outputs, run_summary, share_text, write_json, write_metrics
from dalimix.train.rng import rng_state
from dalimix.train.state import FitConfig, TrainState
from dalimix.train.wait_clock import input_wait_advice, tune_command


def _row(epoch: int, train: Mapping[str, Any], val: Mapping[str, Any], epoch_time: float,
         manifold: bool) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    return {"epoch": epoch, "train_loss": train["train_loss"], "val_loss": val["val_loss"],
            "val_top1": val["val_top1"], "val_top5": val["val_top5"], "images_per_sec": train["images_per_sec"],
            "lr": train["lr"], "epoch_time": epoch_time, "train_time": train["train_time"],
            "train_images": int(train["train_images"]), "val_samples": val["val_samples"],
            "manifold_mixup": manifold, "input_wait": train["input_wait"],
            "input_wait_max": train["input_wait_max"], "input_wait_rank": train["input_wait_rank"],
            "input_wait_host": train["input_wait_host"], "first_batch_wait": train["first_batch_wait"],
            "input_wait_method": train["input_wait_method"]}


def _log_epoch(row: Mapping[str, Any], cfg: FitConfig, ctx: DistContext, loader: Any, warned: bool,
               log: Callable[[str], None]) -> bool:
    """Log the epoch's line, and once per run the input-wait advice; returns whether that was said."""
    epoch = row["epoch"]
    log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%  "
        f"{row['images_per_sec']:.1f} img/s  input wait {share_text(row['input_wait'])}  lr {row['lr']:.4g}  "
        f"({row['epoch_time']:.1f}s)" + (f"  EMA top-1 {row['ema_top1']:.2f}%" if "ema_top1" in row else ""))
    if warned:
        return True
    worst, rank = row["input_wait_max"], row["input_wait_rank"]
    where = f" of epoch {epoch + 1}'s training time" + (f" on rank {rank}" if ctx.world_size > 1 else "")
    line = input_wait_advice(worst, where=where, threshold=cfg.input_wait_threshold,
                             command=cfg.tune_command or tune_command(loader, ctx))
    if line is not None:
        log(line)
    return line is not None


def _write_epoch(out: str, checkpoint: Mapping[str, Any], improved: bool, state: TrainState, cfg: FitConfig,
                 summary: Mapping[str, Any], ema_improved: bool = False) -> None:
    """The epoch's files. Each goes to a tmp name and is renamed over the old one, the checkpoint first (the
    commit point): a crash before the others are written leaves them behind it, and `repair_outputs` (run by
    the resumed fit) rewrites them from it. `best_ema.pt` holds the moving average as the checkpoint's
    "model", so it loads into the bare network as `best.pt` does."""
    path = os.path.join(out, "checkpoint.pt")
    save_checkpoint(path, checkpoint)
    if improved:
        copy_atomic(path, os.path.join(out, "best.pt"))
    if ema_improved:
        save_checkpoint(os.path.join(out, "best_ema.pt"), best_ema_checkpoint(checkpoint))
    write_metrics(os.path.join(out, "metrics.jsonl"), state.history)
    plot(state.history, os.path.join(out, "curves.png"), cfg.plot_title, cfg.input_wait_threshold)
    write_json(os.path.join(out, "summary.json"), summary)


def _evaluate_ema(ema: ModelEma, val_loader: Any, ctx: DistContext, cfg: FitConfig, epoch: int, state: TrainState,
                  row: dict[str, Any]) -> bool:
    """Evaluate the moving average into `row` (`ema_top1`, `ema_top5`, `ema_loss`); whether it is the best."""
    val = evaluate(ema.module, val_loader, ctx=ctx, amp_dtype=cfg.amp_dtype, progress=cfg.progress,
                   desc=f"epoch {epoch + 1}/{cfg.epochs} val (EMA)", epoch=epoch)
    row.update(ema_top1=val["val_top1"], ema_top5=val["val_top5"], ema_loss=val["val_loss"])
    improved = math.isfinite(val["val_top1"]) and val["val_top1"] > state.best_ema_top1
    if improved:
        state.best_ema_top1, state.best_ema_epoch = val["val_top1"], epoch
    return improved


def fit(model: nn.Module, train_loader: Any, val_loader: Any, optimizer: torch.optim.Optimizer, *,
        ctx: DistContext, cfg: FitConfig, scheduler: Any = None, scaler: Any = None,
        state: Optional[TrainState] = None, log: Callable[[str], None] = print,
        ema: Optional[ModelEma] = None) -> dict[str, Any]:
    """Train from `state.epoch` to `cfg.epochs`, evaluating after every epoch; return the summary.

    `model` is what the training step calls (possibly `DDP(ManifoldMixup(net))`); evaluation and checkpoints
    use the bare `unwrap(model)`. Every epoch (rank 0, when `cfg.output` is set): a line in `metrics.jsonl`,
    `checkpoint.pt` (model, optimizer, scheduler, AMP scaler, epoch, every rank's RNG and DALI pipeline state),
    `best.pt` when val top-1 improved, `curves.png` and `summary.json`. Each epoch's line and row carry its
    input wait; the first epoch whose worst rank waits more than `cfg.input_wait_threshold` of its training
    time for input logs one line naming the tuning command (`cfg.tune_command`, or one made from the loader).
    With `ema` (the weights' moving average), it is updated after every optimizer step, evaluated beside the
    model each epoch (`ema_top1`, `ema_top5`, `ema_loss` in the row), kept in the checkpoint, and written as
    `best_ema.pt` when its top-1 improves.
    """
    state = state or TrainState()
    net = unwrap(model)
    out = cfg.output if ctx.is_main else None
    if out:
        os.makedirs(out, exist_ok=True)
        # A resumed run rewrites the log from the checkpoint's history (dropping epochs past it) and repairs
        # what a crash between two writes left behind.
        repair_outputs(out, state, cfg, ctx, log=log)
    start_wall, prior_wall = time.perf_counter(), state.wall_time
    summary: dict[str, Any] = {}
    warned = False  # the input-wait line is said once per run
    last = cfg.epochs if cfg.stop_epoch is None else min(cfg.epochs, cfg.stop_epoch)
    for epoch in range(state.epoch, last):
        t0 = time.perf_counter()
        manifold = cfg.manifold and (cfg.mix_off_epoch is None or epoch < cfg.mix_off_epoch)
        train = train_one_epoch(model, train_loader, optimizer, ctx=ctx, epoch=epoch, epochs=cfg.epochs,
                                scheduler=scheduler, scaler=scaler, amp_dtype=cfg.amp_dtype, manifold=manifold,
                                max_grad_norm=cfg.max_grad_norm, progress=cfg.progress,
                                print_freq=cfg.print_freq, recorder=cfg.recorder, criterion=cfg.criterion,
                                after_step=(lambda: ema.step(net)) if ema is not None else None)
        dali_state = dali_checkpoint(train_loader)
        val = evaluate(net, val_loader, ctx=ctx, amp_dtype=cfg.amp_dtype, progress=cfg.progress,
                       desc=f"epoch {epoch + 1}/{cfg.epochs} val", epoch=epoch, recorder=cfg.recorder)
        row = _row(epoch, train, val, time.perf_counter() - t0, manifold)
        ema_improved = _evaluate_ema(ema, val_loader, ctx, cfg, epoch, state, row) if ema is not None else False
        state.history.append(row)
        improved = math.isfinite(val["val_top1"]) and val["val_top1"] > state.best_top1
        if improved:
            state.best_top1, state.best_top5, state.best_epoch = val["val_top1"], val["val_top5"], epoch
        state.epoch = epoch + 1
        state.wall_time = prior_wall + (time.perf_counter() - start_wall)
        if ctx.is_main:
            warned = _log_epoch(row, cfg, ctx, train_loader, warned, log)
        # Every rank's RNG and DALI state go into the checkpoint (collective: all ranks take part).
        rngs = ctx.all_gather_object(rng_state())
        dalis = ctx.all_gather_object(dali_state)
        summary = run_summary(state, cfg, ctx)
        if out:
            checkpoint = {
                "version": CHECKPOINT_VERSION, "epoch": epoch, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs, "dali": dalis, "first_epoch": cfg.first_epoch,
                "world_size": ctx.world_size, "history": list(state.history), "best_top1": state.best_top1,
                "best_top5": state.best_top5, "best_epoch": state.best_epoch, "wall_time": state.wall_time,
                "run_info": cfg.run_info,
            }
            if ema is not None:
                checkpoint.update(ema=ema.state_dict(), best_ema_top1=state.best_ema_top1,
                                  best_ema_epoch=state.best_ema_epoch)
            _write_epoch(out, checkpoint, improved, state, cfg, summary, ema_improved)
        ctx.barrier()
    if cfg.recorder is not None and cfg.recorder_path:
        cfg.recorder.dump(cfg.recorder_path)
    if not summary:
        summary = run_summary(state, cfg, ctx)
        if out:
            write_json(os.path.join(out, "summary.json"), summary)
    return summary
