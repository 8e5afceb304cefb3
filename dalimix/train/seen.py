"""A debug record of which files and labels each rank read (`dalimix-train --dump-seen`)."""
from __future__ import annotations

import json
import os
from typing import Any

import torch


class SeenRecorder:
    """Debug record of what each rank read: per epoch and split, the file indices of every batch (from the
    loader's stateless `FileSource`, which is what DALI was fed) and the labels the loader actually yielded
    (int targets; the argmax for soft targets, which is the label only without pixel mixing).

    Written as JSON by `dump(path)`; used to check that DDP ranks read disjoint shards.
    """

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def record(self, split: str, epoch: int, step: int, loader: Any, targets: torch.Tensor) -> None:
        source = getattr(loader, "source", None)
        n = int(targets.shape[0])
        entry = self.records.setdefault(f"{split}/{epoch}", {"indices": [], "files": [], "labels": []})
        if n == 0:
            return
        if source is not None:
            idx = [int(i) for i in source.batch_indices(epoch, step)]
            entry["indices"] += idx
            entry["files"] += [os.path.join(*source.files[i].split(os.sep)[-2:]) for i in idx]
        labels = targets.argmax(dim=1) if targets.is_floating_point() else targets
        entry["labels"] += [int(v) for v in labels.cpu().tolist()]

    def dump(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(self.records, fh)
