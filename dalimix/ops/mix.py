"""mixup and CutMix as DALI graph operators, with exact soft targets.

Usable inside any `@pipeline_def`: `images, targets = mix(images, labels, config)`. All randomness comes
from DALI's random operators (seeded by the pipeline, restored by DALI checkpoints). Where dalimix's native
plugin is loaded (`dalimix.native`), the draws become partners, boxes and targets in the native
`mix_params` operator and the pixels are mixed by the native `resample_mix` operator: no Python runs in the
graph. Otherwise (no compiler) the same draws go through the NumPy twin of that step (`mix_params.py`) and
stock DALI operators, each sample going down only the branch it drew; both paths give identical targets
and pixels within rounding (see tests/test_native.py).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from nvidia.dali import fn, types

from dalimix import adapters, native
from dalimix.config import MixConfig
from dalimix.ops.mix_params import KIND_CUTMIX, KIND_MIXUP, NUM_UNIFORMS, as_batch, float32_threshold, mix_params
from dalimix.ops.targets import smoothed_targets

DataNode = Any
LAYOUTS = ("CHW", "HWC")


class _ParamStep:
    """The batch-processing python_function behind `mix` (a class so that it pickles and has a name)."""

    NUM_OUTPUTS = 7

    def __init__(self, cfg: MixConfig, layout: str):
        self.cfg = cfg
        self.layout = layout

    def __call__(self, labels, uniforms, lam_mixup, lam_cutmix, enabled, shapes):
        n = len(labels)
        if n == 0:
            return ([],) * self.NUM_OUTPUTS
        all_shapes = as_batch(shapes).reshape(n, -1)
        shape = all_shapes[0]
        if not (all_shapes == shape).all():
            other = all_shapes[(all_shapes != shape).any(axis=1)][0]
            raise ValueError(f"mix: images must share one shape per batch, got {shape.tolist()} and "
                             f"{other.tolist()}")
        if shape.size != 3:
            raise ValueError(f"mix: images must be 3-D ({self.layout}), got shape {shape.tolist()}")
        if self.layout == "CHW":
            c, h, w = (int(v) for v in shape)
        else:
            h, w, c = (int(v) for v in shape)
        p = mix_params(self.cfg, as_batch(labels), as_batch(uniforms), as_batch(lam_mixup), as_batch(lam_cutmix),
                       as_batch(enabled), h, w)
        # multi_paste regions: 0 = the whole own image, 1 = the partner's box at the same place.
        box = p["box"]
        anchors = np.zeros((n, 2, 2), np.int32)
        anchors[:, 1] = box[:, :2]
        sizes = np.empty((n, 2, 2), np.int32)
        sizes[:, 0] = (h, w)
        sizes[:, 1] = box[:, 2:] - box[:, :2]
        kind = p["kind"]
        # Per-sample views, not copies: DALI takes a list of arrays per output.
        return (_rows(p["partner"]), _rows(kind == KIND_MIXUP), _rows(kind == KIND_CUTMIX),
                list(p["lam"].reshape(n, 1)), list(anchors), list(sizes), list(p["targets"]))


def _rows(values: np.ndarray) -> list[np.ndarray]:
    """0-d views of a 1-D array, one per sample."""
    return [values[i, ...] for i in range(values.shape[0])]


def _to_hwc(images: DataNode, layout: str) -> DataNode:
    # multi_paste reads HWC only (its FHWC form fails with two inputs in DALI 2.4).
    return images if layout == "HWC" else fn.transpose(images, perm=[1, 2, 0], output_layout="HWC")


def _from_hwc(images: DataNode, layout: str) -> DataNode:
    return images if layout == "HWC" else fn.transpose(images, perm=[2, 0, 1], output_layout="CHW")


_split = adapters.conditional_split
_merge = adapters.conditional_merge


def mix(images: DataNode, labels: DataNode, config: MixConfig, layout: str = "CHW",
        enabled: DataNode | None = None, return_lam: bool = False,
        finish: Callable[[DataNode, Callable[[DataNode], DataNode]], DataNode] | None = None):
    """Mix a batch of images in a DALI graph; return `(images, targets)` (and lam if asked).

    images: one shape per batch, float or uint8, CPU or GPU, `layout` "CHW" or "HWC".
    labels: int class indices (CPU). enabled: optional per-sample bool input (e.g. from an
    `external_source` schedule) that turns mixing off without rebuilding the pipeline.
    targets: float32 [num_classes] per sample, on the images' device, saying exactly how much of each
    class the output holds. Partners: sample i is mixed with sample n-1-i (see `mix_params.partners`).
    uint8 mixup rounds to the nearest value.

    finish: optional `finish(images, take)` applied to each branch before the branches merge, e.g. flip and
    normalisation; `take(node)` gives the branch's share of any per-sample node of the batch (such as a
    flip coin). With it, mixup of uint8 images stays float until `finish` (no rounding, and no slow cast).
    """
    if not isinstance(config, MixConfig):
        raise ValueError(f"config must be a dalimix.MixConfig, got {type(config).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config.require_classes("mix")
    on_gpu = getattr(images, "device", "cpu") == "gpu"

    if not config.mixing:
        if finish is not None:
            images = finish(images, lambda node: node)
        targets = smoothed_targets(labels, config.num_classes, config.label_smoothing)
        targets = targets.gpu() if on_gpu else targets
        if return_lam:
            return images, targets, _ones_like(labels)
        return images, targets

    if enabled is None:
        enabled = fn.cast(_ones_like(labels), dtype=types.BOOL)
    draws = mix_draws(config, labels)
    if native.available("gpu" if on_gpu else "cpu"):  # on the GPU: the pipeline being defined's GPU
        out, targets, lam = _native_mix(images, labels, config, layout, enabled, draws, finish, on_gpu)
    else:
        out, targets, lam = _stock_mix(images, labels, config, layout, enabled, draws, finish, on_gpu)
    targets = targets.gpu() if on_gpu else targets
    return (out, targets, lam) if return_lam else (out, targets)


def _native_mix(images: DataNode, labels: DataNode, config: MixConfig, layout: str, enabled: DataNode,
                draws: tuple[DataNode, DataNode, DataNode], finish: Any, on_gpu: bool) -> tuple[DataNode, ...]:
    """(images, targets, lam) from the native parameter step and the fused operator."""
    partner, kind, lam, box, targets = native_mix_params(config, labels, draws, enabled,
                                                         shapes=images.shape(device="cpu"), layout=layout)
    keep_float = {"dtype": types.FLOAT} if finish is not None else {}  # else the input's type
    out = fn.dalimix.resample_mix(images, partner=partner, kind=kind, weight=lam, box=box, input_layout=layout,
                                  output_layout=layout, device="gpu" if on_gpu else "cpu", **keep_float)
    if finish is not None:
        out = finish(out, lambda node: node)
    return out, targets, lam


def _stock_mix(images: DataNode, labels: DataNode, config: MixConfig, layout: str, enabled: DataNode,
               draws: tuple[DataNode, DataNode, DataNode], finish: Any, on_gpu: bool) -> tuple[DataNode, ...]:
    """(images, targets, lam) from the NumPy parameter step and stock DALI operators, each sample going down
    only the branch it drew."""
    images = fn.reshape(images, layout=layout)  # branches must agree on a layout when they merge
    shapes = images.shape(device="cpu")
    partner, is_mixup, is_cutmix, weight, anchors, sizes, targets = fn.python_function(
        labels, *draws, enabled, shapes,
        function=_ParamStep(config, layout), batch_processing=True, num_outputs=_ParamStep.NUM_OUTPUTS)
    is_mixup = fn.cast(is_mixup, dtype=types.BOOL)
    is_cutmix = fn.cast(is_cutmix, dtype=types.BOOL)

    partner_images = fn.permute_batch(images, indices=partner)
    lam = weight  # the own image's share is also its label's weight

    # mixup branch: x*w + partner*(1-w), only on the samples that drew mixup.
    mix_x, rest_x = _split(images, is_mixup)
    mix_p, rest_p = _split(partner_images, is_mixup)
    mix_w, _ = _split(weight, is_mixup)
    if on_gpu:
        mix_w = mix_w.gpu()
    blended = mix_x * mix_w + mix_p * (1.0 - mix_w)
    if finish is None:
        blended = fn.cast_like(blended, mix_x)  # uint8 stays uint8 (DALI's cast rounds to nearest)
    else:
        blended = finish(blended, lambda node: _split(node, is_mixup)[0])

    # CutMix branch among the rest: paste the partner's box into the own image.
    _, rest_cut = _split(is_cutmix, is_mixup)
    cut_x, none_x = _split(rest_x, rest_cut)
    cut_p, _ = _split(rest_p, rest_cut)
    _, rest_anchors = _split(anchors, is_mixup)
    _, rest_sizes = _split(sizes, is_mixup)
    cut_anchors, _ = _split(rest_anchors, rest_cut)
    cut_sizes, _ = _split(rest_sizes, rest_cut)
    pasted = fn.multi_paste(_to_hwc(cut_x, layout), _to_hwc(cut_p, layout),
                            in_anchors=cut_anchors, out_anchors=cut_anchors, shapes=cut_sizes)
    pasted = _from_hwc(pasted, layout)

    rest = _merge(pasted, none_x, rest_cut)
    if finish is not None:
        rest = finish(rest, lambda node: _split(node, is_mixup)[1])
    return _merge(blended, rest, is_mixup), targets, lam


def mix_draws(config: MixConfig, labels: DataNode) -> tuple[DataNode, DataNode, DataNode]:
    """The random draws behind one batch of mixing: per-sample uniforms, lam for mixup and for CutMix."""
    uniforms = fn.random.uniform(range=[0.0, 1.0], shape=[NUM_UNIFORMS])
    lam_mixup = fn.random.beta(alpha=config.mixup_alpha, beta=config.mixup_alpha) if config.mixup_on \
        else _ones_like(labels)
    cut_alpha = config.cutmix_alpha if config.cutmix_alpha > 0 else 1.0
    lam_cutmix = fn.random.beta(alpha=cut_alpha, beta=cut_alpha) if config.cutmix_on else _ones_like(labels)
    return uniforms, lam_mixup, lam_cutmix


def native_mix_params(config: MixConfig, labels: DataNode, draws: tuple[DataNode, DataNode, DataNode],
                      enabled: DataNode, *, size: tuple[int, int] | None = None, shapes: DataNode | None = None,
                      layout: str = "HWC") -> tuple[DataNode, ...]:
    """(partner, kind, lam, box, targets) from the native `mix_params` operator; give the images' `size`
    when it is known when the graph is defined, else their `shapes` (with `layout`)."""
    off = config.label_smoothing / config.num_classes
    extra = [] if size is not None else [shapes]
    return fn.dalimix.mix_params(
        labels, *draws, enabled, *extra, mode=config.mode, prob=float32_threshold(config.prob),
        switch_prob=float32_threshold(config.switch_prob), mixup=config.mixup_on, cutmix=config.cutmix_on,
        cutmix_minmax=list(config.cutmix_minmax or []), correct_lam=config.correct_lam,
        on_value=1.0 - config.label_smoothing + off, off_value=off, num_classes=config.num_classes,
        size=list(size) if size is not None else [], shape_layout=layout)


def _ones_like(labels: DataNode) -> DataNode:
    return fn.cast(labels, dtype=types.FLOAT) * 0.0 + 1.0

