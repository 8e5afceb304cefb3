"""Per-sample augmentation policies by the names their libraries give them, parsed once into a `PolicySpec`.

timm's strings (`rand-m9-mstd0.5-inc1`, `3a`, ...) mean what timm's `auto_augment.py` makes of them, and
torchvision's names (`ra`, `ta_wide`, `imagenet`) what its `RandAugment`, `TrivialAugmentWide` and
`AutoAugment(IMAGENET)` do; `color_jitter` means torchvision's `ColorJitter` as timm passes it. No DALI, no
torch here: this is configuration.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from dalimix import validation as V

# timm's op lists (auto_augment.py): the increasing variants with `-inc1`.
TIMM_RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                 "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
TIMM_RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                            "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                            "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                            "TranslateYRel")
TIMM_RAND_3A_OPS = ("SolarizeIncreasing", "Desaturate", "GaussianBlur")
TIMM_WEIGHTS_0 = {"Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
                  "ColorIncreasing": 0.025, "SharpnessIncreasing": 0.025, "AutoContrast": 0.025,
                  "SolarizeIncreasing": 0.005, "SolarizeAdd": 0.005, "ContrastIncreasing": 0.005,
                  "BrightnessIncreasing": 0.005, "Equalize": 0.005, "PosterizeIncreasing": 0.005, "Invert": 0.005}
TIMM_WEIGHTS_3A = {"SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2,
                   "ShearY": 2, "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1,
                   "SharpnessIncreasing": 1, "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1,
                   "Invert": 1}

# torchvision's op spaces (transforms/autoaugment.py), in its order.
TV_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
          "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
# AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin) steps, 10 bins.
TV_IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)

KINDS = ("timm_rand", "timm_3a", "tv_ra", "tv_ta_wide", "tv_imagenet")
INTERPOLATIONS = ("bilinear", "bicubic", "random")
FORMS = ("timm: 'rand-m{M}[-n{N}][-mstd{S}][-mmax{X}][-inc1][-p{P}][-t{3a|weights|3aw}]' (e.g. "
         "'rand-m9-mstd0.5-inc1') or '3a[-mstd{S}]'; torchvision: 'ra' (or 'ra-m{M}[-n{N}]'), 'ta_wide', 'imagenet'")


@dataclass(frozen=True)
class PolicySpec:
    """A parsed per-sample policy: which library's semantics (`kind`), its ops and their settings.

    timm_rand: `ops` (names, timm's), `num_layers`, `magnitude`, `magnitude_std` (inf: uniform in
    [0, magnitude]), `magnitude_max` (None: 10), `prob` per op, `weights` (None: uniform with replacement,
    else weighted without replacement). timm_3a: timm's 3-Augment AutoAugment policy. tv_*: torchvision's
    RandAugment (`num_layers`, `magnitude` bin of 31), TrivialAugmentWide, AutoAugment(IMAGENET).
    `fill` is the geometric ops' fill (per channel, 0..255); `interpolation` theirs ("random": bilinear or
    bicubic per op, as timm without an interpolation).
    """

    kind: str
    text: str
    ops: tuple[str, ...] = ()
    num_layers: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    magnitude_max: Optional[float] = None
    prob: float = 0.5
    weights: Optional[tuple[float, ...]] = None
    fill: tuple[int, int, int] = (0, 0, 0)
    interpolation: str = "bilinear"

    @property
    def layers(self) -> int:
        """Program layers the policy writes per image (steps that may run)."""
        if self.kind in ("timm_rand", "tv_ra"):
            return self.num_layers
        if self.kind == "tv_imagenet":
            return 2
        return 1


def timm_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """timm's `img_mean` fill: the normalisation mean as 0..255 levels (Python's round, as timm computes it)."""
    return tuple(min(255, round(255 * float(x))) for x in mean)  # type: ignore[return-value]


def _timm_rand(text: str, fill: tuple[int, ...], interpolation: str) -> PolicySpec:
    magnitude, layers, prob, increasing = 10.0, 2, 0.5, False
    mstd, mmax, transforms = 0.0, None, None
    for section in text.split("-")[1:]:
        if section.startswith("t"):
            transforms = transforms or section[1:]
            continue
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            continue  # timm ignores sections without a number
        key, val = parts[:2]
        try:
            if key == "mstd":
                mstd = float(val)
                mstd = math.inf if mstd > 100 else mstd
            elif key == "mmax":
                mmax = float(int(val))
            elif key == "inc":
                increasing = bool(int(val))
            elif key == "m":
                magnitude = float(int(val))
            elif key == "n":
                layers = int(val)
            elif key == "p":
                prob = float(val)
            else:
                raise ValueError(f"unknown section {section!r}")
        except ValueError as exc:
            raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: {exc}; expected {FORMS}") from None
    weights = None
    if transforms in ("weights", "3aw"):
        table = TIMM_WEIGHTS_0 if transforms == "weights" else TIMM_WEIGHTS_3A
        ops = tuple(table)
        total = sum(table.values())
        weights = tuple(table[o] / total for o in ops)
    elif transforms == "3a":
        ops = TIMM_RAND_3A_OPS
    else:
        ops = TIMM_RAND_INCREASING_OPS if increasing else TIMM_RAND_OPS
    if weights is not None and layers > len(ops):
        raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: {layers} layers drawn without replacement "
                                              f"from {len(ops)} ops")
    if layers < 1:
        raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: n must be >= 1")
    return PolicySpec("timm_rand", text, ops=ops, num_layers=layers, magnitude=magnitude, magnitude_std=mstd,
                      magnitude_max=mmax, prob=prob, weights=weights, fill=tuple(fill),  # type: ignore[arg-type]
                      interpolation=interpolation)


def _timm_3a(text: str, fill: tuple[int, ...], interpolation: str) -> PolicySpec:
    mstd = 0.0
    for section in text.split("-")[1:]:
        parts = re.split(r"(\d.*)", section)
        if len(parts) >= 2 and parts[0] == "mstd":
            mstd = float(parts[1])
            mstd = math.inf if mstd > 100 else mstd
        elif len(parts) >= 2:
            raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: unknown section {section!r}; expected "
                                                  f"{FORMS}")
    return PolicySpec("timm_3a", text, ops=("Solarize", "Desaturate", "GaussianBlurRand"), magnitude_std=mstd,
                      fill=tuple(fill), interpolation=interpolation, prob=1.0)  # type: ignore[arg-type]


def _tv_ra(text: str, interpolation: str) -> PolicySpec:
    magnitude, layers = 9, 2
    for section in text.split("-")[1:]:
        parts = re.split(r"(\d.*)", section)
        if len(parts) >= 2 and parts[0] in ("m", "n"):
            value = int(parts[1])
            magnitude, layers = (value, layers) if parts[0] == "m" else (magnitude, value)
        else:
            raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: unknown section {section!r}; expected "
                                                  f"{FORMS}")
    if not 0 <= magnitude <= 30 or layers < 1:
        raise V.ArgumentError("auto_augment", f"auto_augment {text!r}: torchvision's RandAugment takes a magnitude "
                                              f"bin in [0, 30] and at least one op")
    return PolicySpec("tv_ra", text, ops=TV_OPS, num_layers=layers, magnitude=float(magnitude), prob=1.0,
                      interpolation=interpolation)


def parse_policy(text: Optional[str], *, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 interpolation: str = "bilinear") -> Optional[PolicySpec]:
    """The policy `text` names, for images normalised with `mean` (timm fills with it) and resampled with
    `interpolation` (the pipeline's: timm and torchvision use the recipe's interpolation in their geometric
    ops, timm a random one of bilinear / bicubic when it has none: pass "random"). None for None or ""."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise V.ArgumentError("auto_augment", f"auto_augment must be None or a string ({FORMS}), got {text!r}")
    V.one_of("interpolation", interpolation, INTERPOLATIONS)
    name = text.strip()
    if name == "rand" or name.startswith("rand-"):
        return _timm_rand(name, timm_fill(mean), interpolation)
    if name == "3a" or name.startswith("3a-"):
        return _timm_3a(name, timm_fill(mean), interpolation)
    tv_interp = "bilinear" if interpolation == "random" else interpolation
    if name == "ra" or name.startswith("ra-"):
        return _tv_ra(name, tv_interp)
    if name == "ta_wide":
        return PolicySpec("tv_ta_wide", name, ops=TV_OPS, num_layers=1, prob=1.0, interpolation=tv_interp)
    if name == "imagenet":
        return PolicySpec("tv_imagenet", name, num_layers=2, prob=1.0, interpolation=tv_interp)
    raise V.ArgumentError("auto_augment", f"auto_augment: unknown policy {text!r}; expected {FORMS}")


