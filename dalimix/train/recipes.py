"""The published ImageNet recipes that pair mixing with a per-sample policy, as `dalimix-train` settings
(`--recipe NAME`): every setting the recipe fixes, by the flag's name, each overridable by giving that flag.

Sources: DeiT (Touvron et al. 2021, DeiT-S), ResNet Strikes Back A2 / A3 (Wightman et al. 2021, ResNet-50),
ConvNeXt (Liu et al. 2022, ConvNeXt-T), and torchvision's "new recipe" for ResNet-50 (IMAGENET1K_V2 weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class Recipe:
    """A recipe: its flags (argparse dests -> values), its learning rate rule (`lr` per `lr_batch` images
    of global batch, scaled linearly), its published top-1 and model."""

    name: str
    flags: Mapping[str, Any]
    lr: float
    lr_batch: int
    top1: float
    source: str
    torchvision_ema: Optional[float] = None  # torchvision's EMA decay, whose meaning depends on batch and epochs
    notes: tuple[str, ...] = field(default_factory=tuple)

    def scaled_lr(self, global_batch: int) -> float:
        """The peak learning rate for `global_batch` images per step, by the recipe's linear rule."""
        return self.lr * global_batch / self.lr_batch


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("deit", dict(arch="timm/deit_small_patch16_224", epochs=300, opt="adamw", weight_decay=0.05,
                        warmup_epochs=5.0, min_lr=1e-5, aa="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                        mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, re_prob=0.25, re_mode="pixel",
                        re_order="before_mix", aug_repeats=3, model_ema=0.99996, drop_path=0.1, crop=224,
                        crop_pct=0.875),
           lr=5e-4, lr_batch=512, top1=79.8, source="DeiT-S, Touvron et al. 2021 (300 epochs)"),
    Recipe("rsb-a2", dict(arch="timm/resnet50", epochs=300, opt="lamb", weight_decay=0.02, warmup_epochs=5.0,
                          aa="rand-m7-mstd0.5-inc1", interpolation="bicubic", mixup_alpha=0.1, cutmix_alpha=1.0,
                          label_smoothing=0.0, bce_loss=True, bce_target_thresh=0.2, aug_repeats=3, drop_path=0.05,
                          crop=224, crop_pct=0.95),
           lr=5e-3, lr_batch=2048, top1=79.8, source="ResNet-50 A2, Wightman et al. 2021 (224 test)"),
    Recipe("rsb-a3", dict(arch="timm/resnet50", epochs=100, opt="lamb", weight_decay=0.02, warmup_epochs=5.0,
                          aa="rand-m6-mstd0.5-inc1", interpolation="bicubic", mixup_alpha=0.1, cutmix_alpha=1.0,
                          label_smoothing=0.0, bce_loss=True, bce_target_thresh=0.2, crop=160, val_crop=224,
                          crop_pct=0.95),
           lr=8e-3, lr_batch=2048, top1=78.1, source="ResNet-50 A3, Wightman et al. 2021 (train 160, test 224)"),
    Recipe("convnext", dict(arch="convnext_tiny", epochs=300, opt="adamw", weight_decay=0.05, warmup_epochs=20.0,
                            aa="rand-m9-mstd0.5-inc1", interpolation="bicubic", mixup_alpha=0.8, cutmix_alpha=1.0,
                            label_smoothing=0.1, re_prob=0.25, re_mode="pixel", re_order="before_mix",
                            model_ema=0.9999, drop_path=0.1, crop=224, crop_pct=0.875),
           lr=4e-3, lr_batch=4096, top1=82.1, source="ConvNeXt-T, Liu et al. 2022"),
    Recipe("torchvision-v2", dict(arch="resnet50", epochs=600, opt="sgd", momentum=0.9, no_nesterov=True,
                                  weight_decay=2e-5, warmup_epochs=5.0, aa="ta_wide", interpolation="bilinear",
                                  mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, re_prob=0.1,
                                  re_mode="const", re_order="before_mix", aug_repeats=4, model_ema_steps=32,
                                  crop=176, val_crop=224, val_resize=232),
           lr=0.5, lr_batch=1024, top1=80.858, source="torchvision ResNet50_Weights.IMAGENET1K_V2",
           torchvision_ema=0.99998,
           notes=("no weight decay on biases as well as norms (torchvision decays biases)",
                  "linear warmup from 0 (torchvision starts at lr x 0.01)")),
)}


# Settings that say the same thing two ways: a flag given for one sets aside the recipe's other.
_RIVALS = {"crop_pct": "val_resize", "val_resize": "crop_pct"}


def torchvision_ema_decay(decay: float, global_batch: int, steps: int, epochs: int) -> float:
    """torchvision's `--model-ema-decay` as a decay per update: its reference scales 1 - decay by
    global batch x `--model-ema-steps` / epochs (and clamps it at 1)."""
    return 1.0 - min(1.0, (1.0 - decay) * global_batch * steps / epochs)


def apply(recipe: Recipe, args: Any, given: set[str], world_size: int) -> list[str]:
    """Fill `args` (an argparse Namespace) with what the recipe sets but the command line did not give
    (`given`: dests set explicitly); returns the settings in words, for the log."""
    lines = []
    for dest, value in recipe.flags.items():
        rival = _RIVALS.get(dest)
        if rival in given:
            lines.append(f"{dest} not applied ({rival} given; the recipe says {dest}={value!r})")
        elif dest in given:
            lines.append(f"{dest}={getattr(args, dest)!r} (given; the recipe says {value!r})")
        else:
            setattr(args, dest, value)
            lines.append(f"{dest}={value!r}")
    global_batch = args.batch_size * world_size
    if "lr" in given:
        lines.append(f"lr={args.lr!r} (given; the recipe says {recipe.lr} x {global_batch}/{recipe.lr_batch})")
    else:
        args.lr = recipe.scaled_lr(global_batch)
        lines.append(f"lr={args.lr:.6g} ({recipe.lr} x global batch {global_batch} / {recipe.lr_batch})")
    if "min_lr" in recipe.flags and "min_lr" not in given and args.min_lr > args.lr:
        args.min_lr = recipe.flags["min_lr"] * args.lr / recipe.lr  # scaled with the lr below the recipe's batch
        lines.append(f"min_lr={args.min_lr:.3g} (the recipe's {recipe.flags['min_lr']} scaled as the lr, which "
                     f"fell below it)")
    if recipe.torchvision_ema is not None and "model_ema" not in given:
        args.model_ema = torchvision_ema_decay(recipe.torchvision_ema, global_batch, args.model_ema_steps,
                                               args.epochs)
        lines.append(f"model_ema={args.model_ema:.6g} (torchvision's {recipe.torchvision_ema} for global batch "
                     f"{global_batch}, every {args.model_ema_steps} steps, {args.epochs} epochs)")
    return lines + [f"differs from the source: {n}" for n in recipe.notes]
