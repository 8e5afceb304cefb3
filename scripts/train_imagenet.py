#!/usr/bin/env python
"""Train a torchvision classifier on an ImageNet-layout folder with dalimix's DALI input pipeline.

One process:       python scripts/train_imagenet.py --data DIR --arch resnet50 --device gpu ...
Several GPUs:      torchrun --nproc_per_node=8 scripts/train_imagenet.py --data DIR ...
Several nodes:     scripts/train_multi_gpu.sh (NODES, GPUS_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT)

`--help` lists every flag; the command line and the run live in `dalimix.train.cli` and `dalimix.train.run`.
"""
from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    """Parse `argv` and train; argument errors exit 2 naming the flag."""
    from dalimix.train.cli import main as train_main

    return train_main(argv)


def build_parser():
    """The argument parser of `dalimix-train`."""
    from dalimix.train.cli import build_parser as parser

    return parser()


def cli() -> int:
    """Console entry point (`dalimix-train`): exit status 0 on success."""
    return main()


if __name__ == "__main__":
    sys.exit(cli())
