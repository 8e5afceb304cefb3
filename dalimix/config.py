"""The mixing options, with timm's names and semantics, checked once at construction."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

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
    num_classes: int = 1000

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"MixConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("prob", "switch_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"MixConfig.{name} must be in [0, 1], got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"MixConfig.mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"MixConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"MixConfig.num_classes must be an int >= 1, got {self.num_classes!r}")
        if self.cutmix_minmax is not None:
            mm = self.cutmix_minmax
            if (not isinstance(mm, (tuple, list)) or len(mm) != 2
                    or not all(isinstance(v, (int, float)) for v in mm) or not 0.0 < mm[0] <= mm[1] <= 1.0):
                raise ValueError(f"MixConfig.cutmix_minmax must be None or (min, max) with 0 < min <= max <= 1, "
                                 f"got {mm!r}")
            object.__setattr__(self, "cutmix_minmax", (float(mm[0]), float(mm[1])))
        if not isinstance(self.correct_lam, bool):
            raise ValueError(f"MixConfig.correct_lam must be a bool, got {self.correct_lam!r}")

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
