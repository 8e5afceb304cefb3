#!/usr/bin/env python3
"""Start-up and read figures at ImageNet scale on a generated tree (docs/BENCHMARKS.md section 8).

  python scripts/bench_scale.py --root /tmp/scale200k --files 200000 --ranks 1 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from dalimix.tools.scale_bench import run


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="where the tree is generated (kept for the next run)")
    p.add_argument("--files", type=int, default=200_000, help="JPEGs in the tree (ImageNet train: 1281167)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 8], help="ranks of one node started at once")
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 16, 0],
                   help="reads in flight to measure (0: the default, auto)")
    p.add_argument("--latency-ms", type=float, default=2.0, help="simulated per-file latency (network storage)")
    p.add_argument("--skip-startup", action="store_true", help="only the read ceilings")
    p.add_argument("--skip-before", action="store_true", help="leave out the check as it was before (slow)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    if a.files < 1000:
        p.error("--files must be >= 1000 (one per class folder)")
    report = run(Path(a.root), a.files, tuple(a.ranks), tuple(a.in_flight), a.latency_ms, a.skip_startup,
                 not a.skip_before)
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return report


def cli() -> int:
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
