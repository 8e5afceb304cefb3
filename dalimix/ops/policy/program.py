"""From a sample's random draws to the program its policy runs on it: which op each layer applies and with
which arguments, computed as timm's level functions and torchvision's magnitude tables compute them.

This is the NumPy twin of the native `fn.dalimix.policy_program` operator (identical programs, bit for bit,
tested) and the parameter step of the stock fallback. The draws come from DALI's random operators, so a
pipeline seed replays a run: per sample `UNIFORMS_PER_LAYER` uniforms in [0, 1) and one standard normal per
program layer. A program is `ops` int32 [L] and `params` float64 [L, NUM_PARAMS] (doubles, as the libraries
compute their arguments in Python floats); `apply.py` and the native
`fn.dalimix.apply_program` run it on an image, with PIL's semantics. No DALI, no torch here.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from dalimix.ops.policy.spec import TV_IMAGENET_POLICY, TV_OPS, JitterSpec, PolicySpec

# Op codes (the same numbers in native/src/policy_ops.h). Params: POSTERIZE bits; SOLARIZE threshold (x < t
# is kept); SOLARIZE_ADD add, threshold; BRIGHTNESS / COLOR / CONTRAST / SHARPNESS the enhance factor; AFFINE
# PIL's six coefficients (output -> input), the interpolation code and, for a rotation, its angle (else
# NaN); BLUR the Gaussian radius; HUE torchvision's hue factor.
IDENTITY, AUTOCONTRAST, EQUALIZE, INVERT, POSTERIZE, SOLARIZE, SOLARIZE_ADD = 0, 1, 2, 3, 4, 5, 6
BRIGHTNESS, COLOR, CONTRAST, SHARPNESS, AFFINE, GRAYSCALE, BLUR, HUE = 7, 8, 9, 10, 11, 12, 13, 14
OP_NAMES = ("identity", "autocontrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "brightness",
            "color", "contrast", "sharpness", "affine", "grayscale", "blur", "hue")
NUM_PARAMS = 8
UNIFORMS_PER_LAYER = 8
INTERP_CODES = {"bilinear": 1, "bicubic": 2}
JITTER_LAYERS = 4
LEVEL_DENOM = 10.0


def program_layers(policy: Optional[PolicySpec], jitter: Optional[JitterSpec]) -> int:
    """Layers of the program of one image: the policy's steps, then colour jitter's four."""
    return (policy.layers if policy is not None else 0) + (JITTER_LAYERS if jitter is not None else 0)


def rotate_matrix(degrees: float, w: int, h: int) -> list[float]:
    """PIL `Image.rotate(degrees)`'s affine data (output -> input) about the image centre, as Pillow builds it."""
    angle = -math.radians(degrees % 360.0)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0, round(-math.sin(angle), 15),
         round(math.cos(angle), 15), 0.0]
    cx, cy = w / 2, h / 2
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return m


def _tv_shear_matrix(magnitude: float, axis: int) -> list[float]:
    """torchvision's inverse affine of a shear of `atan(magnitude)` degrees about (0, 0)."""
    t = math.tan(math.radians(math.degrees(math.atan(magnitude))))
    return [1.0, t, 0.0, 0.0, 1.0, 0.0] if axis == 0 else [1.0, 0.0, 0.0, t, 1.0, 0.0]


def _affine(m: list[float], interp: int, rotation: float = math.nan) -> tuple[int, list[float]]:
    """An affine layer: PIL's data (output -> input), the interpolation and, for a rotation, its angle
    (PIL's rotate turns multiples of 90 degrees into exact transposes)."""
    return AFFINE, [*m, float(interp), rotation]


def _interp(spec: PolicySpec, u: float) -> int:
    if spec.interpolation == "random":  # timm without an interpolation: bilinear or bicubic per op
        return INTERP_CODES["bilinear"] if u < 0.5 else INTERP_CODES["bicubic"]
    return INTERP_CODES[spec.interpolation]


