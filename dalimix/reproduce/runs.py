"""Training every method of a recipe for every seed into one output folder, each run through dalimix's
run builder (`dalimix.train.run`); finished runs are read back, unfinished ones resumed."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

from dalimix.atomic_files import json_safe, write_text
from dalimix.reproduce.label_noise import NoisyLabels, noisy_labels, train_errors
from dalimix.reproduce.recipes import Method, Recipe
from dalimix.reproduce.subsets import (ValSource, class_files, comparison_classes, first_per_class, resolve_val,
                                      write_list)
from dalimix.reproduce.table import format_table, plot_results, summarize

PipelineFactory = Callable[..., Any]

NOISE_REPORT = "noise_report.json"


def _run_info(recipe: Recipe, method: Method, seed: int, classes: Sequence[str],
              val: Optional[ValSource] = None, data: str = "") -> dict[str, Any]:
    info = {"recipe": recipe.describe(), "method": method.describe(), "seed": int(seed), "classes": list(classes)}
    # Validation on anything but data/val is recorded: a run on other val data is another run.
    default_val = os.path.abspath(os.path.join(data, "val"))
    if val is not None and (val.file_list is not None or os.path.abspath(val.root) != default_val):
        info["val"] = val.describe()
    return json.loads(json.dumps(info))  # as summary.json and checkpoints give it back (tuples are lists)


def _defaults(cls: Any) -> dict[str, Any]:
    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(cls)
                                  if f.default is not dataclasses.MISSING}))


def _same_run(info: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Names of the settings in which a stored run differs from the one asked for. A setting a stored run
    predates counts as its default."""
    diff = [key for key in ("seed", "classes", "val") if info.get(key) != expected.get(key)]
    old_m, new_m, m_defaults = info.get("method") or {}, expected["method"], _defaults(Method)
    if any(old_m.get(k, m_defaults.get(k)) != v for k, v in new_m.items()):
        diff.append("method")
    old, new, r_defaults = info.get("recipe") or {}, expected["recipe"], _defaults(Recipe)
    # The description, seed list and thread counts do not change what a run computes.
    # (val_per_class acts through the held-out set, which "val" records.)
    ignore = {"name", "description", "seeds", "threads", "torch_threads", "val_per_class"}
    diff += [f"recipe.{k}" for k in new if k not in ignore and old.get(k, r_defaults.get(k)) != new[k]]
    return diff


def _read_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_history(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return []


def _finished(run_dir: str, expected: Mapping[str, Any], epochs: int) -> Optional[dict[str, Any]]:
    """The result of a finished run in `run_dir` with the same settings, None when there is none.

    Raises ValueError naming the folder when it holds a run of other settings."""
    summary = _read_json(os.path.join(run_dir, "summary.json"))
    if summary is None:
        return None
    diff = _same_run(summary.get("reproduce", {}), expected)
    if diff:
        raise ValueError(f"output: {run_dir} holds a run with other settings (differs in {', '.join(diff)}); "
                         f"write to another --output, or delete that folder to train it again")
    if int(summary.get("epochs_completed", 0)) < epochs:
        return None
    noise = _read_json(os.path.join(run_dir, NOISE_REPORT))
    if expected["recipe"].get("label_noise") and noise is None and os.path.isfile(os.path.join(run_dir,
                                                                                             "checkpoint.pt")):
        return None  # stopped between the last epoch and the training errors: resume (no epoch left) and measure
    return _result(summary, _read_history(os.path.join(run_dir, "metrics.jsonl")), run_dir, noise)


def _result(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], run_dir: str,
            noise: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    info = summary.get("reproduce", {})
    final_top1 = summary.get("final_val_top1")
    best_top1 = summary.get("best_val_top1")
    return {
        "method": info.get("method", {}).get("name"),
        "seed": info.get("seed"),
        "run_dir": run_dir,
        "final_error": None if final_top1 is None else 100.0 - float(final_top1),
        "best_error": None if best_top1 is None else 100.0 - float(best_top1),
        "best_epoch": summary.get("best_epoch"),
        "final_train_loss": summary.get("final_train_loss"),
        "final_val_loss": summary.get("final_val_loss"),
        "images_per_sec": summary.get("images_per_sec"),
        "wall_time": summary.get("wall_time"),
        "num_params": summary.get("num_params"),
        "train_images": summary.get("train_images"),
        "history": [{k: row.get(k) for k in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
                                             "images_per_sec", "epoch_time")} for row in history],
        **dict(noise or {}),
    }


