"""Training curves as a PNG: loss, top-1 accuracy and input wait per epoch (matplotlib, Agg backend, no display)."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from dalimix.atomic_files import save_figure

__all__ = ["plot_curves"]

WAIT_THRESHOLD = 0.10  # drawn as a dashed line on the input-wait panel (dalimix.train.INPUT_WAIT_THRESHOLD)


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "",
                wait_threshold: float = WAIT_THRESHOLD) -> str:
    """Draw train/val loss, val top-1/top-5 and input wait against epoch from `history` rows; return the PNG path.

    Each row holds `epoch` (0-based) and any of `train_loss`, `val_loss`, `val_top1`, `val_top5`, and
    `input_wait` / `input_wait_max` (shares of training time spent waiting for batches, mean and worst rank).
    Epochs are drawn 1-based, as progress bars and logs print them. The input-wait panel shows
    `wait_threshold` as a dashed line; rows without input wait (runs from before it was measured) leave
    the panel empty with a note.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) keeps no global state between calls.
    fig = Figure(figsize=(14, 4), dpi=100)
    ax_loss, ax_acc, ax_wait = fig.subplots(1, 3)
    epochs = [int(r["epoch"]) + 1 for r in history]
    marker = "o" if len(epochs) <= 30 else None
    _loss_panel(ax_loss, history, epochs, marker)
    _accuracy_panel(ax_acc, history, epochs, marker)
    _wait_panel(ax_wait, history, epochs, marker, wait_threshold)
    for ax in (ax_loss, ax_acc, ax_wait):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is ax_acc else "upper right")
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _series(history: Sequence[Mapping[str, float]], epochs: list[int], key: str,
            scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of the rows where `key` holds a finite number."""
    pts = [(e, float(r[key]) * scale) for e, r in zip(epochs, history)
           if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _loss_panel(ax, history, epochs, marker) -> None:
    for key, label in (("train_loss", "train (mixed targets)"), ("val_loss", "val")):
        x, y = _series(history, epochs, key)
        if x:
            ax.plot(x, y, marker=marker, label=label)
    losses = [v for line in ax.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
        ax.set_yscale("log")  # one diverged epoch must not flatten the rest of the curve
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("loss")


def _accuracy_panel(ax, history, epochs, marker) -> None:
    for key, label in (("val_top1", "val top-1"), ("val_top5", "val top-5"), ("ema_top1", "EMA val top-1")):
        x, y = _series(history, epochs, key)
        if x:
            ax.plot(x, y, marker=marker, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("validation accuracy")


def _wait_panel(ax, history, epochs, marker, wait_threshold: float) -> None:
    waits = _series(history, epochs, "input_wait", 100.0)
    worst = _series(history, epochs, "input_wait_max", 100.0)
    if waits[0]:
        ax.plot(*waits, marker=marker, label="mean over ranks")
        if worst[0] and worst[1] != waits[1]:
            ax.plot(*worst, marker=marker, linestyle=":", label="worst rank")
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.axhline(100.0 * wait_threshold, color="#c44e52", linestyle="--", linewidth=1,
               label=f"{wait_threshold:.0%}: tune the loader")
    top = max([100.0 * wait_threshold * 2] + waits[1] + worst[1])
    ax.set_ylim(0, min(100.0, top * 1.15))
    ax.set_xlabel("epoch")
    ax.set_ylabel("% of training time")
    ax.set_title("waiting for input")
