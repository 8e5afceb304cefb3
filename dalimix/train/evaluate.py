"""Val loss, top-1 and top-5 of a model over a loader, summed over ranks."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dalimix.train.distributed import DistContext
from dalimix.train.metrics import accuracy_counts, logits_of
from dalimix.train.progress import progress_bar
from dalimix.train.seen import SeenRecorder


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, ctx: DistContext, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = True, desc: str = "eval", epoch: int = 0,
             recorder: Optional[SeenRecorder] = None) -> dict[str, float]:
    """Val loss, top-1 and top-5 (percent) and sample count of `model` over `loader`, summed over ranks.

    Pass the bare model (see `unwrap`): evaluation is per rank, without DDP. Empty batches (the padding of
    short val shards) are skipped. Soft targets are scored against their argmax.
    """
    was_training = model.training
    model.eval()
    device = ctx.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = progress_bar(loader, total=total, desc=desc, enabled=progress and ctx.is_main)
    for step, (images, targets) in enumerate(bar):
        if recorder is not None:
            recorder.record("val", epoch, step, loader, targets)
        n = images.shape[0]
        if n == 0:
            continue
        images = images.to(device, non_blocking=True)
        labels = targets.to(device, non_blocking=True)
        if labels.is_floating_point():
            labels = labels.argmax(dim=1)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = logits_of(model(images))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        c1, c5 = accuracy_counts(logits, labels)
        sums += torch.stack([loss.double(), c1.double(), c5.double(), torch.tensor(float(n), dtype=torch.float64,
                                                                                   device=device)])
    loss, c1, c5, n = (float(v) for v in ctx.all_reduce_sum(sums.cpu()))
    model.train(was_training)
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan"), "val_samples": 0}
    return {"val_loss": loss / n, "val_top1": 100.0 * c1 / n, "val_top5": 100.0 * c5 / n, "val_samples": int(n)}
