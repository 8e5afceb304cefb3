#!/usr/bin/env python
"""Verify a GPU box in one command: the plugin build and probe, `pytest -m gpu`, compute-sanitizer on the
fused operator, the fallback without the CUDA operator, a short profile and a short training epoch; all of
it in runs/gpu-check/gpu_check.json and gpu_check.txt. `make gpu-check` runs it. See `--help`."""
from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from dalimix.tools.gpu_check import main as check

    return check(argv)


if __name__ == "__main__":
    sys.exit(main())
