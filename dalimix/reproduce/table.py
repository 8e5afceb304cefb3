"""The comparison's table (each method's error minus ERM's, paired by seed) and its curves."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from dalimix.atomic_files import save_figure
from dalimix.reproduce.label_noise import PAPER_NOISE_ERRORS, paper_level
from dalimix.reproduce.recipes import PAPER_FIGURES, PAPER_NOTES, Method, Recipe

NOISE_COLUMNS = ("train_error_noisy_real", "train_error_noisy_given", "train_error_clean", "corrupted_share")

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
                     "vs_erm": _paired_vs(mine, erm) if erm and m.name != "erm" else None,
                     **{f"{key}_{stat}": value for key in NOISE_COLUMNS
                        for stat, value in zip(("mean", "std"), _mean_std([r.get(key) for r in mine]))}})
    return rows


def _pm(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {std:.2f}" if n > 1 else f"{mean:.2f}"


def _versus(vs: Optional[Mapping[str, Any]]) -> str:
    if not vs or not vs["n"]:
        return "-"
    text = f"{vs['diff_mean']:+.2f}" + (f" +- {vs['diff_std']:.2f}" if vs["n"] > 1 else "")
    return text + (f" (t {vs['t']:+.1f})" if vs["t"] is not None else "")


def format_table(rows: Sequence[Mapping[str, Any]], recipe: Recipe, val_note: str = "") -> str:
    """The comparison as a Markdown table (val error % after the last epoch, mean +- sample std over seeds);
    with label noise, Zhang et al.'s Table 2 columns (see `format_noise_table`)."""
    if recipe.label_noise:
        return format_noise_table(rows, recipe, val_note)
    lines = [f"Recipe `{recipe.name}`: {recipe.summary()}. Val error (%) after epoch "
             f"{recipe.epochs}, mean +- sample std over seeds." + (f" {_sentence(val_note)}" if val_note else ""), "",
             "| method | papers' CIFAR-10 error % | error % | seeds | per seed | vs ERM (paired) | best-epoch error % "
             "| val loss | final train loss | min/run |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = len(r["seeds"])
        per_seed = ", ".join(f"{e:.1f}" for e in r["errors"] if e is not None) or "-"
        loss = "-" if r["final_train_loss"] is None else f"{r['final_train_loss']:.3f}"
        minutes = "-" if r["minutes_per_run"] is None else f"{r['minutes_per_run']:.1f}"
        versus = _versus(r.get("vs_erm"))
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


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def format_noise_table(rows: Sequence[Mapping[str, Any]], recipe: Recipe, val_note: str = "") -> str:
    """Zhang et al.'s Table 2 columns per method: val error at the last and the best epoch, and training
    error on the corrupted samples against their real and their corrupted labels (mean +- std over seeds)."""
    level = paper_level(recipe.label_noise)
    paper = PAPER_NOISE_ERRORS[level] if recipe.noise_kind == "symmetric" else {}
    lines = [f"Recipe `{recipe.name}`: {recipe.summary()}. Errors in %, mean +- sample std over seeds; each seed "
             f"corrupts the labels once, the same for every method." + (f" {_sentence(val_note)}" if val_note else ""),
             "",
             f"| method | paper {100 * level:g}% best / last | val error, last epoch | val error, best epoch "
             f"| train error vs real labels (corrupted samples) | train error vs corrupted labels (corrupted samples) "
             f"| train error (clean samples) | last-epoch error vs ERM (paired) | val loss | min/run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = len(r["seeds"])
        fig = paper.get(r["method"])
        val_loss = "-" if r.get("val_loss_mean") is None else f"{r['val_loss_mean']:.3f}"
        minutes = "-" if r["minutes_per_run"] is None else f"{r['minutes_per_run']:.1f}"
        cols = [_pm(r.get(f"{k}_mean"), r.get(f"{k}_std"), n) for k in NOISE_COLUMNS[:3]]
        lines.append(f"| {r['label']} | {'-' if fig is None else f'{fig[0]:g} / {fig[1]:g}'} "
                     f"| {_pm(r['error_mean'], r['error_std'], n)} | {_pm(r['best_error_mean'], r['best_error_std'], n)} "
                     f"| {' | '.join(cols)} | {_versus(r.get('vs_erm'))} | {val_loss} | {minutes} |")
    share = [r.get("corrupted_share_mean") for r in rows if r.get("corrupted_share_mean") is not None]
    lines += ["", f"Corrupted samples (given label differs from the real one): {share[0]:.1f}% of the training set."
              if share else "",
              f"Paper: Zhang et al. 2018, Table 2, CIFAR-10 with {100 * level:g}% symmetric label noise, PreAct "
              f"ResNet-18, 200 epochs, test error at the best / last epoch (mixup with alpha "
              f"{8 if level == 0.2 else 32}); ERM's training error against the corrupted labels there is 0.28-0.83% "
              f"(it memorises them), mixup's about 86% (it does not). Training errors here are measured after the "
              f"last epoch without augmentation (the val transform)."]
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
