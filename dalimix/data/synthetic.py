"""A small learnable image dataset, drawn on the spot: the default data of `make demo` and the tests.

Ten classes of shapes and textures (disc, square, triangle, ring, cross, stripes, checks, dots, waves,
gradient) with random colours, positions and sizes, at varied image sizes, some grayscale, written as JPEG
folders in ImageNet's `train/<class>/` and `val/<class>/` layout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("disc", "square", "triangle", "ring", "cross", "stripes", "checks", "dots", "waves", "gradient")


def draw_sample(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB image of class `kind` with random colours and placement; `size` is (width, height)."""
    w, h = size
    bg = tuple(int(v) for v in rng.integers(0, 110, 3))
    fg = tuple(int(v) for v in rng.integers(140, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    s = min(w, h)
    r = int(s * rng.uniform(0.25, 0.42))
    cx, cy = int(w / 2 + rng.uniform(-0.1, 0.1) * w), int(h / 2 + rng.uniform(-0.1, 0.1) * h)
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(4, int(s * rng.uniform(0.08, 0.16)))
    if kind == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, r // 3))
    elif kind == "cross":
        t = max(2, r // 3)
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    elif kind == "stripes":
        mask = ((xx + yy * rng.uniform(-0.3, 0.3)) // period) % 2 == 0
        return _paint(img, mask, fg)
    elif kind == "checks":
        mask = ((xx // period) + (yy // period)) % 2 == 0
        return _paint(img, mask, fg)
    elif kind == "dots":
        mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 3) ** 2
        return _paint(img, mask, fg)
    elif kind == "waves":
        mask = np.sin(xx / period * np.pi + 3 * np.sin(yy / (2 * period) * np.pi)) > 0
        return _paint(img, mask, fg)
    elif kind == "gradient":
        t = (xx / max(w - 1, 1))[..., None]
        arr = (np.array(bg)[None, None] * (1 - t) + np.array(fg)[None, None] * t).astype(np.uint8)
        return Image.fromarray(arr)
    else:
        raise ValueError(f"kind must be one of {CLASSES}, got {kind!r}")
    return img


def _paint(img: Image.Image, mask: np.ndarray, fg: tuple[int, ...]) -> Image.Image:
    arr = np.array(img)
    arr[mask] = fg
    return Image.fromarray(arr)


def make_dataset(root: str | os.PathLike, *, train_per_class: int = 60, val_per_class: int = 20,
                 classes: Sequence[str] = CLASSES, sizes: Sequence[tuple[int, int]] = ((96, 72), (128, 96),
                 (80, 120), (160, 120), (64, 64)), grayscale_every: int = 7, seed: int = 0,
                 quality: int = 90) -> Path:
    """Write `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg`; return `root`. Idempotent per seed."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"classes must be drawn from {CLASSES}, got unknown {unknown}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in classes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = sizes[int(rng.integers(len(sizes)))]
                img = draw_sample(kind, rng, size)
                if grayscale_every and i % grayscale_every == grayscale_every - 1:
                    img = img.convert("L")
                img.save(folder / f"{kind}_{i:05d}.jpg", quality=quality)
    return root
