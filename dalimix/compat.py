"""Both loaders of timm's and torchvision's reference `train.py`, built from the script's own parsed arguments.

`timm_loaders(args, data_config)` replaces the two `create_loader(...)` calls of timm's train.py and
`torchvision_loaders(args)` the datasets, samplers and `DataLoader`s of torchvision's
`references/classification/train.py`; nothing else in the script changes. Every flag that maps is mapped
(mixing, smoothing where the script expects it, erasing, crop scale and ratio, flip, mean/std, crop_pct,
channels_last, dtype, batches, ranks, the policy, repeated augmentation); each flag that would
change the recipe and has no effect here is named in one warning, never dropped silently. README sections
"timm's train.py" and "torchvision's train.py" list them.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

from dalimix import validation as V
from dalimix.config import MixConfig

__all__ = ["timm_loaders", "torchvision_loaders"]

TIMM_TRAIN_SPLITS = ("train", "training")
TIMM_VAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation")


def _get(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _ranks(args: Any) -> tuple[int, int]:
    """(rank, world size) as the script set them up, else torch.distributed's, else (0, 1)."""
    if _get(args, "distributed"):
        return int(_get(args, "rank", 0)), int(_get(args, "world_size", 1))
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return 0, 1


def _unhonoured(script: str, found: Sequence[str]) -> None:
    if found:
        warnings.warn(f"dalimix.compat: these {script} flags have no effect with dalimix (the run differs from the "
                      f"same command on {script}'s own loader there): {'; '.join(found)}", UserWarning, stacklevel=3)


def _check_flags(args: Any, table: Sequence[tuple[str, str, Callable[[Any], bool], str]]) -> list[str]:
    """Names (with why) of the flags in `table` that are set to something dalimix does not do."""
    return [f"{flag} {_get(args, attr)!r} ({why})" for attr, flag, is_set, why in table
            if hasattr(args, attr) and is_set(_get(args, attr))]


# -- timm -----------------------------------------------------------------------------------------------------
_TIMM_UNHONOURED = (
    ("vflip", "--vflip", lambda v: bool(v), "vertical flips are not in dalimix's graph"),
    ("no_aug", "--no-aug", lambda v: bool(v), "the train pipeline always crops, flips and mixes as configured"),
    ("train_crop_mode", "--train-crop-mode", lambda v: v not in (None, "", "rrc"),
     "only random-resized crops ('rrc')"),
    ("resplit", "--resplit", lambda v: bool(v), "erasing regions are not split by augmentation split"),
    ("aug_splits", "--aug-splits", lambda v: bool(v), "AugMix splits"),
    ("jsd_loss", "--jsd-loss", lambda v: bool(v), "needs AugMix splits"),
    ("epoch_repeats", "--epoch-repeats", lambda v: bool(v), "epochs read the dataset once"),
    ("train_num_samples", "--train-num-samples", lambda v: v is not None, "epochs read the whole dataset"),
    ("input_img_mode", "--input-img-mode", lambda v: v not in (None, "", "RGB"), "images are decoded as RGB"),
    ("class_map", "--class-map", lambda v: bool(v), "labels follow the sorted class folders"),
    ("train_img_sizes", "--train-img-sizes", lambda v: bool(v), "one crop size per run"),
    ("train_batch_sizes", "--train-batch-sizes", lambda v: bool(v), "one batch size per run"),
    ("train_batches_per_epoch", "--train-batches-per-epoch", lambda v: v is not None,
     "an epoch is the data's batches"),
    ("naflex_loader", "--naflex-loader", lambda v: bool(v), "fixed-size crops, not NaFlex sequences"),
    ("color_jitter_prob", "--color-jitter-prob", lambda v: v is not None, "SimCLR-style extras"),
    ("grayscale_prob", "--grayscale-prob", lambda v: v is not None, "SimCLR-style extras"),
    ("gaussian_blur_prob", "--gaussian-blur-prob", lambda v: v is not None, "SimCLR-style extras"),
)


def _timm_split(root: str, split: str, synonyms: Sequence[str]) -> str:
    """timm's split search: `root/split`, then the split's synonyms, else `root` itself."""
    for name in (split, *synonyms) if split else ():
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return root


def _timm_size(data_config: Mapping[str, Any]) -> int:
    size = tuple(data_config.get("input_size", (3, 224, 224)))
    if len(size) != 3 or size[0] != 3 or size[1] != size[2]:
        raise V.ArgumentError("input_size", f"--input-size / --img-size: dalimix crops square RGB images, got "
                                            f"input_size {size}")
    return int(size[1])


