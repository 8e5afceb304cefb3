#!/usr/bin/env python
"""Reproduce the mixup / Manifold Mixup / CutMix papers' comparison with dalimix's loader and engine.

  python scripts/reproduce.py --data DIR --recipe paper --output runs/reproduce          # a GPU, 200 epochs
  python scripts/reproduce.py --data DIR --recipe cpu --output runs/reproduce_cpu        # 2 CPU cores

DIR holds train/ and val/ (one folder per class). Writes table.md, results.json, curves.png and one folder
per run in --output; see `--help` and docs/BENCHMARKS.md. The logic lives in `dalimix.reproduce`.
"""
from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    """Parse `argv` and run the comparison."""
    from dalimix import reproduce

    return reproduce.main(argv)


def cli() -> int:
    """Console entry point (`dalimix-reproduce`): exit status 0 on success."""
    return main()


if __name__ == "__main__":
    sys.exit(cli())
