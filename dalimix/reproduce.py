"""Reproduce the mixup, Manifold Mixup and CutMix papers' comparison with dalimix's loader and engine.

One model per method and seed is trained on an ImageFolder dataset (`train/` and `val/`, one folder per class)
with the same recipe; the val error after the last epoch is reported as mean +- std over seeds, beside the
papers' figures. The methods (`METHODS`) are the papers' settings: ERM, input mixup (alpha 1, Zhang et al.
2018), manifold mixup (alpha 2 at the input, `layer1` or `layer2`, Verma et al. 2019), CutMix (alpha 1, Yun
et al. 2019) and timm's ImageNet recipe (mixup 0.8 + CutMix 1.0, label smoothing 0.1). Input mixing runs in
the DALI graph (`dalimix.MixConfig`), manifold mixup wraps the model (`dalimix.ManifoldMixup`), and
`dalimix.engine.fit` trains, evaluates and checkpoints each run.

The recipes (`RECIPES`): `paper`, the papers' 200-epoch schedule for a GPU; `cpu`, a narrow network and a
15-epoch schedule (the four methods in ~30 minutes per seed on 2 CPU cores), too short for the regularisers to
pay: ERM comes out best; and `cpu-lowdata`, the same network on 200 images per class for 80 epochs (~35
minutes per seed), where ERM memorises its training set: mixing keeps the val loss low and beats ERM on
average, in the papers' order, by gaps three seeds cannot settle (docs/BENCHMARKS.md section 6).

Outputs in `output`: `runs/<method>_s<seed>/` (the engine's metrics.jsonl, summary.json, curves.png and, while
a run is unfinished or with `keep_checkpoints`, its checkpoints), `results.json` (recipe, machine, every
run's per-epoch history, the table), `table.md` and `curves.png` (val error and train loss per epoch, mean
over seeds). Running the same command again skips finished runs and resumes unfinished ones.

This module never imports `pipelines` (see DESIGN.md): the caller passes the pipeline factories
(`pipelines.imagenet.train_pipeline` / `val_pipeline`, as `scripts/reproduce.py` does).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from dalimix.atomic_files import json_safe, save_figure, write_text

__all__ = [
    "Method", "METHODS", "DEFAULT_METHODS", "Recipe", "RECIPES", "PAPER_FIGURES", "build_model", "make_scheduler",
    "StepSchedule", "train_run", "run", "summarize", "format_table", "plot_results", "build_parser", "main",
]

PipelineFactory = Callable[..., Any]


# -- methods -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One regulariser of the comparison: in-loader mixing (timm semantics) and/or manifold mixup."""

    name: str
    label: str
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    manifold_alpha: float = 0.0
    manifold_layers: tuple[str, ...] = ()
    manifold_input: bool = True

    def mix_config(self, num_classes: int) -> Any:
        """The `dalimix.MixConfig` of the in-loader part, or None for a method that mixes no input pixels."""
        from dalimix.config import MixConfig

        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0 and self.label_smoothing <= 0:
            return None
        return MixConfig(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha, prob=self.prob,
                         switch_prob=self.switch_prob, mode="batch", correct_lam=True,
                         label_smoothing=self.label_smoothing, num_classes=num_classes)

    def describe(self) -> dict[str, Any]:
        """The settings as plain data (for results.json and to recognise a finished run)."""
        return dataclasses.asdict(self)


METHODS: dict[str, Method] = {
    "erm": Method("erm", "ERM (no mixing)"),
    # Zhang et al. mix one lam per batch with a shuffled copy of the batch: dalimix's "batch" mode.
    "mixup": Method("mixup", "input mixup, alpha 1", mixup_alpha=1.0),
    # Verma et al.: one of {input, after stage 1, after stage 2} drawn per step, lam ~ Beta(2, 2).
    "manifold": Method("manifold", "manifold mixup, alpha 2 (input, layer1, layer2)", manifold_alpha=2.0,
                       manifold_layers=("layer1", "layer2")),
    # Yun et al.'s CIFAR recipe: alpha 1, applied to a batch with probability 0.5 (ImageNet: 1.0).
    "cutmix": Method("cutmix", "CutMix, alpha 1, prob 0.5", cutmix_alpha=1.0, prob=0.5),
    # timm / DeiT ImageNet recipe.
    "mixup_cutmix": Method("mixup_cutmix", "mixup 0.8 + CutMix 1.0, smoothing 0.1 (timm)", mixup_alpha=0.8,
                           cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1),
}
DEFAULT_METHODS = ("erm", "mixup", "manifold", "cutmix")