def _timm_mix(args: Any) -> Optional[MixConfig]:
    """timm's Mixup arguments (train.py's mixup_args), or None when mixing is off: timm then trains on int
    labels (LabelSmoothingCrossEntropy smooths in the loss)."""
    mixup, cutmix, minmax = _get(args, "mixup", 0.0), _get(args, "cutmix", 0.0), _get(args, "cutmix_minmax")
    if not (mixup > 0 or cutmix > 0 or minmax is not None):
        return None
    if not _get(args, "prefetcher", True):
        raise V.ArgumentError("prefetcher", "--no-prefetcher: timm's train.py then mixes each batch again "
                                            "(mixup_fn) after dalimix mixed it in the loader; drop --no-prefetcher")
    return MixConfig(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=tuple(minmax) if minmax else None,
                     prob=_get(args, "mixup_prob", 1.0), switch_prob=_get(args, "mixup_switch_prob", 0.5),
                     mode=_get(args, "mixup_mode", "batch"), label_smoothing=_get(args, "smoothing", 0.1),
                     num_classes=_get(args, "num_classes"))


def timm_loaders(args: Any, data_config: Mapping[str, Any], **overrides: Any) -> tuple[Any, Any]:
    """(loader_train, loader_eval) for timm's train.py, from its `args` and `data_config`.

    Put `loader_train, loader_eval = timm_loaders(args, data_config)` where train.py calls
    `create_loader` twice (keep the prefetcher on: batches arrive on the device, normalised, in
    `--model-dtype`). `overrides` go to both pipeline builders (e.g. `num_threads=8`).
    """
    from dalimix.loader import DaliLoader
    from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

    root = _get(args, "data_dir") or _get(args, "data")
    if not root:
        raise V.ArgumentError("data_dir", "--data-dir: give the dataset root")
    if _get(args, "dataset", ""):
        raise V.ArgumentError("dataset", f"--dataset {_get(args, 'dataset')!r}: dalimix reads image folders or "
                                         f"tar shards from --data-dir; leave --dataset empty")
    crop = _timm_size(data_config)
    rank, world = _ranks(args)
    common = dict(device=_get(args, "device", "cuda"), num_threads=max(1, int(_get(args, "workers", 4))),
                  shard_id=rank, num_shards=world, mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
                  channels_last=bool(_get(args, "channels_last", False)),
                  dtype=str(_get(args, "model_dtype") or "float32").removeprefix("torch."), crop=crop)
    common.update(overrides)
    mix = _timm_mix(args)
    off = _get(args, "mixup_off_epoch", 0)
    policy = _timm_policy(args, data_config)
    _unhonoured("timm train.py", _check_flags(args, _TIMM_UNHONOURED))
    # timm's RepeatAugSampler (distributed only there; dalimix repeats on one process too).
    repeats = max(1, int(_get(args, "aug_repeats", 0) or 0))
    train = DaliLoader(train_pipeline(
        _timm_split(root, _get(args, "train_split", "train"), TIMM_TRAIN_SPLITS), batch_size=args.batch_size,
        mix=mix, mix_off_epoch=off if mix is not None and off else None, seed=_get(args, "seed"),
        scale=tuple(_get(args, "scale", (0.08, 1.0))), ratio=tuple(_get(args, "ratio", (3 / 4, 4 / 3))),
        flip_prob=float(_get(args, "hflip", 0.5)), re_prob=float(_get(args, "reprob", 0.0)),
        re_mode=_get(args, "remode", "pixel"), re_count=int(_get(args, "recount", 1)), repeats=repeats,
        **policy, **common))
    split = _get(args, "val_split", "validation")
    evaluate = None
    if split:
        crop_pct = float(data_config.get("crop_pct", 0.875))
        evaluate = DaliLoader(val_pipeline(
            _timm_split(root, split, TIMM_VAL_SPLITS), batch_size=_get(args, "validation_batch_size") or
            args.batch_size, resize=int(math.floor(crop / crop_pct)), classes=train.classes,
            interpolation=_two_way(data_config.get("interpolation", "bilinear")), **common))
    return train, evaluate


def _two_way(interpolation: str) -> str:
    """dalimix's resample for a library's interpolation name (bicubic or bilinear)."""
    return "bicubic" if str(interpolation).lower().endswith("bicubic") else "bilinear"


