"""The command line of `dalimix-reproduce` (`scripts/reproduce.py`)."""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Optional, Sequence

from dalimix.reproduce.recipes import DEFAULT_METHODS, METHODS, RECIPES
from dalimix.reproduce.label_noise import paper_mixup_alpha
from dalimix.reproduce.runs import PipelineFactory, run
from dalimix.reproduce.subsets import HELD_OUT, class_files, comparison_classes, first_per_class
from dalimix.reproduce.table import format_table
from dalimix.train.models import build_model

# -- command line --------------------------------------------------------------------------------------------------
def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_noise_flags(p: argparse.ArgumentParser) -> None:
    """--label-noise, --noise-kind and the method alphas."""
    n = p.add_argument_group("corrupted labels (Zhang et al. 2018, Table 2)")
    n.add_argument("--label-noise", type=float, default=None, metavar="P",
                   help="corrupt this share of the training labels (seeded by the run's seed, the same for every "
                        "method; listed in each run's label_noise.tsv); the table then reports val error at the last "
                        "and the best epoch and training error against the real and the corrupted labels")
    n.add_argument("--noise-kind", choices=("symmetric", "pairflip"), default=None,
                   help="symmetric: a uniformly random class (Zhang et al.); pairflip: the next class (default "
                        "symmetric)")
    a = p.add_argument_group("method alphas (default: the method's; under label noise, from --label-noise or a "
                             "recipe such as cpu-noisy, mixup takes the paper's: 8 at 20%%, 32 at 50%% and 80%%)")
    for flag, method in (("--mixup-alpha", "mixup"), ("--cutmix-alpha", "cutmix"),
                         ("--manifold-alpha", "manifold"), ("--feature-cutmix-alpha", "feature_cutmix")):
        a.add_argument(flag, type=float, default=None, metavar="A",
                       help=f"Beta(A, A) of the {method} method (default "
                            f"{getattr(METHODS[method], METHODS[method].alpha_field or ''):g})")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line of `scripts/reproduce.py`."""
    recipes = "\n".join(f"  {name:12s} {r.description}" for name, r in RECIPES.items())
    methods = "\n".join(f"  {name:15s} {m.label}" for name, m in METHODS.items())
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
    p.add_argument("--val-data", default=None, metavar="DIR",
                   help=f"validate on this folder of class folders (default: DATA/val; without it, the train images "
                        f"--train-per-class leaves unused; '{HELD_OUT}': those even where DATA/val exists)")
    _add_noise_flags(p)
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
    g.add_argument("--val-per-class", type=int, default=None, metavar="N",
                   help="held-out val (see --val-data): at most N unused train images per class")
    g.add_argument("--device", choices=("gpu", "cpu"), default=None)
    g.add_argument("--threads", type=int, default=None, help="DALI CPU threads")
    g.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    g.add_argument("--amp", choices=("on", "off"), default=None, help="mixed precision")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoint.pt/best.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _methods(p: argparse.ArgumentParser, a: argparse.Namespace, names: Sequence[str], recipe: Any) -> list[Any]:
    """The chosen methods with the alphas of the command line (and the paper's mixup alpha under label noise)."""
    alphas = {"mixup": a.mixup_alpha, "cutmix": a.cutmix_alpha, "manifold": a.manifold_alpha,
              "feature_cutmix": a.feature_cutmix_alpha}
    if recipe.label_noise and alphas["mixup"] is None:
        alphas["mixup"] = paper_mixup_alpha(recipe.label_noise)
    unused = [name for name, alpha in alphas.items() if alpha is not None and name not in names
              and not (name == "mixup" and a.mixup_alpha is None)]
    if unused:
        p.error(f"--{unused[0].replace('_', '-')}-alpha: the {unused[0]} method is not among --methods {','.join(names)}")
    methods = []
    for name in names:
        m = METHODS[name]
        if alphas.get(name) is not None:
            try:
                m = m.with_alpha(alphas[name])
            except ValueError as exc:
                p.error(f"--{name.replace('_', '-')}-alpha: {str(exc).split(': ', 1)[1]}")
        methods.append(m)
    return methods


def main(argv: Optional[Sequence[str]] = None, *, train_pipeline: Optional[PipelineFactory] = None,
         val_pipeline: Optional[PipelineFactory] = None, prog: Optional[str] = None) -> int:
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
                     val_per_class=a.val_per_class, label_noise=a.label_noise, noise_kind=a.noise_kind,
                     device=a.device, threads=a.threads,
                     torch_threads=a.torch_threads, seeds=a.seeds,
                     amp=None if a.amp is None else a.amp == "on")
    if a.device == "cpu" and a.amp is None:
        overrides["amp"] = False  # the paper recipe's float16 AMP is for the GPU; --amp on gives bfloat16 on a CPU
    base = RECIPES[a.recipe]
    if a.epochs is not None and a.milestones is None and base.schedule == "step":
        # Keep the papers' proportions (100 and 150 of 200) when only the length changes.
        overrides["milestones"] = [m for m in (round(a.epochs * x / base.epochs) for x in base.milestones) if m >= 1]
    if a.epochs is not None and a.warmup_epochs is None and base.warmup_epochs > a.epochs:
        overrides["warmup_epochs"] = base.warmup_epochs * a.epochs / base.epochs  # a short run keeps the proportion
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
        p.error(f"--arch: {str(exc).removeprefix('arch: ')}")
    if recipe.device == "gpu":
        import torch
        if not torch.cuda.is_available():
            p.error("--device: the recipe trains on 'gpu' but torch sees no CUDA device (use --device cpu or "
                    "--recipe cpu)")
    try:
        classes = comparison_classes(a.data, a.val_data)
    except ValueError as exc:
        p.error(f"--{getattr(exc, 'argument', 'data').replace('_', '-')}: {exc}")
    methods = _methods(p, a, names, recipe)
    t0 = time.perf_counter()
    try:
        if recipe.train_per_class is not None:
            train_dir = os.path.join(a.data, "train")
            first_per_class(class_files(train_dir, classes), recipe.train_per_class, classes, train_dir)
        results = run(a.data, recipe, methods, a.output, train_pipeline=train_pipeline, val_pipeline=val_pipeline,
                      progress=not a.no_progress, keep_checkpoints=a.keep_checkpoints, val_data=a.val_data)
    except ValueError as exc:
        # Errors that name a setting ("output: ...", "train_per_class: ...") become errors naming its flag.
        name, sep, rest = str(exc).partition(": ")
        if sep and name.isidentifier():
            p.error(f"--{name.replace('_', '-')}: {rest}")
        raise
    print(format_table(results["table"], recipe, val_note=str(results.get("val", ""))), end="")
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; table.md, results.json and curves.png in {a.output}")
    return 0
