"""The body of the ImageNet train graph, from encoded files to (images, targets): decode fused with the
random-resized crop, then dalimix's fused operator (resample, mix, flip, normalise, erase) or, without
the native plugin, stock DALI operators doing the same. With a per-sample policy or colour jitter, the
recipes' order: crop -> resize to the crop (uint8) -> flip -> policy / jitter (`dalimix.ops.policy`) -> mix ->
normalise, erasing after mixing or, with `erase_before`, each image's own regions before."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from nvidia.dali import fn, types

from dalimix import native
from dalimix.config import MixConfig
from dalimix.ops import erasing as erasing_ops
from dalimix.ops.mix import mix as mix_images
from dalimix.ops.mix import mix_draws, native_mix_params
from dalimix.ops.policy import graph as policy_graph
from dalimix.ops.policy.spec import JitterSpec, PolicySpec
from dalimix.ops.targets import smoothed_targets
from dalimix.pipelines.options import DTYPES
from dalimix import validation as V

def normalize_images(images: Any, *, crop: Optional[int], mirror: Any, dtype: str, layout: str,
                     mean: Sequence[float], std: Sequence[float]) -> Any:
    V.one_of("dtype", dtype, tuple(DTYPES))
    return fn.crop_mirror_normalize(
        images, dtype=DTYPES[dtype], output_layout=layout, crop=(crop, crop) if crop else None,
        mean=[m * 255 for m in mean], std=[s * 255 for s in std], mirror=mirror)


# Where a truncated train graph stops (the profiler's stage breakdown). The native path has no separate
# resize: "augment" is the fused resample + flip + normalise, "mix" adds mixing to it. With a policy, "policy"
# (resize + flip + the per-sample policy) comes before them.
STAGES = {"native": ("read", "decode", "augment", "mix"), "stock": ("read", "decode", "resize", "augment", "mix")}
INTERP_CODES = {"bilinear": 1, "bicubic": 2}


@dataclass(frozen=True)
class TrainGraph:
    """The body of the ImageNet train graph, from encoded files to (images, targets).

    One definition serves `train_pipeline` and the profiler's truncated stage graphs, so they cannot drift.
    With dalimix's native plugin, decode is followed by one fused operator (resample the random-resized
    crop, mix, flip, normalise, erase); without it, by stock DALI operators doing the same.
    """

    crop: int
    device: str
    device_id: Optional[int]
    mix: Optional[MixConfig]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float
    dtype: str
    layout: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    antialias: bool
    erasing: erasing_ops.ErasingConfig
    decoder_options: tuple[tuple[str, Any], ...] = ()  # extra arguments of the GPU (mixed) decoder
    policy: Optional[PolicySpec] = None     # a per-sample policy (timm's or torchvision's)
    jitter: Optional[JitterSpec] = None     # colour jitter, after the policy
    interpolation: str = "bilinear"         # the resample of the crop: "bilinear", "bicubic" or "random"
    erase_before: bool = False              # erase each image's own regions before mixing (else the output)

    @property
    def native(self) -> bool:
        return native.available(self.device, self.device_id)

    @property
    def augmenting(self) -> bool:
        """Whether a policy or colour jitter runs (then the crop is resized and flipped before it)."""
        return self.policy is not None or self.jitter is not None

    @property
    def policy_device(self) -> str:
        """Where the policy runs: with the images, unless the GPU has no native operator (then the CPU, with
        the decode there too, and the crops go to the GPU after)."""
        return "gpu" if self.device == "gpu" and self.native else "cpu"

    def stages(self) -> tuple[str, ...]:
        base = STAGES["native" if self.native else "stock"]
        return base[:2] + ("policy",) + base[2:] if self.augmenting else base

    def describe(self) -> str:
        """The settings a failure may come from, by their `train_pipeline` names."""
        mixing = f"mix={self.mix.mode} mixup_alpha={self.mix.mixup_alpha} cutmix_alpha={self.mix.cutmix_alpha}" \
            if self.mix is not None and self.mix.mixing else "mix=off"
        erase = f"re_prob={self.erasing.prob} re_mode={self.erasing.mode!r} re_count={self.erasing.count}" \
            if self.erasing.prob > 0 else "re_prob=0"
        path = "dalimix native operators" if self.native else \
            f"stock DALI operators ({native.why_unavailable(self.device, self.device_id)})"
        policy = f"auto_augment={self.policy.text!r}, " if self.policy is not None else ""
        jitter = f"color_jitter={self.jitter.values}, " if self.jitter is not None else ""
        order = ", re_order='before_mix'" if self.erase_before and self.erasing.prob > 0 else ""
        return (f"device={self.device!r}, dtype={self.dtype!r}, channels_last={self.layout == 'HWC'}, crop={self.crop}, "
                f"interpolation={self.interpolation!r}, antialias={self.antialias}, {policy}{jitter}{mixing}, "
                f"{erase}{order}; {path}")

    def __call__(self, jpegs: Any, labels: Any, enabled: Any = None, stop: Optional[str] = None) -> tuple[Any, Any]:
        if stop == "read":
            return jpegs, labels
        decode_on_gpu = self.device == "gpu" and (not self.augmenting or self.policy_device == "gpu")
        images = fn.decoders.image_random_crop(
            jpegs, device="mixed" if decode_on_gpu else "cpu", output_type=types.RGB,
            random_area=list(self.scale), random_aspect_ratio=list(self.ratio), num_attempts=10,
            **(dict(self.decoder_options) if decode_on_gpu else {}))
        if stop == "decode":
            return images, labels
        if self.augmenting:
            images = self._augment(images)
            if self.device == "gpu" and not decode_on_gpu:
                images = images.gpu()
            if stop == "policy":
                return images, labels
        mixing = self.mix is not None and self.mix.mixing and stop in (None, "mix")
        if enabled is None and mixing:
            enabled = fn.cast(fn.cast(labels, dtype=types.FLOAT) * 0.0 + 1.0, dtype=types.BOOL)
        body = self._native if self.native else self._stock
        images, targets = body(images, labels, enabled, mixing, stop)
        return images, (targets.gpu() if self.device == "gpu" else targets)

    def _interp(self) -> Any:
        """The resample's filter per sample: 1 bilinear, 2 bicubic ("random": either, per image, as timm)."""
        if self.interpolation == "random":
            return fn.cast(fn.random.coin_flip(probability=0.5), dtype=types.INT32) + 1
        return INTERP_CODES[self.interpolation]

    def _augment(self, images: Any) -> Any:
        """The crop resized to `crop` (uint8), flipped, then the per-sample policy and colour jitter."""
        interp = "bicubic" if self.interpolation == "random" else self.interpolation
        native_op = native.available(self.policy_device, self.device_id if self.policy_device == "gpu" else None)
        return policy_graph.augment(images, policy=self.policy, jitter=self.jitter, size=self.crop,
                                    mirror=self._mirror(), interpolation=interp, antialias=self.antialias,
                                    device=self.policy_device, native_op=native_op,
                                    per_sample_interp=self._interp() if self.interpolation == "random" else None)

    def _targets(self, labels: Any) -> Any:
        if self.mix is not None and self.mix.soft_targets:
            return smoothed_targets(labels, self.mix.num_classes, self.mix.label_smoothing)
        return labels

    def _mirror(self) -> Any:
        return fn.random.coin_flip(probability=self.flip_prob) if self.flip_prob > 0 else None

    def _native(self, images: Any, labels: Any, enabled: Any, mixing: bool, stop: Optional[str]) -> tuple[Any, Any]:
        size = [self.crop, self.crop]
        args: dict[str, Any] = dict(size=size, antialias=self.antialias, mean=[m * 255 for m in self.mean],
                                    std=[s * 255 for s in self.std], dtype=DTYPES[self.dtype],
                                    output_layout=self.layout, device=self.device,
                                    erase_before=self.erase_before)
        if not self.augmenting:  # with a policy the crops come resized and flipped already
            args["interp"] = self._interp()
            mirror = self._mirror()
            if mirror is not None:
                args["mirror"] = mirror
        if mixing:
            partner, kind, lam, box, targets = native_mix_params(self.mix, labels, mix_draws(self.mix, labels),
                                                                 enabled, size=(self.crop, self.crop))
            args.update(partner=partner, kind=kind, weight=lam, box=box)
        else:
            targets = self._targets(labels)
        if self.erasing.prob > 0 and stop is None:
            cfg = self.erasing
            apply = fn.random.coin_flip(probability=cfg.prob, dtype=types.BOOL)
            uniforms = fn.random.uniform(range=[0.0, 1.0], shape=[1 + 4 * erasing_ops.ATTEMPTS * cfg.count])
            args.update(erase=fn.dalimix.erase_params(apply, uniforms, count=cfg.count, size=size),
                        erase_mode=erasing_ops.MODES.index(cfg.mode),
                        erase_seed=fn.random.uniform(range=[0, 2 ** 31 - 1], dtype=types.INT32))
        return fn.dalimix.resample_mix(images, **args), targets

    def _stock(self, images: Any, labels: Any, enabled: Any, mixing: bool, stop: Optional[str]) -> tuple[Any, Any]:
        if not self.augmenting:
            interp = types.INTERP_CUBIC if self.interpolation == "bicubic" else types.INTERP_LINEAR
            images = fn.resize(images, resize_x=self.crop, resize_y=self.crop, interp_type=interp,
                               antialias=self.antialias)
        if stop == "resize":
            return images, labels
        mirror = self._mirror() if not self.augmenting else None
        erase = self.erasing.prob > 0 and stop is None

        def finish(branch: Any, take: Any) -> Any:
            # Flip and normalise per branch, so mixup blends stay float (no rounding, no uint8 cast).
            return normalize_images(branch, crop=None, mirror=take(mirror) if mirror is not None else 0,
                                    dtype=self.dtype, layout=self.layout, mean=self.mean, std=self.std)

        if erase and self.erase_before:
            # Each image's own regions before mixing: normalise (and flip), erase, then mix the float images.
            images = erasing_ops.random_erasing(finish(images, lambda node: node), self.erasing, layout=self.layout,
                                                dtype=self.dtype)
            if mixing:
                return mix_images(images, labels, self.mix, layout=self.layout, enabled=enabled)
            return images, self._targets(labels)
        if mixing:
            images, targets = mix_images(images, labels, self.mix, layout="HWC", enabled=enabled, finish=finish)
        else:
            images, targets = finish(images, lambda node: node), self._targets(labels)
        if erase:
            images = erasing_ops.random_erasing(images, self.erasing, layout=self.layout, dtype=self.dtype)
        return images, targets
