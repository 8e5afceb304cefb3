"""Plain NumPy references for dalimix's native operators (float64 unless the operator's own arithmetic is
float32 by definition, as for the erasing noise).

resample: a triangle filter centred like DALI's linear resize (radius 1 = bilinear; with antialias, as
wide as the downscale), borders clamped. Then mixup / CutMix with the partner, horizontal flip,
`(v - mean) / std`, and the erase regions filled last.
"""
from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1


def cubic_kernel(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel, a = -0.5 (PIL's bicubic)."""
    a, x = -0.5, np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def axis_taps(n_in: int, n_out: int, antialias: bool, cubic: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    scale = n_in / n_out
    stretch = scale if antialias and scale > 1 else 1.0
    radius = (2.0 if cubic else 1.0) * stretch
    out = []
    for o in range(n_out):
        centre = (o + 0.5) * scale - 0.5
        first = int(np.floor(centre - radius)) + 1
        last = int(np.floor(centre + radius))
        idx = np.arange(first, last + 1)
        w = cubic_kernel((idx - centre) / stretch) if cubic else np.maximum(0.0, 1.0 - np.abs(idx - centre) / radius)
        out.append((np.clip(idx, 0, n_in - 1), w / w.sum()))
    return out


def resample(img_hwc: np.ndarray, oh: int, ow: int, antialias: bool = False, cubic: bool = False) -> np.ndarray:
    """Resample to oh x ow; the cubic filter's overshoot is clipped to 0..255 for uint8 input."""
    img = img_hwc.astype(np.float64)
    rows = np.stack([np.tensordot(w, img[i], axes=(0, 0)) for i, w in axis_taps(img.shape[0], oh, antialias, cubic)])
    out = np.stack([np.tensordot(w, rows[:, i], axes=(0, 1))
                    for i, w in axis_taps(img.shape[1], ow, antialias, cubic)], axis=1)
    return np.clip(out, 0, 255) if cubic and img_hwc.dtype == np.uint8 else out


def hash3(a: int, b: int, c: int) -> int:
    x = ((a << 32) ^ ((b * 0x9E3779B97F4A7C15) & M64) ^ ((c * 0xC2B2AE3D27D4EB4F) & M64)) & M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return x & 0xFFFFFFFF


def normal_at(seed: int, stream: int, index: int) -> float:
    h1 = hash3(seed & 0xFFFFFFFF, stream, (2 * index) & 0xFFFFFFFF)
    h2 = hash3(seed & 0xFFFFFFFF, stream, (2 * index + 1) & 0xFFFFFFFF)
    u1 = np.float32((h1 >> 8) + 1) * np.float32(1.0 / 16777217.0)
    u2 = np.float32(h2 >> 8) * np.float32(1.0 / 16777216.0)
    return float(np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(np.float32(2 * np.pi) * u2))


def _regions(erase, i) -> list[np.ndarray]:
    if erase is None:
        return []
    return [r for r in np.asarray(erase[i]).reshape(-1, 4) if r[2] > r[0] and r[3] > r[1]]


def _erase(v: np.ndarray, regions, erase_mode: int, seed: int) -> np.ndarray:
    """Fill `regions` of a normalised HWC image in place (the last region wins where they overlap)."""
    ow, c = v.shape[1], v.shape[2]
    for r, (y0, x0, y1, x1) in enumerate(regions):
        for y in range(max(y0, 0), min(y1, v.shape[0])):
            for x in range(max(x0, 0), min(x1, ow)):
                for ch in range(c):
                    if erase_mode == 0:
                        v[y, x, ch] = 0.0
                    elif erase_mode == 1:
                        v[y, x, ch] = normal_at(seed, r, ch)
                    else:
                        v[y, x, ch] = normal_at(seed, 1000, (y * ow + x) * c + ch)
    return v


def fused(images: list[np.ndarray], *, size=None, antialias=False, partner=None, kind=None, weight=None,
          box=None, mirror=None, mean=(0.0,), std=(1.0,), erase=None, erase_mode=0, seed=None,
          erase_before=False, interp=1) -> list[np.ndarray]:
    """HWC float64 outputs of `resample_mix` for HWC inputs and per-sample parameters.

    erase_before: each image's own regions (in its unflipped coordinates) are erased before mixing, so a
    partner brings its own erased regions along; otherwise the regions erase the flipped output.
    """
    n = len(images)
    partner = list(range(n)) if partner is None else partner
    kind = [0] * n if kind is None else kind
    out = []
    for i, img in enumerate(images):
        oh, ow = size if size is not None else img.shape[:2]
        c = img.shape[2]
        m = np.broadcast_to(np.asarray(mean, np.float64), (c,))
        s = np.broadcast_to(np.asarray(std, np.float64), (c,))

        def source(j: int) -> np.ndarray:
            v = resample(images[j], oh, ow, antialias, cubic=interp == 2)
            if erase_before:
                v = _erase((v - m) / s, _regions(erase, j), erase_mode, seed[j] if seed is not None else 0)
            return v

        own = source(i)
        k = kind[i] if partner[i] != i else 0
        if k == 1:
            v = weight[i] * own + (1 - weight[i]) * source(partner[i])
        elif k == 2:
            v = own.copy()
            y0, x0, y1, x1 = box[i]
            v[y0:y1, x0:x1] = source(partner[i])[y0:y1, x0:x1]
        else:
            v = own
        if mirror is not None and mirror[i]:
            v = v[:, ::-1]
        if not erase_before:
            v = _erase((v - m) / s, _regions(erase, i), erase_mode, seed[i] if seed is not None else 0)
        out.append(v)
    return out
