"""Progress bars (rank 0 only) and the one device synchronisation the loops use."""
from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

import torch
from tqdm import tqdm


def progress_bar(iterable: Iterable, *, total: Optional[int], desc: str, enabled: bool) -> Any:
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True,
                unit="batch", file=sys.stderr, mininterval=0.5)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