# CIFAR-10 test error (%) the papers report, per method (PreAct ResNet-18 unless said otherwise).
PAPER_FIGURES: dict[str, str] = {
    "erm": "5.6 [Z], 4.83 [V]",
    "mixup": "4.2 [Z], 3.82 [V]",
    "manifold": "2.95 [V]",
    "cutmix": "no PreAct ResNet-18 figure [Y]",
    "mixup_cutmix": "-",
}
PAPER_NOTES = (
    "[Z] Zhang et al. 2018 (mixup), PreAct ResNet-18, 200 epochs, step schedule (the `paper` recipe). "
    "[V] Verma et al. 2019 (Manifold Mixup), PreAct ResNet-18, 2000 epochs (lr /10 at 500, 1000, 1500). "
    "[Y] Yun et al. 2019 (CutMix) report PyramidNet-200 on CIFAR-100 (16.45 -> 14.23 % error) and ResNet-50 "
    "on ImageNet (23.68 -> 21.40 % top-1 error; mixup 22.58, manifold mixup 22.50)."
)


# -- recipes -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How every method is trained: network, schedule, optimiser, input and seeds. Invalid values raise
    `ValueError` naming the field."""

    name: str
    description: str = ""
    arch: str = "preact_resnet18"         # or any torchvision.models classification model name
    width: int = 64                        # PreAct ResNet stem channels (stages: width, 2x, 4x, 8x)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_norm_bias: bool = True           # the papers decay every parameter (plain SGD weight_decay)
    schedule: str = "step"                 # "step" (milestones, gamma) or "cosine" (per step, to 0)
    milestones: tuple[int, ...] = (100, 150)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    crop: int = 32
    val_resize: int = 32
    # Random-resized-crop area range. The papers pad by 4 pixels and crop 32 (a translation); dalimix's graph
    # crops and resizes, and (0.64, 1) (sides >= 0.8) is the mild equivalent.
    scale: tuple[float, float] = (0.64, 1.0)
    train_per_class: Optional[int] = None   # train on the first N images (sorted names) of each class only
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "gpu"
    threads: int = 4                       # DALI CPU threads
    torch_threads: Optional[int] = None    # None: on the CPU, the cores left after DALI's threads (at least 1)
    amp: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ValueError(f"Recipe.{name} must be {what}, got {getattr(self, name)!r}")

        def posint(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        for name in ("width", "epochs", "batch_size", "crop", "val_resize", "threads"):
            need(posint(getattr(self, name)), name, "a positive int")
        need(self.torch_threads is None or posint(self.torch_threads), "torch_threads", "None or a positive int")
        need(self.train_per_class is None or posint(self.train_per_class), "train_per_class", "None or a positive int")
        need(isinstance(self.arch, str) and bool(self.arch), "arch", "a model name")
        need(self.val_resize >= self.crop, "val_resize", f">= crop ({self.crop})")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "> 0")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.schedule in ("step", "cosine"), "schedule", "'step' or 'cosine'")
        need(all(posint(m) and m <= self.epochs for m in self.milestones)
             and list(self.milestones) == sorted(self.milestones), "milestones",
             f"increasing epochs in [1, epochs={self.epochs}]")
        need(0 < self.gamma <= 1, "gamma", "in (0, 1]")
        need(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"in [0, epochs={self.epochs}]")
        need(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, "scale", "(min, max) with 0 < min <= max <= 1")
        need(len(self.seeds) >= 1 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                          for s in self.seeds) and len(set(self.seeds)) == len(self.seeds),
             "seeds", "distinct ints >= 0 (at least one)")
        need(self.device in ("gpu", "cpu"), "device", "'gpu' or 'cpu'")

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with `changes` applied (None values are ignored); unknown names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"Recipe has no field(s) {unknown}; fields: {sorted(names)}")
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """The effective settings in one line (overrides included)."""
        net = f"{self.arch} (width {self.width})" if self.arch == "preact_resnet18" else self.arch
        sgd = f"SGD lr {self.lr:g} momentum {self.momentum:g}" + (" Nesterov" if self.nesterov else "")
        wd = f"wd {self.weight_decay:g}" + ("" if self.decay_norm_bias else " (not on norms and biases)")
        warm = f"{self.warmup_epochs:g} warmup epoch(s), then " if self.warmup_epochs else ""
        sched = (f"{warm}cosine" if self.schedule == "cosine" else
                 f"{warm}lr x{self.gamma:g} at epochs {', '.join(map(str, self.milestones)) or '-'}")
        subset = f"{self.train_per_class} train images per class, " if self.train_per_class else ""
        return (f"{net}, {subset}{self.epochs} epochs, batch {self.batch_size}, {sgd}, {wd}, {sched}; crop {self.crop}, "
                f"random-resized-crop scale {tuple(self.scale)}, flip; {self.device}"
                + (", AMP" if self.amp else ""))

    def describe(self) -> dict[str, Any]:
        """The recipe as plain data."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