def train_run(data: str, recipe: Recipe, method: Method, seed: int, run_dir: str, *, classes: Sequence[str],
              train_pipeline: Optional[PipelineFactory] = None, val_pipeline: Optional[PipelineFactory] = None,
              progress: bool = True, keep_checkpoints: bool = False, val: Optional[ValSource] = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one model of `method` with `recipe` and `seed` into `run_dir`; return its result.

    A finished run of the same settings in `run_dir` is read back instead of trained again; an unfinished one
    (its `checkpoint.pt`) is resumed. `data` holds `train/` (and `val/` unless `val` says where to
    validate); `train_pipeline` and `val_pipeline` replace dalimix's ImageNet pipeline builders (any with
    their arguments). With `recipe.label_noise` the training labels are corrupted (seeded by `seed`, the same
    for every method) and the result has the training errors against the real and the corrupted labels.
    """
    import torch

    from dalimix.train.distributed import DistContext
    from dalimix.train.resume import Resume
    from dalimix.train.run import build_run

    val = val or ValSource(os.path.join(data, "val"), None, "")
    expected = _run_info(recipe, method, seed, classes, val, data)
    done = _finished(run_dir, expected, recipe.epochs)
    if done is not None:
        log(f"{os.path.basename(run_dir)}: finished earlier, {done['final_error']:.2f}% error (read from {run_dir})")
        return done
    resume = None
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    if os.path.isfile(ckpt_path):
        resume = Resume.load(ckpt_path)
        diff = _same_run((resume.checkpoint.get("run_info") or {}).get("reproduce", {}), expected)
        if diff:
            raise ValueError(f"output: {ckpt_path} is a run with other settings (differs in {', '.join(diff)}); "
                             f"write to another --output, or delete {run_dir} to train it again")
    if recipe.device == "gpu" and not torch.cuda.is_available():
        raise ValueError("device: the recipe asks for 'gpu' but torch sees no CUDA device (use --device cpu or "
                         "--recipe cpu)")
    ctx = DistContext(device=torch.device("cuda", torch.cuda.current_device()) if recipe.device == "gpu"
                      else torch.device("cpu"))
    file_list, noisy = _train_list(data, recipe, seed, run_dir, classes)
    from dalimix.pipelines import imagenet
    factories = (train_pipeline or imagenet.train_pipeline, val_pipeline or imagenet.val_pipeline)
    run = build_run(run_config(data, recipe, method, seed, run_dir, classes, file_list=file_list,
                               progress=progress, val=val), ctx,
                    resume=resume, resume_prefix=ckpt_path, run_info={"reproduce": expected}, log=log,
                    factories=factories)
    if resume is not None:
        log(f"{os.path.basename(run_dir)}: resuming at epoch {resume.start_epoch + 1} of {recipe.epochs}")
    summary = run.fit()
    noise = None if noisy is None else _measure_noise(run.net, noisy, data, recipe, classes, run_dir, factories[1],
                                                      ctx, log)
    if not keep_checkpoints:
        for name in ("checkpoint.pt", "best.pt"):
            path = os.path.join(run_dir, name)
            if os.path.exists(path):
                os.remove(path)
    return _result(summary, run.state.history, run_dir, noise)


def _measure_noise(net: Any, noisy: NoisyLabels, data: str, recipe: Recipe, classes: Sequence[str], run_dir: str,
                   pipeline: PipelineFactory, ctx: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The finished run's training errors against the real and the corrupted labels, written to its folder."""
    noise = train_errors(net, noisy, os.path.join(data, "train"), run_dir, pipeline=pipeline, classes=classes,
                         batch_size=recipe.batch_size, crop=recipe.crop, resize=recipe.val_resize,
                         device=recipe.device, threads=recipe.threads, channels_last=recipe.channels_last, ctx=ctx)
    write_text(os.path.join(run_dir, NOISE_REPORT), json.dumps(json_safe(noise), indent=1) + "\n")
    if noise["train_error_noisy_real"] is None:
        log(f"{os.path.basename(run_dir)}: no training label was changed by the corruption; nothing to measure")
    else:
        log(f"{os.path.basename(run_dir)}: training error on the {noise['corrupted_share']:.1f}% corrupted samples: "
            f"{noise['train_error_noisy_real']:.1f}% against their real labels, "
            f"{noise['train_error_noisy_given']:.1f}% against the corrupted ones")
    return noise


