"""The per-sample augmentation flags every command shares (`dalimix-train`, `dalimix-preview`,
`dalimix-profile`): the same names, meanings and checks as `train_pipeline`'s arguments, declared once."""
from __future__ import annotations

import argparse
from typing import Any, Optional

POLICY_HELP = ("timm's 'rand-m9-mstd0.5-inc1' (any rand-... string), '3a' (DeiT III's 3-Augment), or torchvision's "
               "'ra' ('ra-m{M}[-n{N}]'), 'ta_wide', 'imagenet' (AutoAugment's ImageNet policy)")


def add_augmentation_flags(group: Any, *, erasing: bool = False) -> None:
    """Add --aa, --color-jitter, --interpolation and --re-order to `group` (a parser or an argument group);
    with `erasing`, also --re-prob and --re-mode for commands that do not declare their own."""
    group.add_argument("--aa", default=None, metavar="POLICY", help=POLICY_HELP)
    group.add_argument("--color-jitter", type=float, nargs="+", default=None, metavar="F",
                       help="torchvision's ColorJitter after the policy: one factor for brightness, contrast and "
                            "saturation, or B C S [H] (timm turns it off with a policy other than 3a)")
    group.add_argument("--interpolation", choices=("bilinear", "bicubic", "random"), default="bilinear",
                       help="the train resample of the crop and of the policy's geometric ops ('random': bilinear or "
                            "bicubic per image, as timm's train.py); the val resize uses bicubic for bicubic")
    if erasing:
        group.add_argument("--re-prob", type=float, default=0.0, help="random erasing probability (default 0)")
        group.add_argument("--re-mode", choices=("const", "rand", "pixel"), default="const",
                           help="random erasing fill")
    group.add_argument("--re-order", choices=("after_mix", "before_mix"), default="after_mix",
                       help="erase the mixed image (timm's train.py, the default) or each image before it is mixed "
                            "(DeiT, ConvNeXt, torchvision's reference)")


def augmentation_kwargs(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict:
    """Check the flags `add_augmentation_flags` declared (a parser error naming the flag otherwise) and return
    them as `train_pipeline` keyword arguments; `a.color_jitter` becomes the float or tuple the pipeline takes."""
    from dalimix.ops.policy import parse_color_jitter, parse_policy
    from dalimix.validation import ArgumentError

    a.color_jitter = _jitter_value(a.color_jitter)
    try:
        parse_policy(a.aa, interpolation=a.interpolation)
    except (ArgumentError, ValueError) as exc:
        p.error(f"--aa: {exc}")
    try:
        parse_color_jitter(a.color_jitter)
    except (ArgumentError, ValueError) as exc:
        p.error(f"--color-jitter: {exc}")
    out: dict = {"interpolation": a.interpolation, "re_order": a.re_order}
    if a.aa:
        out["auto_augment"] = a.aa
    if a.color_jitter is not None:
        out["color_jitter"] = a.color_jitter
    return out


def _jitter_value(values: Optional[list]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
