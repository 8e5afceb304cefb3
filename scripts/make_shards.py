#!/usr/bin/env python
"""Write an image dataset as tar shards (WebDataset layout) for dalimix's loaders.

    dalimix-make-shards --data imagenet/train --out shards/train --shard-size 1000
    dalimix-train --data shards/   # a folder holding train/ and val/ shard folders

An ImageFolder tree (one folder per class) or `--file-list` (`relative/path label` lines) -> PREFIX-000000.tar,
... of --shard-size samples in a seeded class-balanced random order, with classes.json (class names, counts,
the files left out as bad). Bad files are left out up front and named. Rerunning an interrupted conversion
with the same flags keeps the shards it completed.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="folder with one sub-folder per class (or the root of --file-list)")
    p.add_argument("--out", required=True, help="folder to write the shards and classes.json into")
    p.add_argument("--file-list", help="a file of `relative/path label` lines instead of class folders")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    p.add_argument("--seed", type=int, default=0, help="seed of the class-balanced order (default 0)")
    p.add_argument("--format", choices=("pax", "gnu"), default="pax", help="tar header format (default pax)")
    p.add_argument("--no-verify", action="store_true", help="skip the up-front bad-file checks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.shard_size < 1:
        p.error(f"--shard-size: must be >= 1, got {a.shard_size}")
    if not os.path.isdir(a.data):
        p.error(f"--data: {a.data!r} is not a directory")
    from dalimix.data.shard_writer import write_shards
    try:
        meta = write_shards(a.data, a.out, shard_size=a.shard_size, prefix=a.prefix, seed=a.seed,
                            file_list=a.file_list, verify=not a.no_verify, tar_format=a.format,
                            progress=not a.no_progress)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        p.error(f"--data: {exc}")
    print(f"wrote {meta['shards']} shard(s), {meta['samples']} samples of {len(meta['classes'])} classes to {a.out} "
          f"({len(meta['excluded'])} bad file(s) left out)")
    return 0


def cli() -> int:
    """Console entry point (`dalimix-make-shards`)."""
    return main()


if __name__ == "__main__":
    sys.exit(cli())
