"""Class targets inside a DALI graph: one-hot with label smoothing."""
from __future__ import annotations

from typing import Any

from nvidia.dali import fn, types


def smoothed_targets(labels: Any, num_classes: int, smoothing: float = 0.0) -> Any:
    """float32 [num_classes] per sample: on value 1-eps+eps/K at the label, off value eps/K elsewhere."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    off = smoothing / num_classes
    return fn.one_hot(labels, num_classes=num_classes,
                      on_value=1.0 - smoothing + off, off_value=off, dtype=types.FLOAT)
