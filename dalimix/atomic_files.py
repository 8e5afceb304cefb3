"""Atomic writes of the files runs leave behind (logs, JSON, charts).

A run may be killed at any moment (a preempted job, Ctrl-C, a dead rank): every output is written to a
temporary file beside its target, flushed to disk and renamed over it, so a reader sees the old file or the
new one, never half of one.
"""
from __future__ import annotations

import math
import os
from typing import Any


def fsync_file(path: str) -> None:
    """Flush `path`'s data to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically: a tmp file, flushed to disk, then renamed over `path`."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None (strict JSON has no such numbers), containers copied."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_figure(fig: Any, path: str) -> str:
    """Save a matplotlib figure to `path` (format from its suffix) atomically; return `path`."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.path.splitext(path)[1] or '.png'}"  # the suffix tells matplotlib the format
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
