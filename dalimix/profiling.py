"""Measuring input pipelines fairly: images/s after warm-up, CPU use, memory, and the baselines.

Used by `scripts/profile_loader.py`. Every contender is an iterable of batches; `Meter` times a slice of it
and reads CPU seconds of this process and of any worker processes from /proc, so the ratios it reports are
measured side by side on the same machine at the same time.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from dalimix.config import MixConfig

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds of the given live processes (Linux /proc; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / _TICKS
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_mb(pids: Sequence[int]) -> float:
    """Resident memory of the given processes in MiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Sample:
    images_per_sec: float
    cpu_cores: float
    rss_mb: float


@dataclass
class Contender:
    """A named loader to measure: `make()` builds it once; it is iterated epoch after epoch."""

    name: str
    make: Callable[[], Iterable]
    step: Optional[Callable[[Any], int]] = None  # consumes a batch, returns its size
    pids: Callable[[Any], list[int]] = field(default=lambda _: [])
    samples: list[Sample] = field(default_factory=list)
    _obj: Any = None
    _it: Optional[Iterator] = None

    def _next(self) -> Any:
        if self._obj is None:
            self._obj = self.make()
        while True:
            if self._it is None:
                self._it = iter(self._obj)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def run(self, *, seconds: float = 0.0, batches: int = 0, record: bool = True) -> Sample:
        """Consume batches for `seconds` (or `batches`) and record images/s, CPU cores used and memory."""
        batch = self._next()  # not timed: the first batch of a slice may wait on a refill
        size = self.consume(batch)
        procs = [os.getpid()] + self.pids(self._obj)
        cpu0, t0 = cpu_seconds(procs), time.perf_counter()
        images, count = 0, 0
        while True:
            size = self.consume(self._next())
            images += size
            count += 1
            elapsed = time.perf_counter() - t0
            if (batches and count >= batches) or (not batches and elapsed >= seconds):
                break
        procs = [os.getpid()] + self.pids(self._obj)
        sample = Sample(images / elapsed, (cpu_seconds(procs) - cpu0) / elapsed, rss_mb(procs))
        if record:
            self.samples.append(sample)
        return sample

    def consume(self, batch: Any) -> int:
        if self.step is not None:
            return self.step(batch)
        x = batch[0]
        if x.is_cuda:
            torch.cuda.synchronize()
        return int(x.shape[0])

    def median(self) -> dict[str, float]:
        return {"images_per_sec": float(np.median([s.images_per_sec for s in self.samples])),
                "cpu_cores": float(np.median([s.cpu_cores for s in self.samples])),
                "rss_mb": float(max(s.rss_mb for s in self.samples)),
                "runs": [round(s.images_per_sec, 1) for s in self.samples]}


def dataloader_pids(loader: Any) -> list[int]:
    """Worker pids of a torch DataLoader's live (persistent) iterator."""
    it = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(it, "_workers", [])] if it is not None else []


def torchvision_loader(data_dir: str, *, batch_size: int, crop: int, workers: int,
                       pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The reference recipe: ImageFolder + RandomResizedCrop, flip, ToTensor, Normalize."""
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return torch.utils.data.DataLoader(datasets.ImageFolder(data_dir, tf), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True, pin_memory=pin_memory,
                                       persistent_workers=workers > 0)


class TorchBatchMix:
    """mixup / CutMix applied to each batch in the training loop, as timm's `Mixup` does (batch mode)."""

    def __init__(self, cfg: MixConfig, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        k, eps = cfg.num_classes, cfg.label_smoothing
        one_hot = torch.full((y.shape[0], k), eps / k, device=y.device)
        one_hot.scatter_(1, y.view(-1, 1), 1 - eps + eps / k)
        lam = 1.0
        if cfg.mixing and self.rng.random() < cfg.prob:
            use_cut = cfg.cutmix_on and (not cfg.mixup_on or self.rng.random() < cfg.switch_prob)
            if use_cut:
                lam = self.rng.beta(cfg.cutmix_alpha or 1.0, cfg.cutmix_alpha or 1.0)
                h, w = x.shape[-2:]
                r = np.sqrt(1 - lam)
                cy, cx = self.rng.integers(h), self.rng.integers(w)
                y0, y1 = np.clip([cy - int(h * r) // 2, cy + int(h * r) // 2], 0, h)
                x0, x1 = np.clip([cx - int(w * r) // 2, cx + int(w * r) // 2], 0, w)
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
                lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
            else:
                lam = float(self.rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                x.mul_(lam).add_(x.flip(0).mul_(1 - lam))
        return x, one_hot * lam + one_hot.flip(0) * (1 - lam)


def model_step_rate(arch: str = "resnet50", *, batch_size: int, crop: int, steps: int = 20,
                    warmup: int = 5, amp: bool = True, channels_last: bool = True) -> float:
    """Images/s of the model's own training step on synthetic GPU input (the rate a loader must feed)."""
    import torchvision
    model = torchvision.models.get_model(arch, num_classes=1000).cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, crop, crop, device="cuda")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)
