"""The methods the papers compare (ERM, input mixup, manifold mixup, CutMix, timm's mix) and the recipes
every method is trained with (`paper`, `cpu`, `cpu-lowdata`), as plain frozen data."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

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
    manifold_mode: str = "mixup"           # "cutmix": Feature CutMix (a box of the partner's feature map)

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

    @property
    def alpha_field(self) -> Optional[str]:
        """The one Beta concentration this method is tuned by (None for ERM and for timm's two-alpha mix)."""
        return ALPHA_FIELDS.get(self.name)

    def with_alpha(self, alpha: float) -> "Method":
        """A copy with its alpha (see `alpha_field`) set to `alpha` and its label saying so."""
        name = self.alpha_field
        if name is None:
            raise ValueError(f"{self.name}: has no single alpha to set")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"{self.name.replace('_', '-')}_alpha: must be a finite number > 0, got {alpha!r}")
        label = re.sub(r"alpha [0-9.eE+-]+", f"alpha {alpha:g}", self.label)
        return dataclasses.replace(self, label=label, **{name: float(alpha)})


METHODS: dict[str, Method] = {
    "erm": Method("erm", "ERM (no mixing)"),
    # Zhang et al. mix one lam per batch with a shuffled copy of the batch: dalimix's "batch" mode.
    "mixup": Method("mixup", "input mixup, alpha 1", mixup_alpha=1.0),
    # Verma et al.: one of {input, after stage 1, after stage 2} drawn per step, lam ~ Beta(2, 2).
    "manifold": Method("manifold", "manifold mixup, alpha 2 (input, layer1, layer2)", manifold_alpha=2.0,
                       manifold_layers=("layer1", "layer2")),
    # Yun et al.'s CIFAR recipe: alpha 1, applied to a batch with probability 0.5 (ImageNet: 1.0).
    "cutmix": Method("cutmix", "CutMix, alpha 1, prob 0.5", cutmix_alpha=1.0, prob=0.5),
    # Yun et al.'s Feature CutMix (Table 3): CutMix at a drawn layer, here the manifold method's choices.
    "feature_cutmix": Method("feature_cutmix", "feature CutMix, alpha 1 (input, layer1, layer2)", manifold_alpha=1.0,
                             manifold_layers=("layer1", "layer2"), manifold_mode="cutmix"),
    # timm / DeiT ImageNet recipe.
    "mixup_cutmix": Method("mixup_cutmix", "mixup 0.8 + CutMix 1.0, smoothing 0.1 (timm)", mixup_alpha=0.8,
                           cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1),
}
DEFAULT_METHODS = ("erm", "mixup", "manifold", "cutmix")
ALPHA_FIELDS = {"mixup": "mixup_alpha", "cutmix": "cutmix_alpha", "manifold": "manifold_alpha",
                "feature_cutmix": "manifold_alpha"}

# CIFAR-10 test error (%) the papers report, per method (PreAct ResNet-18 unless said otherwise).
PAPER_FIGURES: dict[str, str] = {
    "erm": "5.6 [Z], 4.83 [V]",
    "mixup": "4.2 [Z], 3.82 [V]",
    "manifold": "2.95 [V]",
    "cutmix": "no PreAct ResNet-18 figure [Y]",
    "feature_cutmix": "no CIFAR figure [Y]",
    "mixup_cutmix": "-",
}
PAPER_NOTES = (
    "[Z] Zhang et al. 2018 (mixup), PreAct ResNet-18, 200 epochs, step schedule (the `paper` recipe). "
    "[V] Verma et al. 2019 (Manifold Mixup), PreAct ResNet-18, 2000 epochs (lr /10 at 500, 1000, 1500). "
    "[Y] Yun et al. 2019 (CutMix) report PyramidNet-200 on CIFAR-100 (16.45 -> 14.23 % error) and ResNet-50 "
    "on ImageNet (23.68 -> 21.40 % top-1 error; mixup 22.58, manifold mixup 22.50, feature CutMix 21.80)."
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
    val_per_class: Optional[int] = None     # a held-out set from the unused train images: at most N per class
    label_noise: float = 0.0               # share of training labels corrupted (Zhang et al. Table 2)
    noise_kind: str = "symmetric"          # or "pairflip" (label -> next class)
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
        need(self.val_per_class is None or posint(self.val_per_class), "val_per_class", "None or a positive int")
        need(isinstance(self.label_noise, (int, float)) and 0 <= self.label_noise <= 1, "label_noise", "in [0, 1]")
        need(self.noise_kind in ("symmetric", "pairflip"), "noise_kind", "'symmetric' or 'pairflip'")
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
        if self.label_noise:
            subset += f"{100 * self.label_noise:g}% {self.noise_kind} label noise, "
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
RECIPES["cpu-noisy"] = RECIPES["cpu-lowdata"].replace(
    name="cpu-noisy", description="Zhang et al.'s corrupted-label regime on 2 CPU cores: the cpu-lowdata network on "
                                  "200 train images per class, 50% symmetric label noise, 40 epochs; without DATA/val, "
                                  "validated on 200 unused train images per class (~3 min per run)",
    # Both cores for the model: decoding 32-pixel JPEGs keeps DALI's one thread mostly idle (1.8x per epoch).
    epochs=40, label_noise=0.5, val_per_class=200, torch_threads=2)