def _train_list(data: str, recipe: Recipe, seed: int, run_dir: str,
                classes: Sequence[str]) -> tuple[Optional[str], Optional[NoisyLabels]]:
    """The run's train file list (None: all of train/) and, with label noise, its corrupted labels."""
    if recipe.train_per_class is None and not recipe.label_noise:
        return None, None
    train_dir = os.path.join(data, "train")
    files, labels = first_per_class(class_files(train_dir, classes), recipe.train_per_class, classes, train_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not recipe.label_noise:
        return write_list(os.path.join(run_dir, "train_files.txt"), files, labels), None
    noisy = noisy_labels(files, labels, len(classes), recipe.label_noise, recipe.noise_kind, seed)
    return noisy.write(run_dir)[0], noisy


def run_config(data: str, recipe: Recipe, method: Method, seed: int, run_dir: str, classes: Sequence[str], *,
               file_list: Optional[str] = None, progress: bool = True, val: Optional[ValSource] = None) -> Any:
    """The `dalimix.train.run.RunConfig` of one run of `method` under `recipe` (validating on `val`, default
    `data/val`)."""
    from dalimix.train.run import RunConfig

    val = val or ValSource(os.path.join(data, "val"), None, "")
    return RunConfig(
        train_data=os.path.join(data, "train"), val_data=val.root, val_file_list=val.file_list, classes=list(classes),
        epochs=recipe.epochs, batch_size=recipe.batch_size, crop=recipe.crop, val_resize=recipe.val_resize,
        scale=tuple(recipe.scale), train_file_list=file_list, device=recipe.device, threads=recipe.threads,
        channels_last=recipe.channels_last, seed=seed, mix=method.mix_config(len(classes)),
        manifold_alpha=method.manifold_alpha, manifold_layers=list(method.manifold_layers) or None,
        manifold_input=method.manifold_input, manifold_mode=method.manifold_mode, arch=recipe.arch, width=recipe.width, lr=recipe.lr,
        momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
        decay_norm_bias=recipe.decay_norm_bias, warmup_epochs=recipe.warmup_epochs, schedule=recipe.schedule,
        milestones=tuple(recipe.milestones), gamma=recipe.gamma, amp=recipe.amp, torch_threads=recipe.torch_threads,
        output=run_dir, progress=progress, plot_title=f"{method.label}, seed {seed}")

# -- all runs ----------------------------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__}
    if hasattr(os, "sched_getaffinity"):
        info["cores_available"] = len(os.sched_getaffinity(0))
    try:
        from importlib.metadata import PackageNotFoundError, version
        for dist in ("torchvision", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130"):
            try:
                info[dist] = version(dist)
            except PackageNotFoundError:
                pass
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _write_outputs(output: str, recipe: Recipe, methods: Sequence[Method], runs: Sequence[Mapping[str, Any]],
                   meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = summarize(runs, methods)
    table = format_table(rows, recipe, val_note=str(meta.get("val", "")))
    write_text(os.path.join(output, "table.md"), table)
    results = {**meta, "recipe": recipe.describe(), "methods": [m.describe() for m in methods],
               "table": rows, "runs": list(runs)}
    write_text(os.path.join(output, "results.json"), json.dumps(json_safe(results), indent=1) + "\n")
    try:
        plot_results(runs, methods, os.path.join(output, "curves.png"),
                     title=f"{recipe.arch} (width {recipe.width}), recipe {recipe.name}: "
                           f"{os.path.basename(os.path.abspath(meta.get('data', '')))}")
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the runs
        warnings.warn(f"could not draw {os.path.join(output, 'curves.png')}: {exc}")
    return rows


def run(data: str, recipe: Recipe, methods: Sequence[Method], output: str, *,
        train_pipeline: Optional[PipelineFactory] = None, val_pipeline: Optional[PipelineFactory] = None,
        progress: bool = True, keep_checkpoints: bool = False, val_data: Optional[str] = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every method for every seed of `recipe` on `data` (train/ and val/); write and return the results.

    Validation: `val_data` (a folder, or "unused" for the train images a `train_per_class` recipe leaves
    out), else `data/val`, else those unused train images (see `subsets.resolve_val`); the log says which.

    Seeds are the outer loop, so an interrupted comparison has all methods of the first seeds. After each
    run `results.json`, `table.md` and `curves.png` in `output` are rewritten. Returns results.json's content.
    """
    from tqdm import tqdm

    classes = comparison_classes(data, val_data)
    if not methods:
        raise ValueError("methods: give at least one method")
    os.makedirs(os.path.join(output, "runs"), exist_ok=True)
    val = resolve_val(data, val_data, classes, recipe.train_per_class, recipe.val_per_class, output)
    log(val.note)
    meta: dict[str, Any] = {"data": os.path.abspath(data), "val": val.note, "machine": _machine(),
                            "command": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    plan = [(seed, m) for seed in recipe.seeds for m in methods]
    bar = tqdm(plan, desc="runs", unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for seed, m in bar:
        bar.set_postfix_str(f"{m.name} seed {seed}")
        result = train_run(data, recipe, m, seed, os.path.join(output, "runs", f"{m.name}_s{seed}"),
                           classes=classes, train_pipeline=train_pipeline, val_pipeline=val_pipeline,
                           progress=progress, keep_checkpoints=keep_checkpoints, val=val, log=log)
        runs.append(result)
        log(f"{m.name} seed {seed}: val error {result['final_error']:.2f}% after {recipe.epochs} epochs")
        meta["elapsed_s"] = time.perf_counter() - t0
        _write_outputs(output, recipe, methods, runs, meta)
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = _write_outputs(output, recipe, methods, runs, meta)
    return {**meta, "recipe": recipe.describe(), "table": rows, "runs": runs}
