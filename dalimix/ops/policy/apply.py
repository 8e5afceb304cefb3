"""Running a policy program on an image with PIL, exactly as timm and torchvision call PIL: the reference the
native `fn.dalimix.apply_program` is tested against, and the policy step of the stock fallback (where no
compiler is found). uint8 HWC RGB in, uint8 HWC RGB out. No torch here.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from dalimix.ops.policy import program as P

RESAMPLE = {1: Image.Resampling.BILINEAR, 2: Image.Resampling.BICUBIC}


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    if bits <= 0:
        # timm's meaning of 0 bits (PosterizeIncreasing at magnitude 10): nothing kept, a black image. Pillow
        # before 13 gave that; Pillow 13 refuses 0 bits.
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def _solarize_add(img: Image.Image, add: int, thresh: int) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * 3)


def _hue(img: Image.Image, factor: float) -> Image.Image:
    """torchvision's adjust_hue on a PIL image: H of PIL's HSV shifted by uint8(factor * 255), wrapping."""
    h, s, v = img.convert("HSV").split()
    shift = int(math.trunc(factor * 255)) % 256
    np_h = (np.asarray(h, np.uint8).astype(np.int32) + shift) % 256
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


def _affine(img: Image.Image, p: np.ndarray, fill: tuple[int, ...]) -> Image.Image:
    resample = RESAMPLE[int(p[6])]
    angle = float(p[7])
    if math.isfinite(angle) and (angle % 360.0) in (0.0, 90.0, 180.0, 270.0):
        return img.rotate(angle, resample=resample, fillcolor=tuple(fill))  # PIL's exact transposes
    data = tuple(float(v) for v in p[:6])
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=resample, fillcolor=tuple(fill))


def apply_layer(img: Image.Image, op: int, p: np.ndarray, fill: Sequence[int]) -> Image.Image:
    """One program layer on a PIL RGB image."""
    if op == P.IDENTITY:
        return img
    if op == P.AUTOCONTRAST:
        return ImageOps.autocontrast(img)
    if op == P.EQUALIZE:
        return ImageOps.equalize(img)
    if op == P.INVERT:
        return ImageOps.invert(img)
    if op == P.POSTERIZE:
        return _posterize(img, int(p[0]))
    if op == P.SOLARIZE:
        return ImageOps.solarize(img, float(p[0]))
    if op == P.SOLARIZE_ADD:
        return _solarize_add(img, int(p[0]), int(p[1]))
    enhance = {P.BRIGHTNESS: ImageEnhance.Brightness, P.COLOR: ImageEnhance.Color, P.CONTRAST: ImageEnhance.Contrast,
               P.SHARPNESS: ImageEnhance.Sharpness}
    if op in enhance:
        return enhance[op](img).enhance(float(p[0]))
    if op == P.AFFINE:
        return _affine(img, p, tuple(int(v) for v in fill))
    if op == P.GRAYSCALE:
        return img.convert("L").convert("RGB")
    if op == P.BLUR:
        return img.filter(ImageFilter.GaussianBlur(radius=float(p[0])))
    if op == P.HUE:
        return _hue(img, float(p[0]))
    raise ValueError(f"unknown op code {op}")


def apply_program(image: np.ndarray, ops: np.ndarray, params: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """`image` (uint8 HWC, 3 channels; 1 channel is read as grey RGB) after every layer of its program."""
    arr = np.asarray(image, np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    for op, p in zip(np.asarray(ops).reshape(-1), np.asarray(params, np.float64).reshape(-1, P.NUM_PARAMS)):
        img = apply_layer(img, int(op), p, fill)
    return np.asarray(img, np.uint8)
