"""The comparison's table (each method's error minus ERM's, paired by seed) and its curves."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from dalimix.atomic_files import save_figure
from dalimix.reproduce.recipes import PAPER_FIGURES, PAPER_NOTES, Method, Recipe

def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def _paired_vs(mine: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Final error minus the baseline's, seed by seed (every method of one seed starts from the same weights, so
    the difference is paired): mean, sample std, count and t = mean / (std / sqrt(n))."""
    ref = {r["seed"]: r["final_error"] for r in base if r["final_error"] is not None}
    diffs = [float(r["final_error"]) - float(ref[r["seed"]]) for r in mine
             if r["final_error"] is not None and r["seed"] in ref]
    mean, std = _mean_std(diffs)
    t = None
    if len(diffs) > 1 and std:
        t = mean / (std / math.sqrt(len(diffs)))
    return {"diff_mean": mean, "diff_std": std, "n": len(diffs), "t": t}


def summarize(runs: Sequence[Mapping[str, Any]], methods: Sequence[Method]) -> list[dict[str, Any]]:
    """One row per method: final val error mean and sample std over seeds (and best-epoch error, train loss),
    and its difference to ERM's, seed by seed, when ERM is among the methods."""
    rows = []
    erm = [r for r in runs if r["method"] == "erm"]
    for m in methods:
        mine = [r for r in runs if r["method"] == m.name]
        mean, std = _mean_std([r["final_error"] for r in mine])
        best_mean, best_std = _mean_std([r["best_error"] for r in mine])
        loss_mean, _ = _mean_std([r["final_train_loss"] for r in mine])
        val_loss_mean, val_loss_std = _mean_std([r.get("final_val_loss") for r in mine])
        wall_mean, _ = _mean_std([r["wall_time"] for r in mine])
        rows.append({"method": m.name, "label": m.label, "paper": PAPER_FIGURES.get(m.name, "-"),
                     "seeds": [r["seed"] for r in mine], "errors": [r["final_error"] for r in mine],
                     "error_mean": mean, "error_std": std, "best_error_mean": best_mean, "best_error_std": best_std,
                     "final_train_loss": loss_mean, "val_loss_mean": val_loss_mean, "val_loss_std": val_loss_std,
                     "minutes_per_run": None if wall_mean is None else wall_mean / 60,
                     "vs_erm": _paired_vs(mine, erm) if erm and m.name != "erm" else None})
    return rows


def _pm(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {std:.2f}" if n > 1 else f"{mean:.2f}"


def format_table(rows: Sequence[Mapping[str, Any]], recipe: Recipe) -> str:
    """The comparison as a Markdown table (val error % after the last epoch, mean +- sample std over seeds)."""
    lines = [f"Recipe `{recipe.name}`: {recipe.summary()}. Val error (%) after epoch "
             f"{recipe.epochs}, mean +- sample std over seeds.", "",
             "| method | papers' CIFAR-10 error % | error % | seeds | per seed | vs ERM (paired) | best-epoch error % "
             "| val loss | final train loss | min/run |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = len(r["seeds"])
        per_seed = ", ".join(f"{e:.1f}" for e in r["errors"] if e is not None) or "-"
        loss = "-" if r["final_train_loss"] is None else f"{r['final_train_loss']:.3f}"
        minutes = "-" if r["minutes_per_run"] is None else f"{r['minutes_per_run']:.1f}"
        vs = r.get("vs_erm")
        versus = "-"
        if vs and vs["n"]:
            versus = f"{vs['diff_mean']:+.2f}" + (f" +- {vs['diff_std']:.2f}" if vs["n"] > 1 else "")
            versus += f" (t {vs['t']:+.1f})" if vs["t"] is not None else ""
        val_loss = "-" if r.get("val_loss_mean") is None else (
            f"{r['val_loss_mean']:.3f}" + (f" +- {r['val_loss_std']:.3f}" if n > 1 else ""))
        lines.append(f"| {r['label']} | {r['paper']} | {_pm(r['error_mean'], r['error_std'], n)} | {n} | {per_seed} "
                     f"| {versus} | {_pm(r['best_error_mean'], r['best_error_std'], n)} | {val_loss} | {loss} "
                     f"| {minutes} |")
    lines += ["", PAPER_NOTES, "Val loss: cross-entropy on the val set after the last epoch (an overconfident, memorising model scores "
              "high). Train loss is against the mixed targets, so it is higher for the mixing methods. "
              "vs ERM: the method's error minus ERM's, seed by seed (the same seed starts from the same weights), "
              "mean +- sample std and t = mean / (std / sqrt(seeds)); |t| > 4.3 is p < 0.05 with 3 seeds."]
    return "\n".join(lines) + "\n"


def plot_results(runs: Sequence[Mapping[str, Any]], methods: Sequence[Method], path: str, title: str = "") -> str:
    """Val error, val loss and train loss per epoch, one line per method (mean over seeds, band min..max); a PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.6), dpi=100)
    ax_err, ax_val, ax_loss = fig.subplots(1, 3)
    for m in methods:
        hists = [r["history"] for r in runs if r["method"] == m.name and r["history"]]
        if not hists:
            continue
        epochs = sorted({int(row["epoch"]) for h in hists for row in h})
        for ax, key, to_value in ((ax_err, "val_top1", lambda v: 100.0 - v), (ax_val, "val_loss", lambda v: v),
                                  (ax_loss, "train_loss", lambda v: v)):
            xs, mean, lo, hi = [], [], [], []
            for e in epochs:
                vals = [to_value(float(row[key])) for h in hists for row in h
                        if int(row["epoch"]) == e and row.get(key) is not None and math.isfinite(float(row[key]))]
                if vals:
                    xs.append(e + 1)
                    mean.append(sum(vals) / len(vals))
                    lo.append(min(vals))
                    hi.append(max(vals))
            if not xs:
                continue
            line, = ax.plot(xs, mean, label=f"{m.label} (n={len(hists)})", marker="o" if len(xs) <= 30 else None,
                            markersize=3)
            if len(hists) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax_err.set_title("val error (mean over seeds, band: min..max)")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("top-1 error (%)")
    ax_val.set_title("val loss")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("cross-entropy")
    ax_loss.set_title("train loss (against the mixed targets)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    for ax in (ax_err, ax_val, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
