"""Turning a batch's random draws into mixing parameters: partners, kinds, boxes and exact targets.

Pure NumPy and stateless: every random number comes from DALI's random operators (so a pipeline's seed and
DALI checkpoints govern it); this module only arranges the draws by `mode` and does the geometry, which is
where exactness lives. It runs inside the graph through `fn.python_function`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dalimix.config import MixConfig

# Columns of the per-sample uniform draw.
U_APPLY, U_SWITCH, U_CY, U_CX, U_MINMAX_H, U_MINMAX_W = range(6)
NUM_UNIFORMS = 6

KIND_NONE, KIND_MIXUP, KIND_CUTMIX = 0, 1, 2


def partners(n: int) -> np.ndarray:
    """Partner of each sample: the batch reversed (sample i with n-1-i), as timm does.

    Pairs are mutual, so "pair" mode can mix both members with each other; for odd n the middle sample is
    its own partner and so stays unmixed whatever is drawn (its target stays its own label).
    """
    return np.arange(n - 1, -1, -1, dtype=np.int32)


def draw_source(n: int, mode: str) -> np.ndarray:
    """Which sample's draws each sample uses: one for the batch, one per pair, or its own."""
    if mode == "batch":
        return np.zeros(n, dtype=np.int64)
    i = np.arange(n)
    if mode == "pair":
        return np.minimum(i, n - 1 - i)
    return i


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """Label-smoothed one-hot rows: off value eps/K, on value 1-eps+eps/K."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"label {int(labels[bad][0])} is out of range for num_classes={num_classes}")
    off = smoothing / num_classes
    out = np.full((labels.size, num_classes), off, dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0 - smoothing + off
    return out


def cutmix_boxes(lam: np.ndarray, u: np.ndarray, height: int, width: int,
                 minmax: tuple[float, float] | None) -> np.ndarray:
    """Boxes `[y0, x0, y1, x1]` (clipped to the image) for CutMix, as timm draws them.

    Without minmax: sides `int(H * sqrt(1 - lam))` (same for W) around a uniform centre `cy`, from
    `cy - cut // 2` to `cy + (cut + 1) // 2`, clipped; so an unclipped box has exactly the drawn side. With
    minmax: sides uniform in [min*H, max*H) (same for W), placed uniformly inside the image.
    """
    n = lam.shape[0]
    if minmax is not None:
        lo_h, hi_h = int(height * minmax[0]), int(height * minmax[1])
        lo_w, hi_w = int(width * minmax[0]), int(width * minmax[1])
        ch = lo_h + np.floor(u[:, U_MINMAX_H] * max(hi_h - lo_h, 0)).astype(np.int64)
        cw = lo_w + np.floor(u[:, U_MINMAX_W] * max(hi_w - lo_w, 0)).astype(np.int64)
        ch, cw = np.clip(ch, 0, height), np.clip(cw, 0, width)
        y0 = np.floor(u[:, U_CY] * (height - ch + 1)).astype(np.int64)
        x0 = np.floor(u[:, U_CX] * (width - cw + 1)).astype(np.int64)
        y0, x0 = np.minimum(y0, height - ch), np.minimum(x0, width - cw)
        return np.stack([y0, x0, y0 + ch, x0 + cw], axis=1)
    ratio = np.sqrt(np.clip(1.0 - lam, 0.0, 1.0))
    cut_h = (height * ratio).astype(np.int64)
    cut_w = (width * ratio).astype(np.int64)
    cy = np.minimum(np.floor(u[:, U_CY] * height).astype(np.int64), height - 1)
    cx = np.minimum(np.floor(u[:, U_CX] * width).astype(np.int64), width - 1)
    boxes = np.stack([cy - cut_h // 2, cx - cut_w // 2, cy + (cut_h + 1) // 2, cx + (cut_w + 1) // 2], axis=1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, height)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, width)
    return boxes.reshape(n, 4)


def mix_params(cfg: MixConfig, labels: np.ndarray, u: np.ndarray, lam_mixup: np.ndarray, lam_cutmix: np.ndarray,
               enabled: np.ndarray, height: int, width: int, with_targets: bool = True) -> dict[str, np.ndarray]:
    """Everything `mix` needs for one batch, from `n` rows of draws.

    Returns per sample: `partner` index, `kind` (0 none, 1 mixup, 2 CutMix), `box` ([y0, x0, y1, x1] pasted
    from the partner for CutMix, else empty), `lam` (the own label's target weight, which is also the own
    image's share in a mixup blend) and `targets` [n, num_classes].
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = labels.size
    src = draw_source(n, cfg.mode)
    u = np.asarray(u, dtype=np.float64).reshape(n, NUM_UNIFORMS)[src]
    lm = np.asarray(lam_mixup, dtype=np.float64).reshape(n)[src]
    lc = np.asarray(lam_cutmix, dtype=np.float64).reshape(n)[src]
    on = np.asarray(enabled).reshape(n).astype(bool)[src]
    partner = partners(n)

    apply = on & (u[:, U_APPLY] < cfg.prob) & cfg.mixing
    if cfg.mixup_on and cfg.cutmix_on:
        use_cut = u[:, U_SWITCH] < cfg.switch_prob
    else:
        use_cut = np.full(n, cfg.cutmix_on)
    lam = np.where(apply, np.where(use_cut, lc, lm), 1.0)
    kind = np.where(apply, np.where(use_cut, KIND_CUTMIX, KIND_MIXUP), KIND_NONE)
    # A sample that is its own partner (odd middle) changes nothing, whatever was drawn.
    kind = np.where(partner == np.arange(n), KIND_NONE, kind)

    boxes = np.zeros((n, 4), dtype=np.int64)
    cut = kind == KIND_CUTMIX
    if cut.any():
        boxes[cut] = cutmix_boxes(lam[cut], u[cut], height, width, cfg.cutmix_minmax)
        area = (boxes[cut, 2] - boxes[cut, 0]) * (boxes[cut, 3] - boxes[cut, 1])
        if cfg.correct_lam or cfg.cutmix_minmax is not None:
            lam[cut] = 1.0 - area / float(height * width)
    lam = np.where(kind == KIND_NONE, 1.0, lam)

    out = {
        "partner": partner,
        "kind": kind.astype(np.int32),
        "box": boxes.astype(np.int32),
        "lam": lam.astype(np.float32),
    }
    if with_targets:
        own = one_hot(labels, cfg.num_classes, cfg.label_smoothing)
        lam32 = out["lam"][:, None]
        out["targets"] = lam32 * own + (1.0 - lam32) * own[partner]
    return out


def float32_threshold(p: float) -> float:
    """The smallest float32 >= p: a float32 draw u satisfies u < p exactly when u < this threshold, so the
    native step (float32 arguments) decides as NumPy does in float64."""
    t = np.float32(p)
    if float(t) < p:
        t = np.nextafter(t, np.float32(np.inf))
    return float(t)


def as_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack the per-sample arrays DALI hands a batch-processing python_function."""
    return np.stack([np.asarray(a) for a in arrays]) if len(arrays) else np.zeros((0,))
