"""Writing an image dataset as tar shards (WebDataset layout) that `train_pipeline` / `val_pipeline` read.

`write_shards(data, out_dir)`: an ImageFolder tree (or a file list) -> `{prefix}-000000.tar`, ... of
`shard_size` samples each, in a seeded class-balanced random order (every shard holds the classes in about
their dataset proportions), after the same bad-file checks as the folder path (bad files are left out and
named). Each sample is `<key>.<image extension>` plus `<key>.cls` (the class index as text). `classes.json`
beside the shards holds the class names, per-class counts and what was left out. Interrupted runs resume:
the order is fixed by the seed and written to a plan file first (kept beside the shards), every shard is
written to a temporary name and renamed when complete, and a rerun with the same settings keeps the complete
shards (other settings rewrite them all).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any, Optional, Sequence

import numpy as np

from dalimix import validation as V
from dalimix.data.dataset import Dataset, read_file_list, scan_folder
from dalimix.data.shards import CLASSES_FILE, LABEL_EXT

PLAN_FILE = ".make-shards-plan.json"
FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}


def balanced_order(labels: Sequence[int], seed: int) -> np.ndarray:
    """A random order in which every class is spread evenly: sample j of a class of size n sits at
    (j + u) / n on a common axis (u uniform), and the order sorts that axis."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    position = np.empty(labels.size)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        position[idx] = (np.arange(idx.size) + rng.random(idx.size)) / idx.size
    return np.argsort(position, kind="stable")


def _dataset(data: str, file_list: Optional[str], classes: Optional[Sequence[str]], verify: bool) -> Dataset:
    if file_list is not None:
        return read_file_list(file_list, data, classes=classes, verify=verify)
    return scan_folder(data, classes=classes, verify=verify)


def _shard_ok(path: str, members: int) -> bool:
    try:
        with tarfile.open(path, "r:") as tar:
            return sum(1 for m in tar if m.isreg()) == members
    except (tarfile.TarError, OSError):
        return False


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o644, 0
    tar.addfile(info, io.BytesIO(payload))


def write_shards(data: str | os.PathLike, out_dir: str | os.PathLike, *, shard_size: int = 1000,
                 prefix: str = "shard", seed: int = 0, file_list: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, verify: bool = True, tar_format: str = "pax",
                 progress: bool = True) -> dict[str, Any]:
    """Write the shards (see the module docstring); returns what `classes.json` holds, plus the shard paths."""
    shard_size = V.positive_int("shard_size", shard_size)
    V.one_of("tar_format", tar_format, tuple(FORMATS))
    if not prefix or "/" in prefix:
        raise V.ArgumentError("prefix", f"prefix must be a file name prefix, got {prefix!r}")
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    ds = _dataset(os.fspath(data), file_list, classes, verify)
    settings = {"data": os.path.abspath(os.fspath(data)), "file_list": file_list, "shard_size": shard_size,
                "prefix": prefix, "seed": seed, "tar_format": tar_format, "files": len(ds.files)}
    plan_path = os.path.join(out, PLAN_FILE)
    order: Optional[list[int]] = None
    resuming = False
    if os.path.isfile(plan_path):
        with open(plan_path) as fh:
            plan = json.load(fh)
        if plan.get("settings") == settings:
            order = plan["order"]  # resuming: the same order, whatever the seed's generator does meanwhile
            resuming = True
    if order is None:
        order = balanced_order(ds.labels, seed).tolist()
        with open(plan_path + ".tmp", "w") as fh:
            json.dump({"settings": settings, "order": order}, fh)
        os.replace(plan_path + ".tmp", plan_path)

    n_shards = -(-len(order) // shard_size)
    paths = [os.path.join(out, f"{prefix}-{i:06d}.tar") for i in range(n_shards)]
    shards_iter: Any = range(n_shards)
    if progress:
        from tqdm import tqdm
        shards_iter = tqdm(shards_iter, desc="writing shards", unit="shard")
    for s in shards_iter:
        chunk = order[s * shard_size:(s + 1) * shard_size]
        if resuming and _shard_ok(paths[s], 2 * len(chunk)):
            continue  # written by an earlier, interrupted run
        tmp = paths[s] + ".tmp"
        with tarfile.open(tmp, "w", format=FORMATS[tar_format]) as tar:
            for k, i in enumerate(chunk):
                key = f"{s * shard_size + k:09d}"
                ext = os.path.splitext(ds.files[i])[1].lower().lstrip(".") or "jpg"
                with open(ds.files[i], "rb") as fh:
                    _add(tar, f"{key}.{ext}", fh.read())
                _add(tar, f"{key}.{LABEL_EXT}", str(ds.labels[i]).encode())
        os.replace(tmp, paths[s])
    counts = np.bincount(np.asarray(ds.labels), minlength=len(ds.classes))
    meta = {"classes": list(ds.classes), "counts": {c: int(n) for c, n in zip(ds.classes, counts)},
            "samples": len(order), "shards": n_shards, "shard_size": shard_size, "seed": seed,
            "excluded": [[f, why] for f, why in ds.excluded]}
    with open(os.path.join(out, CLASSES_FILE + ".tmp"), "w") as fh:
        json.dump(meta, fh, indent=1)
    os.replace(os.path.join(out, CLASSES_FILE + ".tmp"), os.path.join(out, CLASSES_FILE))
    return dict(meta, paths=paths)
