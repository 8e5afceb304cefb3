"""Training curves as a PNG: loss and top-1 accuracy per epoch (matplotlib, Agg backend, no display)."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

__all__ = ["plot_curves"]


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "") -> str:
    """Draw train/val loss and val top-1/top-5 against epoch from `history` rows; return the PNG path.

    Each row holds `epoch` (0-based) and any of `train_loss`, `val_loss`, `val_top1`, `val_top5`. Epochs
    are drawn 1-based, as progress bars and logs print them.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    del plt  # pyplot is not needed: a bare Figure keeps no global state between calls
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) + 1 for r in history]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(e, float(r[key])) for e, r in zip(epochs, history) if r.get(key) is not None]
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
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if ax is ax_loss else "lower right")
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
