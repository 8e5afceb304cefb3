"""Reproduce the mixup, Manifold Mixup and CutMix papers' comparison with dalimix's loader and engine.

One model per method and seed is trained on an ImageFolder dataset (`train/` and `val/`, one folder per class)
with the same recipe; the val error after the last epoch is reported as mean +- std over seeds, beside the
papers' figures. The methods (`METHODS`) are the papers' settings: ERM, input mixup (alpha 1, Zhang et al.
2018), manifold mixup (alpha 2 at the input, `layer1` or `layer2`, Verma et al. 2019), CutMix (alpha 1, Yun et
al. 2019), Feature CutMix (CutMix of a hidden feature map, Yun et al.'s Table 3) and timm's ImageNet recipe
(mixup 0.8 + CutMix 1.0, label smoothing 0.1). Input mixing runs in the DALI graph (`dalimix.MixConfig`),
manifold mixup wraps the model (`dalimix.ManifoldMixup`), and `dalimix.train.run` builds, trains, evaluates and
checkpoints each run.

The recipes (`RECIPES`): `paper`, the papers' 200-epoch schedule for a GPU; `cpu`, a narrow network and a
15-epoch schedule (the four methods in ~30 minutes per seed on 2 CPU cores), too short for the regularisers to
pay: ERM comes out best; and `cpu-lowdata`, the same network on 200 images per class for 80 epochs (~35
minutes per seed), where ERM memorises its training set: mixing keeps the val loss low and beats ERM on
average, in the papers' order, by gaps three seeds cannot settle (docs/BENCHMARKS.md section 6).

Outputs in `output`: `runs/<method>_s<seed>/` (the engine's metrics.jsonl, summary.json, curves.png and, while
a run is unfinished or with `keep_checkpoints`, its checkpoints), `results.json` (recipe, machine, every
run's per-epoch history, the table), `table.md` and `curves.png` (val error and train loss per epoch, mean
over seeds). Running the same command again skips finished runs and resumes unfinished ones.

`cpu-noisy` trains on corrupted labels (Zhang et al.'s Table 2, `label_noise`): the table then reports val
error at the last and the best epoch and training error against the real and the corrupted labels.

Modules: `recipes` (methods and recipes), `runs` (training them), `table` (the table and curves), `cli`
(`dalimix-reproduce`), `preact_resnet` (the papers' network), `label_noise` (corrupted labels and the training
errors), `subsets` (the train subset and the held-out val set).
"""
from __future__ import annotations

from dalimix.reproduce.cli import build_parser, main
from dalimix.reproduce.recipes import DEFAULT_METHODS, METHODS, PAPER_FIGURES, RECIPES, Method, Recipe
from dalimix.reproduce.runs import run, run_config, train_run
from dalimix.reproduce.table import format_table, plot_results, summarize
from dalimix.train.lr_schedule import StepSchedule
from dalimix.train.models import build_model
from dalimix.train.run import make_scheduler

__all__ = [
    "Method", "METHODS", "DEFAULT_METHODS", "Recipe", "RECIPES", "PAPER_FIGURES", "build_model", "make_scheduler",
    "StepSchedule", "train_run", "run_config", "run", "summarize", "format_table", "plot_results", "build_parser",
    "main",
]
