#!/usr/bin/env python3
"""Draw what the train loader feeds: a PNG grid of mixed samples, each captioned with its top-2 classes.

Classes are named by their folders, or by their ImageNet category names ("beagle", not "n02088364") when
the folders are the 1000 ImageNet WordNet IDs.

  python scripts/preview_mix.py --data DIR --out grid.png [--mode elem --mixup-alpha 0.8 --cutmix-alpha 1.0]
"""
from __future__ import annotations

import argparse
import os
import sys


import numpy as np  # noqa: E402

from dalimix import DaliLoader, MixConfig  # noqa: E402
from dalimix.augment_flags import add_augmentation_flags, augmentation_kwargs  # noqa: E402
from dalimix.pipelines.imagenet import IMAGENET_MEAN, IMAGENET_STD, train_pipeline  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--count", type=int, default=16, help="samples in the grid")
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--mode", choices=("batch", "pair", "elem"), default="elem")
    p.add_argument("--mixup-alpha", type=float, default=0.8)
    p.add_argument("--cutmix-alpha", type=float, default=1.0)
    p.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    p.add_argument("--prob", type=float, default=1.0)
    p.add_argument("--switch-prob", type=float, default=0.5)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--re-prob", type=float, default=0.0)
    p.add_argument("--re-mode", choices=("const", "rand", "pixel"), default="const")
    add_augmentation_flags(p.add_argument_group("per-sample augmentation"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print-captions", action="store_true", help="also print each sample's caption")
    a = p.parse_args(argv)
    if not os.path.isdir(a.data):
        p.error(f"--data: folder {a.data!r} does not exist")
    if a.count < 1:
        p.error("--count must be >= 1")
    a.augmentation = augmentation_kwargs(p, a)
    return a


def main(argv=None) -> str:
    a = parse_args(argv)
    from dalimix.data.class_names import readable_names
    from dalimix.data.dataset import scan_folder
    classes = scan_folder(a.data, verify=False).classes
    names = readable_names(classes)
    try:
        cfg = MixConfig(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
                        cutmix_minmax=tuple(a.cutmix_minmax) if a.cutmix_minmax else None, prob=a.prob,
                        switch_prob=a.switch_prob, mode=a.mode, label_smoothing=a.label_smoothing,
                        num_classes=len(classes))
    except ValueError as exc:
        sys.exit(f"preview_mix.py: error: {exc}")
    pipe = train_pipeline(a.data, batch_size=a.count, crop=a.crop, device="cpu", num_threads=2, mix=cfg,
                          seed=a.seed, re_prob=a.re_prob, re_mode=a.re_mode, **a.augmentation)
    images, targets = next(iter(DaliLoader(pipe)))
    pixels = images.float().numpy() * np.array(IMAGENET_STD)[None, :, None, None] \
        + np.array(IMAGENET_MEAN)[None, :, None, None]
    pixels = np.clip(pixels.transpose(0, 2, 3, 1), 0, 1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = int(np.ceil(np.sqrt(a.count)))
    rows = int(np.ceil(a.count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for i, ax in enumerate(np.atleast_1d(axes).ravel()[: a.count]):
        t = targets[i].numpy()
        top = np.argsort(-t)[:2]
        caption = "\n".join(f"{names[c][:18]} {t[c]:.2f}" for c in top if t[c] > 1e-3)
        ax.imshow(pixels[i])
        ax.set_title(caption, fontsize=8)
        if a.print_captions:
            print(f"sample {i}: " + ", ".join(f"{names[c]} {t[c]:.2f}" for c in top if t[c] > 1e-3))
    fig.suptitle(f"mode={a.mode} mixup_alpha={a.mixup_alpha} cutmix_alpha={a.cutmix_alpha} "
                 f"switch_prob={a.switch_prob}", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    plt.close(fig)
    print(f"wrote {a.out}")
    return a.out


def cli() -> int:
    """Console entry point (`dalimix-preview`): exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