@dataclass(frozen=True)
class JitterSpec:
    """torchvision's ColorJitter ranges: factors drawn uniformly in [lo, hi] (hue in [-h, h]), applied in a
    random order; a component whose range is the identity is skipped."""

    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    hue: tuple[float, float] = (0.0, 0.0)
    values: tuple[float, ...] = field(default=(), compare=False)


def parse_color_jitter(value: Any) -> Optional[JitterSpec]:
    """None / 0 (off), a float x (brightness, contrast and saturation x, as timm passes one number), or
    (b, c, s[, h]) as torchvision's ColorJitter takes them."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == 0:
            return None
        values: tuple[float, ...] = (float(value),) * 3
    elif isinstance(value, (tuple, list)) and len(value) in (3, 4):
        values = tuple(float(v) for v in value)
    else:
        raise V.ArgumentError("color_jitter", f"color_jitter must be None, a number or (brightness, contrast, "
                                              f"saturation[, hue]), got {value!r}")
    if any(v < 0 or not math.isfinite(v) for v in values) or (len(values) == 4 and values[3] > 0.5):
        raise V.ArgumentError("color_jitter", f"color_jitter: factors must be >= 0 and hue in [0, 0.5], got {value!r}")
    b, c, s = ((max(0.0, 1 - v), 1 + v) for v in values[:3])
    h = (-values[3], values[3]) if len(values) == 4 else (0.0, 0.0)
    if all(r == (1.0, 1.0) for r in (b, c, s)) and h == (0.0, 0.0):
        return None
    return JitterSpec(b, c, s, h, values=values)
