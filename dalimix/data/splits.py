"""A dataset root with `train/` and `val/` splits: checking it before anything heavy, and the class names
both splits share (sorted class folders, or the `classes.json` of tar shards)."""
from __future__ import annotations

import os
from typing import Sequence

from dalimix import validation as V
from dalimix.data import shards

SPLITS = ("train", "val")


def class_folders(path: str) -> list[str]:
    """Class names as dalimix's folder scan orders them (sorted, hidden folders skipped, empty ones kept)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def shard_classes(path: str) -> list[str]:
    """The class names of the shards in `path`: their classes.json, else the label indices they use."""
    paths = shards.resolve_shards(path)
    return shards.read_classes(paths, [label for ix in shards.index_shards(paths) for label in ix.labels], None)


def split_classes(root: str, splits: Sequence[str] = SPLITS) -> list[str]:
    """The classes of `root`'s splits, which must agree (labels follow them); `ArgumentError("data", ...)` says
    what is missing or different, naming the folder."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise V.ArgumentError("data", msg)

    need(os.path.exists(root), f"dataset folder {root!r} does not exist")
    holding = " and ".join(s + "/" for s in splits)
    need(os.path.isdir(root), f"{root!r} is not a directory (expected a folder holding {holding})")
    for split in splits:
        path = os.path.join(root, split)
        need(os.path.exists(path), f"{path!r} does not exist (expected {split}/ with one folder per class)")
        need(os.path.isdir(path), f"{path!r} is not a directory (expected {split}/ with one folder per class)")
    first = os.path.join(root, splits[0])
    if shards.is_shard_spec(first):  # tar shards (dalimix-make-shards): classes.json names the classes
        classes = shard_classes(first)
        for split in splits[1:]:
            other = shard_classes(os.path.join(root, split))
            need(other == classes, f"{splits[0]}/ and {split}/ shards name different classes (classes.json): "
                                   f"{sorted(set(classes) ^ set(other))[:5]}")
        return classes
    classes = class_folders(first)
    need(bool(classes), f"{first!r} has no class folders")
    for split in splits[1:]:
        other = class_folders(os.path.join(root, split))
        need(other == classes, f"{splits[0]}/ and {split}/ must hold the same class folders (labels follow sorted "
                               f"names); they differ in {sorted(set(classes) ^ set(other))[:5]}")
    return classes