def _timm_policy(args: Any, data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The per-sample policy, colour jitter and interpolation timm's `create_transform` runs for `args`:
    colour jitter is off when a policy is set, unless the policy string holds '3a'."""
    aa = _get(args, "aa") or None
    jitter = _get(args, "color_jitter")
    if aa and "3a" not in aa:
        jitter = None
    interp = _get(args, "train_interpolation") or data_config.get("interpolation", "bilinear")
    interp = "random" if interp == "random" else _two_way(interp)
    return {"auto_augment": aa, "color_jitter": jitter or None, "interpolation": interp, "re_order": "after_mix"}


# -- torchvision --------------------------------------------------------------------------------------------------
_TV_UNHONOURED = (
    ("weights", "--weights", lambda v: bool(v), "val takes --val-resize-size / --val-crop-size, not the weights' "
                                                 "transforms"),
)


def _tv_resume_epoch(path: Optional[str]) -> Optional[int]:
    """The epoch after the one torchvision's `checkpoint.pth` records (its `args` is an argparse Namespace,
    allowed as data), or None when it cannot be read."""
    if not path:
        return None
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]) + 1
    except Exception as exc:  # noqa: BLE001 - then the order starts at epoch 0, said below
        warnings.warn(f"dalimix.compat: could not read the epoch of --resume {path} ({type(exc).__name__}); the "
                      f"loader starts at epoch 0 until set_epoch is called", UserWarning, stacklevel=3)
        return None


def torchvision_loaders(args: Any, **overrides: Any) -> tuple[Any, Any]:
    """(data_loader, data_loader_test) for torchvision's references/classification/train.py, from its `args`.

    Put them where train.py builds its datasets, samplers and `DataLoader`s, with
    `dataset, train_sampler = data_loader.dataset, data_loader.sampler` for the lines that read those
    (`num_classes = len(dataset.classes)`, `train_sampler.set_epoch(epoch)`). Label smoothing stays in the
    script's loss (`CrossEntropyLoss(label_smoothing=...)`): the targets are not smoothed here.
    """
    from dalimix.loader import DaliLoader
    from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

    root = _get(args, "data_path")
    if not root:
        raise V.ArgumentError("data_path", "--data-path: give the dataset root (holding train/ and val/)")
    rank, world = _ranks(args)
    device = _get(args, "device", "cuda")
    if world > 1 and str(device) == "cuda" and _get(args, "gpu") is not None:
        device = f"cuda:{int(_get(args, 'gpu'))}"
    common = dict(device=device, num_threads=max(1, int(_get(args, "workers", 16))), shard_id=rank, num_shards=world)
    common.update(overrides)
    mixup, cutmix = float(_get(args, "mixup_alpha", 0.0)), float(_get(args, "cutmix_alpha", 0.0))
    # torchvision picks MixUp or CutMix per batch (RandomChoice, 50/50) and smooths in its loss.
    mix = MixConfig(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0, switch_prob=0.5, mode="batch",
                    label_smoothing=0.0) if mixup > 0 or cutmix > 0 else None
    policy, unhonoured = _tv_policy(args)
    unhonoured = _check_flags(args, _TV_UNHONOURED) + unhonoured
    _unhonoured("torchvision train.py", unhonoured)
    interp = _two_way(_get(args, "interpolation", "bilinear"))
    # torchvision's RASampler, which the script uses in distributed runs only; so does this.
    repeats = int(_get(args, "ra_reps", 3)) if _get(args, "ra_sampler") and _get(args, "distributed") else 1
    train = DaliLoader(train_pipeline(
        os.path.join(root, "train"), batch_size=args.batch_size, crop=int(_get(args, "train_crop_size", 224)),
        mix=mix, re_prob=float(_get(args, "random_erase", 0.0)), re_mode="const", re_order="before_mix",
        auto_augment=policy, interpolation=interp, repeats=repeats, **common))
    start = _tv_resume_epoch(_get(args, "resume")) if not _get(args, "test_only") else None
    if start is not None:
        train.set_epoch(start)
    test = DaliLoader(val_pipeline(
        os.path.join(root, "val"), batch_size=args.batch_size, crop=int(_get(args, "val_crop_size", 224)),
        resize=int(_get(args, "val_resize_size", 256)), classes=train.classes, interpolation=interp, **common))
    return train, test


def _tv_policy(args: Any) -> tuple[Optional[str], list[str]]:
    """torchvision's `--auto-augment` as a dalimix policy ("ra" with `--ra-magnitude`), and the flags that
    have no effect."""
    out = []
    policy = _get(args, "auto_augment") or None
    if policy == "ra":
        policy = f"ra-m{int(_get(args, 'ra_magnitude', 9))}"
    elif policy not in (None, "ta_wide", "imagenet"):
        out.append(f"--auto-augment {policy!r} (dalimix runs ra, ta_wide and imagenet)")
        policy = None
    if str(_get(args, "interpolation", "bilinear")) not in ("bilinear", "bicubic"):
        out.append(f"--interpolation {_get(args, 'interpolation')!r} (dalimix resamples bilinearly or bicubically)")
    return policy, out