def timm_op(name: str, m: float, negate: bool, interp: int, size: int, blur_u: float = 0.0) -> tuple[int, list[float]]:
    """timm's op `name` at magnitude `m` (clipped already), with its random sign and interpolation."""
    level = m / LEVEL_DENOM
    sign = -1.0 if negate else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return {"AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE, "Invert": INVERT}[name], []
    if name == "Rotate":
        degrees = sign * level * 30.0
        return _affine(rotate_matrix(degrees, size, size), interp, degrees)
    if name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        bits = int(level * 4)
        bits = {"Posterize": bits, "PosterizeIncreasing": 4 - bits, "PosterizeOriginal": bits + 4}[name]
        return (IDENTITY, []) if bits >= 8 else (POSTERIZE, [float(bits)])
    if name in ("Solarize", "SolarizeIncreasing"):
        t = min(256, int(level * 256))
        return SOLARIZE, [float(t if name == "Solarize" else 256 - t)]
    if name == "SolarizeAdd":
        return SOLARIZE_ADD, [float(min(128, int(level * 110))), 128.0]
    enhance = {"Color": COLOR, "Contrast": CONTRAST, "Brightness": BRIGHTNESS, "Sharpness": SHARPNESS}
    if name in enhance:
        return enhance[name], [level * 1.8 + 0.1]
    if name.endswith("Increasing") and name[:-len("Increasing")] in enhance:
        return enhance[name[:-len("Increasing")]], [max(0.1, 1.0 + sign * level * 0.9)]
    if name in ("ShearX", "ShearY"):
        s = sign * level * 0.3
        return _affine([1.0, s, 0.0, 0.0, 1.0, 0.0] if name == "ShearX" else [1.0, 0.0, 0.0, s, 1.0, 0.0], interp)
    if name in ("TranslateXRel", "TranslateYRel"):
        pixels = sign * level * 0.45 * size
        return _affine([1.0, 0.0, pixels, 0.0, 1.0, 0.0] if name == "TranslateXRel" else
                       [1.0, 0.0, 0.0, 0.0, 1.0, pixels], interp)
    if name == "Desaturate":
        factor = min(1.0, max(0.0, 1.0 - max(0.5, min(1.0, 0.5 + 0.5 * level))))
        return COLOR, [factor]
    if name == "GaussianBlur":
        return BLUR, [max(0.1, min(2.0, 0.1 + 1.9 * level))]
    if name == "GaussianBlurRand":
        top = 2.0 * max(0.0, min(1.0, level))
        return BLUR, [0.1 + (top - 0.1) * blur_u]
    raise ValueError(f"unknown timm op {name!r}")


def _tv_magnitudes(name: str, bins: int, size: int, wide: bool) -> tuple[np.ndarray, bool]:
    """torchvision's `_augmentation_space` entry for `name`: (magnitudes per bin, signed)."""
    top = {"ShearX": 0.99 if wide else 0.3, "ShearY": 0.99 if wide else 0.3,
           "TranslateX": 32.0 if wide else 150.0 / 331.0 * size, "TranslateY": 32.0 if wide else 150.0 / 331.0 * size,
           "Rotate": 135.0 if wide else 30.0}
    if name in top:
        return np.linspace(0.0, top[name], bins, dtype=np.float32), True
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return np.linspace(0.0, 0.99 if wide else 0.9, bins, dtype=np.float32), True
    if name == "Posterize":
        return 8 - np.round(np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / (6 if wide else 4))), False
    if name == "Solarize":
        return np.linspace(255.0, 0.0, bins, dtype=np.float32), False
    return np.zeros(1, np.float32), False


