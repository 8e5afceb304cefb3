#!/usr/bin/env python3
"""The plain PyTorch recipe dalimix is measured against: torchvision ImageFolder + DataLoader, the same
model, optimiser, schedule and augmentation as `train_imagenet.py` without mixing, on the CPU or a GPU.

  python scripts/train_torchvision_baseline.py --data DIR --arch resnet18 --epochs 4 --batch-size 128 \
      --crop 32 --val-resize 32 --workers 2 --device cpu --output runs/baseline
`--loader dali` runs the very same loop on dalimix's pipelines, to compare the inputs alone.
Writes `summary.json` (val top-1/top-5 per epoch, images/s) in --output.
"""
from __future__ import annotations

import argparse
import json
import os
import time


import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dalimix import DaliLoader  # noqa: E402
from dalimix.train import param_groups, warmup_cosine  # noqa: E402
from dalimix.pipelines.imagenet import train_pipeline, val_pipeline  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ and val/")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--val-resize", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loader", choices=("torchvision", "dali"), default="torchvision",
                   help="dali: the same loop fed by dalimix's train/val pipelines (isolates the input)")
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(a.data, split)):
            p.error(f"--data: {os.path.join(a.data, split)!r} does not exist")
    if a.epochs < 1 or a.batch_size < 1 or a.crop < 1:
        p.error("--epochs, --batch-size and --crop must be >= 1")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    device = torch.device("cuda" if a.device == "gpu" else "cpu")
    resize = a.val_resize or int(round(a.crop * 256 / 224))
    train_tf = T.Compose([T.RandomResizedCrop(a.crop), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(MEAN, STD)])
    val_tf = T.Compose([T.Resize(resize), T.CenterCrop(a.crop), T.ToTensor(), T.Normalize(MEAN, STD)])
    if a.loader == "dali":
        common = dict(batch_size=a.batch_size, crop=a.crop, device=a.device, num_threads=max(1, a.workers))
        train = DaliLoader(train_pipeline(os.path.join(a.data, "train"), seed=a.seed, **common))
        val = DaliLoader(val_pipeline(os.path.join(a.data, "val"), resize=resize, **common))
        num_classes = len(train.classes)
    else:
        train_set = torchvision.datasets.ImageFolder(os.path.join(a.data, "train"), train_tf)
        val_set = torchvision.datasets.ImageFolder(os.path.join(a.data, "val"), val_tf)
        train = torch.utils.data.DataLoader(train_set, batch_size=a.batch_size, shuffle=True, drop_last=True,
                                            num_workers=a.workers, persistent_workers=a.workers > 0,
                                            pin_memory=a.device == "gpu")
        val = torch.utils.data.DataLoader(val_set, batch_size=a.batch_size, num_workers=a.workers)
        num_classes = len(train_set.classes)
    model = torchvision.models.get_model(a.arch, num_classes=num_classes).to(device)
    opt = torch.optim.SGD(param_groups(model, a.weight_decay), lr=a.lr, momentum=0.9, nesterov=True)
    sched = warmup_cosine(opt, a.epochs * len(train), int(a.warmup_epochs * len(train)))
    loss_fn = torch.nn.CrossEntropyLoss()
    history, t_start = [], time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in tqdm(train, desc=f"epoch {epoch}", leave=False):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += x.shape[0]
        ips = seen / (time.perf_counter() - t0)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val:
                correct += (model(x.to(device)).argmax(1).cpu() == y.cpu()).sum().item()
                total += y.numel()
        history.append({"epoch": epoch, "val_top1": 100.0 * correct / total, "images_per_sec": ips})
        print(json.dumps(history[-1]))
    summary = {"history": history, "final_val_top1": history[-1]["val_top1"],
               "images_per_sec": sum(h["images_per_sec"] for h in history) / len(history),
               "wall_time": time.perf_counter() - t_start, "args": vars(a)}
    os.makedirs(a.output, exist_ok=True)
    with open(os.path.join(a.output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


if __name__ == "__main__":
    main()
