"""What a model's output says: its logits, and how many rows have their label in the top k."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def logits_of(out: Any) -> torch.Tensor:
    """Logits from a model output (tensor, or e.g. torchvision's InceptionOutputs / GoogLeNetOutputs)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a logits tensor [N, num_classes]")


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """How many rows have their label among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return [hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks]