RECIPES: dict[str, Recipe] = {
    # Zhang et al.'s CIFAR-10 schedule, which all four methods share here: 200 epochs, batch 128, SGD lr 0.1
    # momentum 0.9, weight decay 1e-4 on every parameter, lr / 10 at epochs 100 and 150.
    "paper": Recipe(
        name="paper", description="PreAct ResNet-18 (width 64), 200 epochs, SGD lr 0.1 momentum 0.9, wd 1e-4, "
                                  "lr /10 at epochs 100 and 150, batch 128 (Zhang et al. 2018); for a GPU",
        arch="preact_resnet18", width=64, epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
        weight_decay=1e-4, decay_norm_bias=True, schedule="step", milestones=(100, 150), gamma=0.1,
        warmup_epochs=0.0, scale=(0.64, 1.0), seeds=(0, 1, 2), device="gpu", threads=4, amp=True,
        channels_last=True),
    # Two CPU cores, ~40 minutes for the four methods of one seed: a quarter-width network, a short cosine.
    "cpu": Recipe(
        name="cpu", description="PreAct ResNet-18 at width 16 (0.70M parameters), 15 epochs, SGD lr 0.1 Nesterov, "
                                "wd 5e-4 (not on norms and biases), 1 warmup epoch then cosine, batch 128; 2 CPU cores",
        arch="preact_resnet18", width=16, epochs=15, batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
        weight_decay=5e-4, decay_norm_bias=False, schedule="cosine", milestones=(), gamma=0.1, warmup_epochs=1.0,
        scale=(0.64, 1.0), seeds=(0, 1, 2), device="cpu", threads=1, amp=False, channels_last=True),
    # The same budget spent where the papers' regularisers matter: a training set the network can memorise
    # (200 images per class), trained long enough that ERM fits it.
    "cpu-lowdata": Recipe(
        name="cpu-lowdata", description="the cpu recipe on the first 200 train images of each class, 80 epochs "
                                        "(the low-data regime, where ERM memorises its training set); 2 CPU cores",
        arch="preact_resnet18", width=16, epochs=80, batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
        weight_decay=5e-4, decay_norm_bias=False, schedule="cosine", milestones=(), gamma=0.1, warmup_epochs=2.0,
        scale=(0.64, 1.0), train_per_class=200, seeds=(0, 1, 2), device="cpu", threads=1, amp=False,
        channels_last=True),
}


# -- model and schedule ----------------------------------------------------------------------------------------
def build_model(arch: str, num_classes: int, *, width: int = 64, crop: int = 32) -> Any:
    """`preact_resnet18` (dalimix's, at `width`) or any torchvision classification model by name."""
    import torchvision

    from dalimix.preact_resnet import preact_resnet18

    if arch == "preact_resnet18":
        return preact_resnet18(num_classes=num_classes, width=width)
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names + ["preact_resnet18"], n=3)
        raise ValueError(f"arch: unknown model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                         + " (preact_resnet18 or any torchvision.models classification model)")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = crop
    return torchvision.models.get_model(arch, **kwargs)


class StepSchedule:
    """lr factor at optimizer step `s`: linear warmup, then times `gamma` at each milestone epoch."""

    def __init__(self, steps_per_epoch: int, milestones: Sequence[int], gamma: float, warmup_steps: int = 0):
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        epoch = step // self.steps_per_epoch
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)


