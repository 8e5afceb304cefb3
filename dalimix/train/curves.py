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
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    del plt  # pyplot is not needed: a bare Figure keeps no global state between calls
    fig = Figure(figsize=(14, 4), dpi=100)
    ax_loss, ax_acc, ax_wait = fig.subplots(1, 3)
    epochs = [int(r["epoch"]) + 1 for r in history]

    def series(key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
        pts = [(e, float(r[key]) * scale) for e, r in zip(epochs, history)
               if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        return [p[0] for p in pts], [p[1] for p in pts]

    marker = "o" if len(epochs) <= 30 else None
    for key, label in (("train_loss", "train (mixed targets)"), ("val_loss", "val")):
        x, y = series(key)
        if x:
            ax_loss.plot(x, y, marker=marker, label=label)
    losses = [v for line in ax_loss.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
        ax_loss.set_yscale("log")  # one diverged epoch must not flatten the rest of the curve
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    for key, label in (("val_top1", "val top-1"), ("val_top5", "val top-5")):
        x, y = series(key)
        if x:
            ax_acc.plot(x, y, marker=marker, label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.set_title("validation accuracy")

    waits = series("input_wait", 100.0)
    worst = series("input_wait_max", 100.0)
    if waits[0]:
        ax_wait.plot(*waits, marker=marker, label="mean over ranks")
        if worst[0] and worst[1] != waits[1]:
            ax_wait.plot(*worst, marker=marker, linestyle=":", label="worst rank")
    else:
        ax_wait.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_wait.transAxes,
                     color="grey")
    ax_wait.axhline(100.0 * wait_threshold, color="#c44e52", linestyle="--", linewidth=1,
                    label=f"{wait_threshold:.0%}: tune the loader")
    top = max([100.0 * wait_threshold * 2] + waits[1] + worst[1])
    ax_wait.set_ylim(0, min(100.0, top * 1.15))
    ax_wait.set_xlabel("epoch")
    ax_wait.set_ylabel("% of training time")
    ax_wait.set_title("waiting for input")
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
