"""A per-sample policy (and colour jitter) inside a DALI graph: each sample draws its program from DALI's random
operators (so a pipeline seed replays it and DALI checkpoints restore it), then one operator resizes the
random-resized crop to the crop size, flips it and runs the program: `fn.dalimix.policy_program` and
`fn.dalimix.apply_program` where dalimix's plugin is loaded (CPU or GPU), else DALI's resize and flip and the
PIL reference (`apply.py`) on the CPU. No torch here.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from nvidia.dali import fn, types

from dalimix import native
from dalimix.ops.policy import program as P
from dalimix.ops.policy.apply import apply_program as apply_reference
from dalimix.ops.policy.spec import JitterSpec, PolicySpec

KIND_CODES = {"timm_rand": 0, "timm_3a": 1, "tv_ra": 2, "tv_ta_wide": 3, "tv_imagenet": 4}
RESIZE_INTERP = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}
DataNode = Any


def program_args(policy: Optional[PolicySpec], jitter: Optional[JitterSpec], size: int) -> dict[str, Any]:
    """The arguments of `fn.dalimix.policy_program` for `policy` and `jitter` on `size` x `size` images."""
    args: dict[str, Any] = dict(kind=-1, size=int(size))
    if policy is not None:
        args.update(kind=KIND_CODES[policy.kind], ops=list(policy.ops), num_layers=int(policy.num_layers),
                    magnitude=float(policy.magnitude), magnitude_std=float(policy.magnitude_std),
                    magnitude_max=float(policy.magnitude_max or 0.0), prob=float(policy.prob),
                    weights=[float(w) for w in policy.weights] if policy.weights else [],
                    interp=-1 if policy.interpolation == "random" else P.INTERP_CODES[policy.interpolation])
    if jitter is not None:
        args["jitter"] = [float(v) for r in (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
                          for v in r]
    return args


class _ProgramStep:
    """The stock fallback's parameter step: the NumPy twin of `fn.dalimix.policy_program`, per sample."""

    def __init__(self, policy: Optional[PolicySpec], jitter: Optional[JitterSpec], size: int):
        self.policy, self.jitter, self.size = policy, jitter, size

    def __call__(self, u: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return P.make_program(self.policy, self.jitter, u, z, self.size)


class _ApplyStep:
    """The stock fallback's policy step: the PIL reference, per sample."""

    def __init__(self, fill: tuple[int, ...]):
        self.fill = fill

    def __call__(self, image: np.ndarray, ops: np.ndarray, params: np.ndarray) -> np.ndarray:
        return apply_reference(image, ops, params, self.fill)


def draws(layers: int) -> tuple[DataNode, DataNode]:
    """Each sample's random draws for a program of `layers` layers (CPU nodes)."""
    return (fn.random.uniform(range=[0.0, 1.0], shape=[layers * P.UNIFORMS_PER_LAYER]),
            fn.random.normal(shape=[layers]))


def program(policy: Optional[PolicySpec], jitter: Optional[JitterSpec], size: int) -> tuple[DataNode, DataNode]:
    """(ops, params) per sample, CPU nodes: the native parameter step, or its NumPy twin."""
    layers = P.program_layers(policy, jitter)
    u, z = draws(layers)
    if native.available("cpu"):
        return fn.dalimix.policy_program(u, z, **program_args(policy, jitter, size))
    return fn.python_function(u, z, function=_ProgramStep(policy, jitter, size), num_outputs=2,
                              batch_processing=False)


def augment(images: DataNode, *, policy: Optional[PolicySpec], jitter: Optional[JitterSpec], size: int,
            mirror: Optional[DataNode], interpolation: str, antialias: bool, device: str, native_op: bool,
            per_sample_interp: Optional[DataNode] = None) -> DataNode:
    """uint8 HWC crops of `size` x `size`: `images` (uint8 HWC, any size) resized with `interpolation` (or
    `per_sample_interp`: 1 bilinear, 2 bicubic per image), flipped where `mirror` says, then each sample's
    program applied. `native_op`: whether `fn.dalimix.apply_program` runs on `device`; without it the
    images must be CPU data (DALI's resize and flip, then the PIL reference)."""
    ops, params = program(policy, jitter, size)
    fill = tuple(policy.fill) if policy is not None else (0, 0, 0)
    if native_op:
        args: dict[str, Any] = dict(size=[size, size], antialias=antialias, fill=[float(v) for v in fill],
                                    device=device,
                                    interp=per_sample_interp if per_sample_interp is not None else
                                    P.INTERP_CODES[interpolation])
        if mirror is not None:
            args["mirror"] = mirror
        return fn.dalimix.apply_program(images, ops, params, **args)
    images = fn.resize(images, resize_x=size, resize_y=size, interp_type=RESIZE_INTERP[interpolation],
                       antialias=antialias)
    if mirror is not None:
        images = fn.flip(images, horizontal=mirror)
    return fn.python_function(images, ops, params, function=_ApplyStep(fill), batch_processing=False)

