"""Corrupted training labels (Zhang et al. 2018, section 3.4 and Table 2) and the training errors that show
whether a model memorised them.

Symmetric noise replaces each label, with probability P, by a class drawn uniformly from all K classes (it may
draw the same class, so a share P * (K-1) / K of the labels changes); pair-flip noise moves a label to the
next class (K-1 to 0) with probability P. The corruption is seeded and written beside each run
(`label_noise.tsv`: file, real label, given label) so it can be audited.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from dalimix.atomic_files import write_text
from dalimix.reproduce.subsets import write_list

NOISE_KINDS = ("symmetric", "pairflip")

# Zhang et al. 2018, Table 2 (CIFAR-10, PreAct ResNet-18): test error (%) at the best and the last epoch.
PAPER_NOISE_ERRORS: dict[float, dict[str, tuple[float, float]]] = {
    0.2: {"erm": (12.7, 16.6), "mixup": (5.9, 6.4)},
    0.5: {"erm": (18.8, 44.6), "mixup": (11.3, 12.7)},
    0.8: {"erm": (36.5, 73.9), "mixup": (25.3, 30.9)},
}
PAPER_NOISE_ALPHA = {0.2: 8.0, 0.5: 32.0, 0.8: 32.0}


def paper_level(p: float) -> float:
    """The noise level of Zhang et al.'s Table 2 (0.2, 0.5 or 0.8) nearest to `p`."""
    return min(PAPER_NOISE_ALPHA, key=lambda level: (abs(level - p), level))


def paper_mixup_alpha(p: float) -> float:
    """Zhang et al.'s mixup alpha for label noise `p`: 8 at 20%, 32 at 50% and 80% (the nearest level's)."""
    return PAPER_NOISE_ALPHA[paper_level(p)]


def corrupt_labels(labels: Sequence[int], num_classes: int, p: float, kind: str = "symmetric",
                   seed: int = 0) -> np.ndarray:
    """The labels after corruption with probability `p` (`kind` symmetric or pairflip), the same for a seed."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise: must be in [0, 1], got {p!r}")
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind: must be one of {NOISE_KINDS}, got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"label_noise: needs at least 2 classes, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label_noise: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    rng = np.random.default_rng([seed, 0x6E6F6973])  # its own stream: the run's other draws stay as they were
    hit = rng.random(labels.size) < p
    if kind == "symmetric":
        replacement = rng.integers(0, num_classes, labels.size)
    else:
        replacement = (labels + 1) % num_classes
    return np.where(hit, replacement, labels)


@dataclass(frozen=True)
class NoisyLabels:
    """One corrupted training set: relative paths (under the train folder), real and given labels."""

    files: tuple[str, ...]
    real: np.ndarray
    given: np.ndarray

    @property
    def corrupted(self) -> np.ndarray:
        """Mask of the samples whose given label differs from the real one."""
        return self.given != self.real

    def write(self, run_dir: str) -> tuple[str, str]:
        """`train_files.txt` (what the loader reads: file and given label) and `label_noise.tsv` (the audit:
        file, real, given); returns both paths."""
        os.makedirs(run_dir, exist_ok=True)
        train_list = os.path.join(run_dir, "train_files.txt")
        audit = os.path.join(run_dir, "label_noise.tsv")
        write_list(train_list, self.files, self.given)
        write_text(audit, "file\treal\tgiven\n" + "".join(f"{f}\t{r}\t{g}\n" for f, r, g in
                                                           zip(self.files, self.real, self.given)))
        return train_list, audit

    def subset_list(self, path: str, which: str) -> Optional[str]:
        """A file list of the corrupted (`which` "noisy_real" / "noisy_given") or the clean samples ("clean"),
        with the label named; None when that subset is empty."""
        mask = self.corrupted if which.startswith("noisy") else ~self.corrupted
        if not mask.any():
            return None
        labels = self.given if which == "noisy_given" else self.real
        return write_list(path, [f for f, m in zip(self.files, mask) if m], labels[mask])


def noisy_labels(files: Sequence[str], labels: Sequence[int], num_classes: int, p: float, kind: str,
                 seed: int) -> NoisyLabels:
    """The training set `files` with its labels corrupted (see `corrupt_labels`)."""
    real = np.asarray(labels, dtype=np.int64)
    return NoisyLabels(tuple(files), real, corrupt_labels(real, num_classes, p, kind, seed))


def train_errors(net: Any, noisy: NoisyLabels, train_dir: str, run_dir: str, *, pipeline: Any, classes: Sequence[str],
                 batch_size: int, crop: int, resize: int, device: str, threads: int, channels_last: bool,
                 ctx: Any) -> dict[str, Optional[float]]:
    """Training error (%) of `net` without augmentation (the val transform): on the corrupted samples against
    their real and their given (corrupted) labels, and on the clean samples; plus the corrupted share."""
    from dalimix.loader import DaliLoader
    from dalimix.train.evaluate import evaluate

    out: dict[str, Optional[float]] = {"corrupted_share": 100.0 * float(noisy.corrupted.mean()) if noisy.files else 0.0}
    for which in ("noisy_real", "noisy_given", "clean"):
        file_list = noisy.subset_list(os.path.join(run_dir, f"eval_{which}.txt"), which)
        if file_list is None:
            out[f"train_error_{which}"] = None
            continue
        loader = DaliLoader(pipeline(train_dir, batch_size=batch_size, crop=crop, resize=resize, device=device,
                                     num_threads=threads, classes=list(classes), file_list=file_list,
                                     channels_last=channels_last,
                                     device_id=ctx.device.index if device == "gpu" else None))
        stats = evaluate(net, loader, ctx=ctx, progress=False, desc=which)
        out[f"train_error_{which}"] = 100.0 - stats["val_top1"]
        os.remove(file_list)
    return out