def tv_op(name: str, magnitude: float, interp: int, size: int) -> tuple[int, list[float]]:
    """torchvision's `_apply_op(img, name, magnitude, ...)` on a PIL image, as a program layer."""
    if name == "Identity":
        return IDENTITY, []
    if name in ("ShearX", "ShearY"):
        return _affine(_tv_shear_matrix(magnitude, 0 if name == "ShearX" else 1), interp)
    if name in ("TranslateX", "TranslateY"):
        t = float(int(magnitude))
        return _affine([1.0, 0.0, -t, 0.0, 1.0, 0.0] if name == "TranslateX" else [1.0, 0.0, 0.0, 0.0, 1.0, -t],
                       interp)
    if name == "Rotate":
        return _affine(rotate_matrix(magnitude, size, size), interp, magnitude)
    enhance = {"Brightness": BRIGHTNESS, "Color": COLOR, "Contrast": CONTRAST, "Sharpness": SHARPNESS}
    if name in enhance:
        return enhance[name], [1.0 + magnitude]
    if name == "Posterize":
        bits = int(magnitude)
        return (IDENTITY, []) if bits >= 8 else (POSTERIZE, [float(bits)])
    if name == "Solarize":
        return SOLARIZE, [magnitude]
    return {"AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE, "Invert": INVERT}[name], []


def _f32(x: float) -> float:
    """`x` as the native operator receives it (a float32 argument), read back as a double."""
    return float(np.float32(x))


def _timm_magnitude(spec: PolicySpec, base: float, u: float, z: float) -> float:
    m = base
    std = _f32(spec.magnitude_std)
    if std == math.inf:
        m = u * base  # random.uniform(0, magnitude)
    elif std > 0:
        m = base + std * z  # random.gauss(magnitude, std)
    return max(0.0, min(m, _f32(spec.magnitude_max or 0.0) or LEVEL_DENOM))


def _pick(n: int, u: float) -> int:
    return min(int(u * n), n - 1)


def _weighted(weights: Sequence[float], taken: set[int], u: float) -> int:
    """A draw proportional to `weights` among the indices not `taken` (numpy's choice without replacement)."""
    w = [0.0 if i in taken else float(x) for i, x in enumerate(weights)]
    total, acc = sum(w), 0.0
    for i, x in enumerate(w):
        acc += x / total
        if u < acc:
            return i
    return max(i for i, x in enumerate(w) if x > 0)


def policy_layers(spec: PolicySpec, u: Sequence[float], z: Sequence[float], size: int) -> list[tuple[int, list[float]]]:
    """The policy's layers for one image from its draws (`u`: UNIFORMS_PER_LAYER per layer, `z`: one normal
    per layer)."""
    out = []
    if spec.kind == "timm_rand":
        taken: set[int] = set()
        for layer in range(spec.num_layers):
            d = u[layer * UNIFORMS_PER_LAYER:]
            if spec.weights is None:
                k = _pick(len(spec.ops), d[0])
            else:
                k = _weighted([_f32(w) for w in spec.weights], taken, float(d[0]))
                taken.add(k)
            if _f32(spec.prob) < 1.0 and d[1] > _f32(spec.prob):
                out.append((IDENTITY, []))
                continue
            m = _timm_magnitude(spec, _f32(spec.magnitude), d[4], z[layer])
            out.append(timm_op(spec.ops[k], m, d[2] > 0.5, _interp(spec, d[3]), size, d[5]))
    elif spec.kind == "timm_3a":
        name, base = (("Solarize", 5.0), ("Desaturate", 10.0), ("GaussianBlurRand", 10.0))[_pick(3, u[0])]
        m = _timm_magnitude(spec, base, u[4], z[0])
        out.append(timm_op(name, m, u[2] > 0.5, _interp(spec, u[3]), size, u[5]))
    elif spec.kind in ("tv_ra", "tv_ta_wide"):
        wide = spec.kind == "tv_ta_wide"
        for layer in range(spec.num_layers):
            d = u[layer * UNIFORMS_PER_LAYER:]
            name = TV_OPS[_pick(len(TV_OPS), d[0])]
            mags, signed = _tv_magnitudes(name, 31, size, wide)
            magnitude = float(mags[_pick(31, d[1]) if wide else int(spec.magnitude)]) if mags.size > 1 else 0.0
            if signed and d[2] < 0.5:
                magnitude = -magnitude
            out.append(tv_op(name, magnitude, INTERP_CODES[spec.interpolation], size))
    elif spec.kind == "tv_imagenet":
        steps = TV_IMAGENET_POLICY[_pick(len(TV_IMAGENET_POLICY), u[0])]
        for i, (name, p, bin_) in enumerate(steps):
            d = u[i * UNIFORMS_PER_LAYER + 1:]
            if not d[0] <= p:
                out.append((IDENTITY, []))
                continue
            mags, signed = _tv_magnitudes(name, 10, size, False)
            magnitude = float(mags[bin_]) if bin_ is not None and mags.size > 1 else 0.0
            if signed and d[1] < 0.5:
                magnitude = -magnitude
            out.append(tv_op(name, magnitude, INTERP_CODES[spec.interpolation], size))
    return out


def jitter_layers(spec: JitterSpec, u: Sequence[float]) -> list[tuple[int, list[float]]]:
    """torchvision's ColorJitter: the four factors drawn in [lo, hi], applied in a random order."""
    r = [_f32(v) for rng in (spec.brightness, spec.contrast, spec.saturation, spec.hue) for v in rng]
    factors = [r[0] + (r[1] - r[0]) * u[0], r[2] + (r[3] - r[2]) * u[1], r[4] + (r[5] - r[4]) * u[2],
               r[6] + (r[7] - r[6]) * u[3]]
    order = sorted(range(4), key=lambda k: u[4 + k])  # a random permutation (stable on ties)
    ops = (BRIGHTNESS, CONTRAST, COLOR, HUE)
    identity = (spec.brightness == (1.0, 1.0), spec.contrast == (1.0, 1.0), spec.saturation == (1.0, 1.0),
                spec.hue == (0.0, 0.0))
    return [(IDENTITY, []) if identity[k] else (ops[k], [factors[k]]) for k in order]


def make_program(policy: Optional[PolicySpec], jitter: Optional[JitterSpec], u: np.ndarray, z: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ops int32 [L], params float64 [L, NUM_PARAMS]) of one image of `size` x `size` pixels. The draws are
    read as Python floats (float64 arithmetic throughout, as the native twin computes in double)."""
    u = [float(x) for x in np.asarray(u).reshape(-1)]
    z = [float(x) for x in np.asarray(z).reshape(-1)]
    layers = policy_layers(policy, u, z, size) if policy is not None else []
    if jitter is not None:
        base = (policy.layers if policy is not None else 0) * UNIFORMS_PER_LAYER
        layers += jitter_layers(jitter, u[base:base + UNIFORMS_PER_LAYER])
    ops = np.array([op for op, _ in layers], np.int32)
    params = np.zeros((len(layers), NUM_PARAMS), np.float64)
    for i, (_, p) in enumerate(layers):
        params[i, :len(p)] = p
    return ops, params
