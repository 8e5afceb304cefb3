"""The mixing options, with timm's names and semantics, checked once at construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from dalimix import validation as V

MODES = ("batch", "pair", "elem")


@dataclass(frozen=True)
class MixConfig:
    """How mixup and CutMix mix a batch and what targets they produce.

    An alpha of 0 turns that kind of mixing off; with both off (and no `cutmix_minmax`) only one-hot /
    label-smoothed targets are produced. `cutmix_minmax=(lo, hi)` samples CutMix box sides as fractions
    of H and W (and, as in timm, turns CutMix on with its alpha unused). `prob` is the chance to mix at all,
    `switch_prob` the chance to use CutMix rather than mixup when both are on. `mode` says what shares a
    draw: the whole "batch", each "pair" of partners, or each "elem"ent. `correct_lam` makes a CutMix
    target weight the area actually pasted after clipping the box to the image.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    cutmix_minmax: Optional[Tuple[float, float]] = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    correct_lam: bool = True
    label_smoothing: float = 0.1
    num_classes: Optional[int] = None  # None: the pipeline's class count (train_pipeline fills it in)

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            V.non_negative(name, getattr(self, name), label=f"MixConfig.{name}")
        for name in ("prob", "switch_prob"):
            V.probability(name, getattr(self, name), label=f"MixConfig.{name}")
        V.one_of("mode", self.mode, MODES, label="MixConfig.mode")
        V.below_one("label_smoothing", self.label_smoothing, label="MixConfig.label_smoothing")
        if self.num_classes is not None:
            V.positive_int("num_classes", self.num_classes, label="MixConfig.num_classes")
        if self.cutmix_minmax is not None:
            mm = self.cutmix_minmax
            if (not isinstance(mm, (tuple, list)) or len(mm) != 2
                    or not all(isinstance(v, (int, float)) for v in mm) or not 0.0 < mm[0] <= mm[1] <= 1.0):
                raise V.ArgumentError("cutmix_minmax", f"MixConfig.cutmix_minmax must be None or (min, max) with "
                                                       f"0 < min <= max <= 1, got {mm!r}")
            object.__setattr__(self, "cutmix_minmax", (float(mm[0]), float(mm[1])))
        V.flag("correct_lam", self.correct_lam, label="MixConfig.correct_lam")

    def with_classes(self, count: int) -> "MixConfig":
        """This config for a dataset of `count` classes: `num_classes` filled in when it was left to the
        data; an explicit value smaller than `count` is an error naming it."""
        if self.num_classes is None:
            return dataclasses.replace(self, num_classes=int(count))
        if self.num_classes < count:
            raise V.ArgumentError("num_classes", f"MixConfig.num_classes={self.num_classes} is smaller than the "
                                                 f"{count} classes of the data")
        return self

    def require_classes(self, where: str) -> int:
        """`num_classes`, or an error saying it must be given where no dataset tells it (`where`)."""
        if self.num_classes is None:
            raise V.ArgumentError("num_classes", f"{where}: MixConfig.num_classes is None; give the class count "
                                                 f"(train_pipeline fills it in from the data)")
        return self.num_classes

    @property
    def mixup_on(self) -> bool:
        return self.mixup_alpha > 0

    @property
    def cutmix_on(self) -> bool:
        return self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @property
    def mixing(self) -> bool:
        """Whether any pixels get mixed (as opposed to targets only)."""
        return (self.mixup_on or self.cutmix_on) and self.prob > 0

    @property
    def soft_targets(self) -> bool:
        """Whether targets are float class distributions rather than int labels."""
        return self.mixing or self.label_smoothing > 0
