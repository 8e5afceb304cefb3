"""Which images a comparison trains and validates on: the first N of each class (a low-data recipe), and the
held-out set made of the train images such a recipe leaves unused."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from dalimix.atomic_files import write_text

HELD_OUT = "unused"
"""`--val-data` value that asks for the held-out set of unused train images even where `val/` exists."""


def comparison_classes(data: str, val_data: Optional[str]) -> list[str]:
    """The classes of `data/train`, checked against the val folder's (`val_data`, else `data/val` when it
    exists; a held-out val shares train's). `ArgumentError` names `data` or `val_data`."""
    from dalimix import validation as V
    from dalimix.data.splits import class_folders, split_classes

    if val_data is None and os.path.isdir(os.path.join(data, "val")):
        return split_classes(data)
    classes = split_classes(data, ("train",))
    if val_data not in (None, HELD_OUT):
        if not os.path.isdir(val_data):
            raise V.ArgumentError("val_data", f"{val_data!r} is not a folder (expected one folder per class, or "
                                              f"'{HELD_OUT}')")
        other = class_folders(val_data)
        if other != classes:
            raise V.ArgumentError("val_data", f"{val_data!r} must hold the class folders of {data}/train; they "
                                              f"differ in {sorted(set(classes) ^ set(other))[:5]}")
    return classes


def class_files(train_dir: str, classes: Sequence[str]) -> list[list[str]]:
    """Per class (in `classes` order), its images under `train_dir` as relative paths, sorted by name."""
    from dalimix.data.dataset import scan_folder

    ds = scan_folder(train_dir, verify=False, classes=list(classes))
    per_class: list[list[str]] = [[] for _ in classes]
    for f, label in sorted(zip(ds.files, ds.labels), key=lambda fl: (fl[1], fl[0])):
        per_class[int(label)].append(os.path.relpath(f, train_dir))
    return per_class


def first_per_class(per_class: Sequence[Sequence[str]], n: Optional[int], classes: Sequence[str],
                    train_dir: str) -> tuple[list[str], list[int]]:
    """The first `n` images of each class (all when `n` is None) and their labels; ValueError naming
    `train_per_class` when a class has fewer."""
    short = [f"{classes[k]} ({len(files)})" for k, files in enumerate(per_class) if n is not None and len(files) < n]
    if short:
        raise ValueError(f"train_per_class: {n} images per class asked for, but {train_dir} has fewer in "
                         f"{', '.join(short[:5])}")
    files, labels = [], []
    for k, names in enumerate(per_class):
        chosen = names if n is None else names[:n]
        files += chosen
        labels += [k] * len(chosen)
    return files, labels


def write_list(path: str, files: Sequence[str], labels: Sequence[int]) -> str:
    """A `file_list` (relative path and label per line) at `path`."""
    write_text(path, "".join(f"{f} {k}\n" for f, k in zip(files, labels)))
    return path


@dataclass(frozen=True)
class ValSource:
    """Where a comparison validates: a folder, optionally restricted by a file list, and how it came about."""

    root: str
    file_list: Optional[str]
    note: str
    images: Optional[int] = None

    def describe(self) -> dict[str, object]:
        """As recorded with each run (a run on other val data is another run)."""
        return {"root": os.path.abspath(self.root), "held_out": self.file_list is not None, "images": self.images}


def resolve_val(data: str, val_data: Optional[str], classes: Sequence[str], train_per_class: Optional[int],
                val_per_class: Optional[int], output: str) -> ValSource:
    """`val_data` when given (a folder of the same classes, or "unused"); else `data/val` when it exists;
    else the train images after the first `train_per_class` of each class (at most `val_per_class` each),
    written to `output/heldout_val.txt`. ValueError names `val_data` when none of these exists."""
    if val_data not in (None, HELD_OUT):
        if not os.path.isdir(val_data):
            raise ValueError(f"val_data: {val_data} is not a folder (class folders of {len(classes)} classes "
                             f"expected, or '{HELD_OUT}')")
        return ValSource(val_data, None, f"val: {val_data}")
    default_val = os.path.join(data, "val")
    if val_data is None and os.path.isdir(default_val):
        return ValSource(default_val, None, f"val: {default_val}")
    train_dir = os.path.join(data, "train")
    if train_per_class is None:
        raise ValueError(f"val_data: {data} has no val/ folder and the recipe trains on every train image; give "
                         f"--val-data DIR, or --train-per-class N to hold out the rest of train/")
    per_class = class_files(train_dir, classes)
    files, labels = [], []
    for k, names in enumerate(per_class):
        rest = names[train_per_class:]
        chosen = rest if val_per_class is None else rest[:val_per_class]
        files += chosen
        labels += [k] * len(chosen)
    empty = [classes[k] for k, names in enumerate(per_class) if len(names) <= train_per_class]
    if empty:
        raise ValueError(f"val_data: no val/ in {data} and class(es) {', '.join(empty[:5])} have no train images "
                         f"beyond the first {train_per_class} to hold out; give --val-data DIR")
    os.makedirs(output, exist_ok=True)
    path = write_list(os.path.join(output, "heldout_val.txt"), files, labels)
    cap = "" if val_per_class is None else f" (at most {val_per_class} per class)"
    note = (f"val: {len(files)} held-out images of {train_dir}: those after the first {train_per_class} of each "
            f"class{cap}, which training does not use (listed in {path})")
    return ValSource(train_dir, path, note, len(files))
