"""Random erasing (Zhong et al. 2020) in a DALI graph, with timm's options (re_prob, re_mode, re_count).

Applied to normalised images, after mixing. Each sample is erased with probability `prob`, in 1..`count`
rectangles of area 2%-33% (shared out over the count) and aspect ratio 0.3-3.3, filled with 0 ("const",
the dataset mean after normalisation), one normal value per channel ("rand") or normal noise per pixel
("pixel"). Draws come from DALI's random operators; a stateless NumPy step does the rejection sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from nvidia.dali import fn, types

from dalimix import validation as V
from dalimix.ops.mix_params import as_batch

MODES = ("const", "rand", "pixel")
MAX_COUNT = 8  # regions per image the native operator takes
ATTEMPTS = 10
AREA = (0.02, 1 / 3)
LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))


@dataclass(frozen=True)
class ErasingConfig:
    prob: float = 0.0
    mode: str = "const"
    count: int = 1

    def __post_init__(self) -> None:
        V.probability("re_prob", self.prob)
        V.one_of("re_mode", self.mode, MODES)
        V.positive_int("re_count", self.count)
        if self.count > MAX_COUNT:
            raise V.ArgumentError("re_count", f"re_count must be at most {MAX_COUNT}, got {self.count!r}")


def erase_boxes(u: np.ndarray, height: int, width: int, count: int) -> np.ndarray:
    """[count, 4] boxes (y0, x0, h, w) from one row of uniforms; unused regions have h = w = 0.

    u = [apply..., n_regions, then per region and attempt: area, log-ratio, top, left].
    """
    boxes = np.zeros((count, 4), np.int64)
    n = 1 + min(int(u[0] * count), count - 1)
    area = height * width
    for r in range(n):
        for a in range(ATTEMPTS):
            ua, ur, uy, ux = u[1 + 4 * (r * ATTEMPTS + a): 5 + 4 * (r * ATTEMPTS + a)]
            target = (AREA[0] + ua * (AREA[1] - AREA[0])) * area / n
            ratio = math.exp(LOG_RATIO[0] + ur * (LOG_RATIO[1] - LOG_RATIO[0]))
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if 0 < h < height and 0 < w < width:
                top = min(int(uy * (height - h + 1)), height - h)
                left = min(int(ux * (width - w + 1)), width - w)
                boxes[r] = (top, left, h, w)
                break
    return boxes


class _EraseStep:
    def __init__(self, cfg: ErasingConfig, layout: str):
        self.cfg = cfg
        self.hw = (1, 2) if layout == "CHW" else (0, 1)

    def __call__(self, apply, uniforms, shapes):
        out: list[list[np.ndarray]] = [[] for _ in range(2 * self.cfg.count)]
        for do, u, shape in zip(as_batch(apply).reshape(-1), uniforms, shapes):
            shape = np.asarray(shape).reshape(-1)
            h, w = int(shape[self.hw[0]]), int(shape[self.hw[1]])
            boxes = erase_boxes(np.asarray(u, np.float64), h, w, self.cfg.count) if do else \
                np.zeros((self.cfg.count, 4), np.int64)
            for r, (y0, x0, bh, bw) in enumerate(boxes):
                out[2 * r].append(np.array([y0, x0], np.float32))
                out[2 * r + 1].append(np.array([bh, bw], np.float32))
        return tuple(out)


def random_erasing(images: Any, cfg: ErasingConfig, layout: str = "CHW", dtype: str = "float32") -> Any:
    """Erase random rectangles of normalised float images (CHW or HWC, CPU or GPU) with stock DALI operators.

    dalimix's train graph erases inside its native operator; this is the graph used without it. float16
    images are erased in float32 (DALI's GPU `erase` and `multi_paste` have no float16 kernels).
    """
    if cfg.prob <= 0:
        return images
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if dtype == "float16":
        images = fn.cast(images, dtype=types.FLOAT)
    on_gpu = getattr(images, "device", "cpu") == "gpu"
    apply = fn.random.coin_flip(probability=cfg.prob)
    uniforms = fn.random.uniform(range=[0.0, 1.0], shape=[1 + 4 * ATTEMPTS * cfg.count])
    regions = fn.python_function(apply, uniforms, images.shape(device="cpu"), function=_EraseStep(cfg, layout),
                                 batch_processing=True, num_outputs=2 * cfg.count)
    regions = regions if isinstance(regions, (list, tuple)) else [regions]
    channels = 3
    for r in range(cfg.count):
        anchor, shape = regions[2 * r], regions[2 * r + 1]
        if cfg.mode == "pixel":
            images = _paste_noise(images, anchor, shape, layout, on_gpu)
            continue
        fill = fn.random.normal(shape=[channels]) if cfg.mode == "rand" else 0.0
        images = fn.erase(images, anchor=anchor, shape=shape, axis_names="HW", fill_value=fill)
    return fn.cast(images, dtype=types.FLOAT16) if dtype == "float16" else images


def _paste_noise(images: Any, anchor: Any, shape: Any, layout: str, on_gpu: bool) -> Any:
    # Noise over the whole canvas, of which the box is pasted (HWC only): never an empty noise sample (the
    # GPU cast of an all-empty batch fails) and both inputs of multi_paste share one shape (its GPU kernel
    # reads every input with the first one's pitch).
    x = images if layout == "HWC" else fn.transpose(images, perm=[1, 2, 0], output_layout="HWC")
    noise = fn.random.normal(x, dtype=types.FLOAT, device="gpu" if on_gpu else "cpu")
    full = fn.cast(images.shape(device="cpu"), dtype=types.INT32)
    canvas = fn.slice(full, 0, 2, axes=[0]) if layout == "HWC" else fn.slice(full, 1, 2, axes=[0])
    corner = fn.cast(anchor, dtype=types.INT32)
    hw = fn.cast(shape, dtype=types.INT32)
    zero = fn.constant(idata=[0, 0], shape=[2], dtype=types.INT32)
    anchors = fn.stack(zero, corner)
    shapes = fn.stack(canvas, hw)
    x = fn.multi_paste(x, noise, in_anchors=anchors, out_anchors=anchors, shapes=shapes, output_size=canvas)
    return x if layout == "HWC" else fn.transpose(x, perm=[2, 0, 1], output_layout="CHW")
