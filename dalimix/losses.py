"""Losses for mixed (soft) targets.

Mixup, CutMix, Manifold Mixup and label smoothing turn class indices into probability vectors, which
``F.cross_entropy`` with int labels cannot take. Both losses here take soft targets ``[N, K]`` and, for
convenience, int class indices ``[N]`` (one-hot encoded, optionally smoothed). They always compute in
float32, also under autocast, because log-softmax and sums over 1000 classes lose too much in half
precision.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SoftTargetCrossEntropy", "BinarySoftTargetCrossEntropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_smoothing(owner: str, label_smoothing: float) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{owner}: label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


def _check_reduction(owner: str, reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _float_targets(owner: str, x: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
    """Soft float32 targets shaped like ``x`` ([..., K]); int targets ([...]) are one-hot encoded."""
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError(f"{owner}: input must be logits [N, num_classes], got {getattr(x, 'shape', type(x))}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{owner}: target must be a tensor, got {type(target).__name__}")
    num_classes = x.shape[-1]
    if target.is_floating_point():
        if target.shape != x.shape:
            raise ValueError(f"{owner}: soft target shape {tuple(target.shape)} does not match input shape "
                             f"{tuple(x.shape)}")
        return target.float()
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{owner}: target must be int class indices or float soft targets, got {target.dtype}")
    if target.shape != x.shape[:-1]:
        raise ValueError(f"{owner}: int target shape {tuple(target.shape)} must be the input shape without its "
                         f"class dimension, {tuple(x.shape[:-1])}")
    off = label_smoothing / num_classes
    t = torch.full(x.shape, off, dtype=torch.float32, device=x.device)
    return t.scatter_(-1, target.long().unsqueeze(-1).to(x.device), 1.0 - label_smoothing + off)


def _no_autocast(device: torch.device):
    """Disable autocast for the loss math where autocast exists for this device type."""
    kind = device.type
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(kind):
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, enabled=False)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class SoftTargetCrossEntropy(nn.Module):
    """Cross entropy against soft targets: ``mean_n sum_k -t[n, k] * log_softmax(x)[n, k]``.

    ``target`` is float ``[N, K]`` (mixup/CutMix/smoothed targets; rows should sum to 1) or int class
    indices ``[N]``, one-hot encoded with ``label_smoothing`` (then equal to
    ``F.cross_entropy(x, target, label_smoothing=label_smoothing)``). Soft targets are used as given.
    Computed in float32 whatever the logits' dtype or autocast state. ``reduction``: "mean" (over the
    batch), "sum" or "none" (per sample).
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing("SoftTargetCrossEntropy", label_smoothing)
        self.reduction = _check_reduction("SoftTargetCrossEntropy", reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        t = _float_targets("SoftTargetCrossEntropy", x, target, self.label_smoothing)
        with _no_autocast(x.device):
            loss = torch.sum(-t * F.log_softmax(x.float(), dim=-1), dim=-1)
        return _reduce(loss, self.reduction)


class BinarySoftTargetCrossEntropy(nn.Module):
    """Per-class binary cross entropy with logits on soft targets (timm's ``BinaryCrossEntropy``).

    Treats each class as an independent sigmoid (the "ResNet strikes back" recipe), which suits mixed
    targets where two classes are both present. ``target`` is float ``[N, K]`` or int indices ``[N]``
    (one-hot encoded with ``label_smoothing``: ``1 - eps + eps/K`` on, ``eps/K`` off). With
    ``target_threshold`` the targets are binarised (``t > threshold`` -> 1, else 0), as timm does for
    mixed targets. ``weight`` (per class, ``[K]``) and ``pos_weight`` (``[K]`` or a float) are passed to
    ``F.binary_cross_entropy_with_logits``. ``reduction``: "mean" (over all elements, like the torch
    function), "sum" or "none"; ``sum_classes=True`` sums over classes before averaging over the batch.
    Computed in float32 whatever the logits' dtype or autocast state.
    """

    weight: Optional[Tensor]
    pos_weight: Optional[Tensor]

    def __init__(
        self,
        label_smoothing: float = 0.0,
        target_threshold: Optional[float] = None,
        weight: Optional[Tensor] = None,
        pos_weight: Optional[Union[Tensor, float]] = None,
        reduction: str = "mean",
        sum_classes: bool = False,
    ) -> None:
        super().__init__()
        owner = "BinarySoftTargetCrossEntropy"
        self.label_smoothing = _check_smoothing(owner, label_smoothing)
        self.reduction = _check_reduction(owner, reduction)
        if target_threshold is not None and (isinstance(target_threshold, bool)
                                             or not isinstance(target_threshold, (int, float))
                                             or not 0.0 <= target_threshold < 1.0):
            raise ValueError(f"{owner}: target_threshold must be in [0, 1) or None, got {target_threshold!r}")
        self.target_threshold = None if target_threshold is None else float(target_threshold)
        if weight is not None and not isinstance(weight, Tensor):
            raise TypeError(f"{owner}: weight must be a tensor or None, got {type(weight).__name__}")
        if pos_weight is not None and not isinstance(pos_weight, Tensor):
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) or pos_weight < 0:
                raise ValueError(f"{owner}: pos_weight must be a tensor, a number >= 0 or None, got {pos_weight!r}")
            pos_weight = torch.tensor(float(pos_weight))
        # Buffers so that .to(device) moves them with the module.
        self.register_buffer("weight", None if weight is None else weight.float(), persistent=False)
        self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float(), persistent=False)
        self.sum_classes = bool(sum_classes)

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing}, target_threshold={self.target_threshold}, "
                f"reduction={self.reduction!r}, sum_classes={self.sum_classes}")

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        t = _float_targets("BinarySoftTargetCrossEntropy", x, target, self.label_smoothing)
        if self.target_threshold is not None:
            t = (t > self.target_threshold).float()
        with _no_autocast(x.device):
            loss = F.binary_cross_entropy_with_logits(
                x.float(), t,
                weight=None if self.weight is None else self.weight.float(),
                pos_weight=None if self.pos_weight is None else self.pos_weight.float(),
                reduction="none" if self.sum_classes else self.reduction,
            )
        if self.sum_classes:
            return _reduce(loss.sum(-1), self.reduction)
        return loss
