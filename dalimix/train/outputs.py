"""What `fit` writes in its output folder (metrics.jsonl, summary.json, curves.png beside the checkpoints),
and making those files agree with the checkpoint again after a crash between two writes."""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dalimix.atomic_files import json_safe, write_text
from dalimix.train.checkpoint import checkpoint_epoch, copy_atomic, load_checkpoint, save_checkpoint
from dalimix.train.ema import best_ema_checkpoint
from dalimix.train.distributed import DistContext
from dalimix.train.state import FitConfig, TrainState
from dalimix.train.wait_clock import INPUT_WAIT_THRESHOLD


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def write_metrics(path: str, history: Sequence[Mapping[str, Any]]) -> None:
    # The whole log every epoch (a few KB): an appended line could be cut in half by a crash.
    write_text(path, "".join(json.dumps(json_safe(dict(row))) + "\n" for row in history))


# What fit writes in `output`, and the temporary names a crash can leave behind.
OUTPUT_FILES = ("checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json", "curves.png")
_TMP_FILES = tuple(f"{name}.tmp" for name in OUTPUT_FILES) + ("curves.png.tmp.png",)


def plot(history: Sequence[Mapping[str, Any]], path: str, title: str,
          wait_threshold: float = INPUT_WAIT_THRESHOLD) -> None:
    from dalimix.train.curves import plot_curves

    try:
        plot_curves(history, path, title=title, wait_threshold=wait_threshold)  # a tmp file, then renamed
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not kill a training run
        warnings.warn(f"could not draw {path}: {exc}")


def _repair_best_ema(output: str, state: TrainState, source: Any) -> list[str]:
    """`best_ema.pt` rebuilt from the checkpoint resumed from, when that holds the moving average's best epoch
    and the file does not (a crash between the checkpoint and it)."""
    path = os.path.join(output, "best_ema.pt")
    if state.best_ema_epoch < 0 or not source or not os.path.isfile(source):
        return []
    if os.path.isfile(path) and checkpoint_epoch(path) == state.best_ema_epoch:
        return []
    if checkpoint_epoch(source) != state.best_ema_epoch:
        return []
    save_checkpoint(path, best_ema_checkpoint(load_checkpoint(source)))
    return [f"best_ema.pt rebuilt from {os.path.basename(source)} (epoch {state.best_ema_epoch + 1})"]


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
                    copy_atomic(source, best)
                    fixed.append(f"best.pt rebuilt from {os.path.basename(source)} (epoch {state.best_epoch + 1})")
            elif best_epoch is not None:
                warnings.warn(f"{best} holds epoch {best_epoch + 1} but {source} says the best is epoch "
                              f"{state.best_epoch + 1}, which neither file holds; best.pt is left as it is")
    fixed += _repair_best_ema(output, state, source)
    metrics_path = os.path.join(output, "metrics.jsonl")
    expected = "".join(json.dumps(json_safe(dict(row))) + "\n" for row in state.history)
    current = open(metrics_path).read() if os.path.isfile(metrics_path) else None
    if current != expected:
        write_text(metrics_path, expected)
        if current is not None and state.history:
            fixed.append("metrics.jsonl")
    if state.history:
        plot(state.history, os.path.join(output, "curves.png"), cfg.plot_title, cfg.input_wait_threshold)
        summary_path = os.path.join(output, "summary.json")
        summary = run_summary(state, cfg, ctx)
        try:
            with open(summary_path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = None
        if old is None or old.get("epochs_completed") != summary["epochs_completed"] \
                or old.get("best_epoch") != summary["best_epoch"]:
            fixed.append("summary.json")
        write_json(summary_path, summary)
    if fixed:
        log(f"repaired the outputs in {output} to agree with the checkpoint (epoch {state.epoch}): {', '.join(fixed)}")
    return fixed


def share_text(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _finite(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def run_summary(state: TrainState, cfg: FitConfig, ctx: DistContext) -> dict[str, Any]:
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
        **({"final_ema_top1": last.get("ema_top1"), "best_ema_top1": state.best_ema_top1,
            "best_ema_epoch": state.best_ema_epoch} if state.best_ema_epoch >= 0 else {}),
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
