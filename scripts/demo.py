#!/usr/bin/env python
"""`make demo`: train a ResNet-18 on a small generated dataset on the CPU, with mixup, CutMix and manifold
mixup, and show what the training script writes (val top-1, images/s, curves.png).

    .venv/bin/python scripts/demo.py --out runs/demo

Draws the default dataset of `dalimix.data.synthetic.make_dataset` (10 classes of shapes and textures) into
OUT/data unless --data is given (and skips drawing when it is already there), then runs
scripts/train_imagenet.py on it. A few minutes on two CPU cores. Extra arguments after `--` go to the
training script (e.g. `-- --epochs 12 --amp`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _has_images(folder: str) -> bool:
    if not os.path.isdir(folder):
        return False
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith((".jpg", ".jpeg", ".png")) for f in files):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- are passed to scripts/train_imagenet.py.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data", default=None, help="dataset with train/ and val/ (default: OUT/data, drawn if missing)")
    p.add_argument("--train-per-class", type=int, default=60, help="images per class drawn for train/ (default 60)")
    p.add_argument("--val-per-class", type=int, default=20, help="images per class drawn for val/ (default 20)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--crop", type=int, default=64, help="crop size (default 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="DALI threads (default 1; torch gets the remaining cores)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="default cpu")
    a = p.parse_args(argv)
    for flag, value in (("--train-per-class", a.train_per_class), ("--val-per-class", a.val_per_class),
                        ("--epochs", a.epochs), ("--batch-size", a.batch_size), ("--threads", a.threads)):
        if value < 1:
            p.error(f"{flag}: must be >= 1, got {value}")

    data = a.data or os.path.join(a.out, "data")
    if _has_images(os.path.join(data, "train")) and _has_images(os.path.join(data, "val")):
        print(f"dataset: using {data}")
    elif a.data is not None:
        p.error(f"--data: {data!r} has no train/ and val/ image folders")
    else:
        from dalimix.data.synthetic import make_dataset
        t0 = time.perf_counter()
        make_dataset(data, train_per_class=a.train_per_class, val_per_class=a.val_per_class)
        print(f"dataset: drew {10 * a.train_per_class} train / {10 * a.val_per_class} val JPEGs (10 classes) "
              f"into {data} in {time.perf_counter() - t0:.1f}s")

    out = os.path.join(a.out, "train")
    cmd = [sys.executable, os.path.join(HERE, "train_imagenet.py"), "--data", data, "--arch", "resnet18",
           "--device", a.device, "--threads", str(a.threads), "--epochs", str(a.epochs),
           "--batch-size", str(a.batch_size), "--crop", str(a.crop), "--lr", "0.05", "--warmup-epochs", "1",
           "--weight-decay", "5e-4", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--switch-prob", "0.5",
           "--label-smoothing", "0.1", "--manifold-mixup-alpha", "2.0", "--manifold-layers", "layer1,layer2",
           "--mixup-off-epoch", str(max(1, a.epochs - 2)), "--seed", "0", "--output", out, *extra]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"demo: training failed with exit code {rc}", file=sys.stderr)
        return rc
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    top1 = summary.get("final_val_top1")
    print()
    print(f"demo done in {wall:.0f}s ({a.device}, resnet18, crop {a.crop}, mixup + CutMix + manifold mixup):")
    print(f"  val top-1 {top1:.1f}% (best {summary.get('best_val_top1'):.1f}%, chance 10%), "
          f"top-5 {summary.get('final_val_top5'):.1f}%")
    print(f"  training throughput {summary.get('images_per_sec'):.1f} images/s")
    print(f"  curves:  {os.path.join(out, 'curves.png')}")
    print(f"  metrics: {os.path.join(out, 'metrics.jsonl')}, summary: {os.path.join(out, 'summary.json')}")
    print(f"  resume:  {sys.executable} scripts/train_imagenet.py ... --resume {os.path.join(out, 'checkpoint.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
