"""Optimizer parameter groups: which parameters are decayed."""
from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Optimizer groups: weight decay on weights, none on biases and norm scales (1-D parameters).

    With `decay_norm_and_bias` every trainable parameter is decayed (torchvision's default recipe).
    """
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