def make_scheduler(optimizer: Any, recipe: Recipe, steps_per_epoch: int) -> Any:
    """The recipe's per-step LR schedule as a `LambdaLR` (call `.step()` after every optimizer step)."""
    import torch

    from dalimix import engine

    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if recipe.schedule == "cosine":
        return engine.warmup_cosine(optimizer, total_steps=recipe.epochs * steps_per_epoch, warmup_steps=warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepSchedule(steps_per_epoch, recipe.milestones, recipe.gamma, warmup))


# -- one run -----------------------------------------------------------------------------------------------------
def _run_info(recipe: Recipe, method: Method, seed: int, classes: Sequence[str]) -> dict[str, Any]:
    info = {"recipe": recipe.describe(), "method": method.describe(), "seed": int(seed), "classes": list(classes)}
    return json.loads(json.dumps(info))  # as summary.json and checkpoints give it back (tuples are lists)


def _same_run(info: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Names of the settings in which a stored run differs from the one asked for."""
    diff = []
    for key in ("method", "seed", "classes"):
        if info.get(key) != expected[key]:
            diff.append(key)
    old, new = info.get("recipe") or {}, expected["recipe"]
    # The description, seed list and thread counts do not change what a run computes.
    ignore = {"name", "description", "seeds", "threads", "torch_threads"}
    diff += [f"recipe.{k}" for k in new if k not in ignore and old.get(k) != new[k]]
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
    return _result(summary, _read_history(os.path.join(run_dir, "metrics.jsonl")), run_dir)


def _result(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], run_dir: str) -> dict[str, Any]:
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
    }


def _subset_list(train_dir: str, classes: Sequence[str], per_class: int, path: Optional[str]) -> Optional[str]:
    """Write a `train_pipeline(file_list=)` list of the first `per_class` images (sorted names) of each class
    to `path` (None: only check that every class has that many); ValueError names the short classes."""
    from dalimix.dataset import scan_folder

    ds = scan_folder(train_dir, verify=False, classes=list(classes))
    chosen: dict[int, list[str]] = {}
    for f, label in sorted(zip(ds.files, ds.labels), key=lambda fl: (fl[1], fl[0])):
        if len(chosen.setdefault(int(label), [])) < per_class:
            chosen[int(label)].append(f)
    short = [f"{classes[k]} ({len(chosen.get(k, []))})" for k in range(len(classes))
             if len(chosen.get(k, [])) < per_class]
    if short:
        raise ValueError(f"train_per_class: {per_class} images per class asked for, but {train_dir} has fewer in "
                         f"{', '.join(short[:5])}")
    if path is None:
        return None
    lines = [f"{os.path.relpath(f, train_dir)} {k}\n" for k in sorted(chosen) for f in chosen[k]]
    write_text(path, "".join(lines))
    return path


def _torch_threads(recipe: Recipe) -> Optional[int]:
    if recipe.torch_threads is not None:
        return recipe.torch_threads
    if recipe.device != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - recipe.threads)


def train_run(data: str, recipe: Recipe, method: Method, seed: int, run_dir: str, *, classes: Sequence[str],
              train_pipeline: PipelineFactory, val_pipeline: PipelineFactory, progress: bool = True,
              keep_checkpoints: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one model of `method` with `recipe` and `seed` into `run_dir`; return its result.

    A finished run of the same settings in `run_dir` is read back instead of trained again; an unfinished one
    (its `checkpoint.pt`) is resumed. `data` holds `train/` and `val/`; `train_pipeline` and `val_pipeline`
    are `pipelines.imagenet`'s factories (or any with their arguments).
    """
    import random

    import numpy as np
    import torch

    from dalimix import engine
    from dalimix.distributed import DistContext
    from dalimix.loader import DaliLoader
    from dalimix.manifold import ManifoldMixup
    from dalimix.resume import Resume

    expected = _run_info(recipe, method, seed, classes)
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
    threads = _torch_threads(recipe)
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every method of one seed starts from the same weights
    num_classes = len(classes)
    net = build_model(recipe.arch, num_classes, width=recipe.width, crop=recipe.crop).to(ctx.device)
    num_params = sum(p.numel() for p in net.parameters())
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if method.manifold_alpha > 0:
        model = ManifoldMixup(net, alpha=method.manifold_alpha, layers=list(method.manifold_layers),
                              include_input=method.manifold_input, num_classes=num_classes)

    mix = method.mix_config(num_classes)
    device_id = ctx.device.index if recipe.device == "gpu" else None

    train_dir = os.path.join(data, "train")
    subset: dict[str, Any] = {}
    if recipe.train_per_class is not None:
        os.makedirs(run_dir, exist_ok=True)
        subset["file_list"] = _subset_list(train_dir, classes, recipe.train_per_class,
                                           os.path.join(run_dir, "train_files.txt"))

    def build(first_epoch: int, dali_state: Optional[bytes]) -> Any:
        return train_pipeline(train_dir, batch_size=recipe.batch_size, crop=recipe.crop, device=recipe.device,
                              num_threads=recipe.threads, mix=mix, seed=seed, device_id=device_id,
                              scale=tuple(recipe.scale), channels_last=recipe.channels_last, classes=list(classes),
                              first_epoch=first_epoch, checkpoint=dali_state, **subset)

    if resume is None:
        train_loader, first_epoch = DaliLoader(build(0, None)), 0
    else:
        train_loader, first_epoch = resume.train_loader(build, ctx=ctx, settings={}, prefix=ckpt_path)
    val_loader = DaliLoader(val_pipeline(os.path.join(data, "val"), batch_size=recipe.batch_size, crop=recipe.crop,
                                         resize=recipe.val_resize, device=recipe.device, num_threads=recipe.threads,
                                         device_id=device_id, channels_last=recipe.channels_last,
                                         classes=list(classes)))

    optimizer = torch.optim.SGD(engine.param_groups(net, recipe.weight_decay, recipe.decay_norm_bias),
                                lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=recipe.nesterov and recipe.momentum > 0)
    steps = len(train_loader)
    scheduler = make_scheduler(optimizer, recipe, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp) if recipe.device == "gpu" else None
    amp_dtype = (torch.float16 if recipe.device == "gpu" else torch.bfloat16) if recipe.amp else None
    state = engine.TrainState()
    if resume is not None:
        state = resume.restore(model=net, optimizer=optimizer, ctx=ctx, steps_per_epoch=steps, scheduler=scheduler,
                               scaler=scaler, log=log, prefix=ckpt_path)
        log(f"{os.path.basename(run_dir)}: resuming at epoch {resume.start_epoch + 1} of {recipe.epochs}")

    run_info = {"arch": recipe.arch, "num_classes": num_classes, "num_params": num_params,
                "train_images": len(train_loader.source.files), "val_images": len(val_loader.source.files),
                "steps_per_epoch": steps, "reproduce": expected}
    cfg = engine.FitConfig(epochs=recipe.epochs, output=run_dir, amp_dtype=amp_dtype,
                           manifold=method.manifold_alpha > 0, progress=progress, run_info=run_info,
                           first_epoch=first_epoch, plot_title=f"{method.label}, seed {seed}",
                           resumed_from=ckpt_path if resume is not None else None)
    summary = engine.fit(model, train_loader, val_loader, optimizer, ctx=ctx, cfg=cfg, scheduler=scheduler,
                         scaler=scaler, state=state, log=log)
    if not keep_checkpoints:
        for name in ("checkpoint.pt", "best.pt"):
            path = os.path.join(run_dir, name)
            if os.path.exists(path):
                os.remove(path)
    return _result(summary, state.history, run_dir)


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


def _write_outputs(output: str, recipe: Recipe, methods: Sequence[Method], runs: Sequence[Mapping[str, Any]],
                   meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = summarize(runs, methods)
    table = format_table(rows, recipe)
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


def run(data: str, recipe: Recipe, methods: Sequence[Method], output: str, *, train_pipeline: PipelineFactory,
        val_pipeline: PipelineFactory, progress: bool = True, keep_checkpoints: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every method for every seed of `recipe` on `data` (train/ and val/); write and return the results.

    Seeds are the outer loop, so an interrupted comparison has all methods of the first seeds. After each
    run `results.json`, `table.md` and `curves.png` in `output` are rewritten. Returns results.json's content.
    """
    from tqdm import tqdm

    classes = _class_folders(data)
    if not methods:
        raise ValueError("methods: give at least one method")
    os.makedirs(os.path.join(output, "runs"), exist_ok=True)
    meta: dict[str, Any] = {"data": os.path.abspath(data), "machine": _machine(), "command": sys.argv,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    plan = [(seed, m) for seed in recipe.seeds for m in methods]
    bar = tqdm(plan, desc="runs", unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for seed, m in bar:
        bar.set_postfix_str(f"{m.name} seed {seed}")
        result = train_run(data, recipe, m, seed, os.path.join(output, "runs", f"{m.name}_s{seed}"),
                           classes=classes, train_pipeline=train_pipeline, val_pipeline=val_pipeline,
                           progress=progress, keep_checkpoints=keep_checkpoints, log=log)
        runs.append(result)
        log(f"{m.name} seed {seed}: val error {result['final_error']:.2f}% after {recipe.epochs} epochs")
        meta["elapsed_s"] = time.perf_counter() - t0
        _write_outputs(output, recipe, methods, runs, meta)
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = _write_outputs(output, recipe, methods, runs, meta)
    return {**meta, "recipe": recipe.describe(), "table": rows, "runs": runs}


def _class_folders(data: str) -> list[str]:
    """Sorted class folders of `data`/train, which `data`/val must match; errors name the folder."""
    for split in ("train", "val"):
        path = os.path.join(data, split)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"data: {path!r} is not a directory (expected {split}/ with one folder per class)")
    found = {split: sorted(e.name for e in os.scandir(os.path.join(data, split))
                           if e.is_dir() and not e.name.startswith(".")) for split in ("train", "val")}
    if not found["train"]:
        raise FileNotFoundError(f"data: {os.path.join(data, 'train')!r} has no class folders")
    if found["train"] != found["val"]:
        differ = sorted(set(found["train"]) ^ set(found["val"]))[:5]
        raise ValueError(f"data: {data}/train and {data}/val must hold the same class folders; they differ in {differ}")
    return found["train"]


# -- command line --------------------------------------------------------------------------------------------------
def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line of `scripts/reproduce.py`."""
    recipes = "\n".join(f"  {name:12s} {r.description}" for name, r in RECIPES.items())
    methods = "\n".join(f"  {name:13s} {m.label}" for name, m in METHODS.items())
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one model per method (and seed) with dalimix's loader and engine on an ImageFolder "
                    "dataset and compare their val error with the mixup, Manifold Mixup and CutMix papers'.",
        epilog=f"recipes:\n{recipes}\n\nmethods (default: {','.join(DEFAULT_METHODS)}; 'all' for every one):\n"
               f"{methods}\n\noutputs in --output: table.md, results.json, curves.png, runs/<method>_s<seed>/. "
               f"Running the same command again skips finished runs and resumes unfinished ones.")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset root holding train/ and val/ (class folders)")
    p.add_argument("--output", required=True, metavar="DIR", help="where the table, curves, JSON and runs go")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="paper", help="training recipe (default paper)")
    p.add_argument("--methods", type=_csv, default=list(DEFAULT_METHODS), metavar="LIST",
                   help=f"comma list of methods (default {','.join(DEFAULT_METHODS)}; 'all': every method)")
    p.add_argument("--seeds", type=lambda v: [int(s) for s in _csv(v)], default=None, metavar="LIST",
                   help="comma list of seeds (default: the recipe's, 0,1,2)")
    g = p.add_argument_group("recipe overrides (default: the recipe's value)")
    g.add_argument("--arch", default=None, help="preact_resnet18 or any torchvision classification model")
    g.add_argument("--width", type=int, default=None, help="PreAct ResNet width (stem channels)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--milestones", type=lambda v: [int(s) for s in _csv(v)], default=None, metavar="LIST",
                   help="step schedule: epochs at which the lr is multiplied by gamma")
    g.add_argument("--schedule", choices=("step", "cosine"), default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup-epochs", type=float, default=None)
    g.add_argument("--crop", type=int, default=None, help="train and val image size")
    g.add_argument("--val-resize", type=int, default=None, help="val: shorter side before the centre crop")
    g.add_argument("--scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="random-resized-crop area range")
    g.add_argument("--train-per-class", type=int, default=None, metavar="N",
                   help="train on the first N images (sorted names) of each class only")
    g.add_argument("--device", choices=("gpu", "cpu"), default=None)
    g.add_argument("--threads", type=int, default=None, help="DALI CPU threads")
    g.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    g.add_argument("--amp", choices=("on", "off"), default=None, help="mixed precision")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoint.pt/best.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None, *, train_pipeline: PipelineFactory, val_pipeline: PipelineFactory,
         prog: Optional[str] = None) -> int:
    """Run the command line with the given pipeline factories; argument errors exit 2 naming the flag."""
    p = build_parser(prog)
    a = p.parse_args(argv)
    names = list(METHODS) if a.methods == ["all"] else a.methods
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        p.error(f"--methods: unknown {unknown or names}; choose from {', '.join(METHODS)} or 'all'")
    if len(set(names)) != len(names):
        p.error(f"--methods: {names} names a method twice")
    overrides = dict(arch=a.arch, width=a.width, epochs=a.epochs, milestones=a.milestones, schedule=a.schedule,
                     batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs,
                     crop=a.crop, val_resize=a.val_resize, scale=a.scale, train_per_class=a.train_per_class,
                     device=a.device, threads=a.threads,
                     torch_threads=a.torch_threads, seeds=a.seeds,
                     amp=None if a.amp is None else a.amp == "on")
    if a.device == "cpu" and a.amp is None:
        overrides["amp"] = False  # the paper recipe's float16 AMP is for the GPU; --amp on gives bfloat16 on a CPU
    base = RECIPES[a.recipe]
    if a.epochs is not None and a.milestones is None and base.schedule == "step":
        # Keep the papers' proportions (100 and 150 of 200) when only the length changes.
        overrides["milestones"] = [m for m in (round(a.epochs * x / base.epochs) for x in base.milestones) if m >= 1]
    if a.crop is not None and a.val_resize is None:
        overrides["val_resize"] = max(a.crop, base.val_resize * a.crop // base.crop)
    try:
        recipe = base.replace(**overrides)
    except ValueError as exc:
        field_name = str(exc).split(" ")[0].removeprefix("Recipe.")
        p.error(f"--{field_name.replace('_', '-')}: {exc}")
    try:
        build_model(recipe.arch, 2, width=recipe.width, crop=recipe.crop)
    except ValueError as exc:
        p.error(f"--arch: {exc}")
    if recipe.device == "gpu":
        import torch
        if not torch.cuda.is_available():
            p.error("--device: the recipe trains on 'gpu' but torch sees no CUDA device (use --device cpu or "
                    "--recipe cpu)")
    try:
        _class_folders(a.data)
    except (FileNotFoundError, ValueError) as exc:
        p.error(f"--{exc}")  # the message starts with "data: "
    methods = [METHODS[n] for n in names]
    t0 = time.perf_counter()
    try:
        if recipe.train_per_class is not None:
            _subset_list(os.path.join(a.data, "train"), _class_folders(a.data), recipe.train_per_class, None)
        results = run(a.data, recipe, methods, a.output, train_pipeline=train_pipeline, val_pipeline=val_pipeline,
                      progress=not a.no_progress, keep_checkpoints=a.keep_checkpoints)
    except ValueError as exc:
        # Errors that name a setting ("output: ...", "train_per_class: ...") become errors naming its flag.
        name, sep, rest = str(exc).partition(": ")
        if sep and name.isidentifier():
            p.error(f"--{name.replace('_', '-')}: {rest}")
        raise
    print(format_table(results["table"], recipe), end="")
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; table.md, results.json and curves.png in {a.output}")
    return 0
