"""Measuring input pipelines fairly: images/s after warm-up, CPU use, memory, and the baselines.

Used by `scripts/profile_loader.py` and `dalimix.tools.tuner`. Every contender is an iterable of batches;
`Contender.run` times a slice of it and reads CPU seconds of this process and of any worker processes from
/proc, so the ratios it reports are measured side by side on the same machine at the same time. Beside the
loaders: the model's own training step rate (`model_step_rate`, GPU or CPU) and the one-sentence verdict
comparing the two (`bound_by`), which JPEG decoder runs (`decoder_path`), and the GPU memory a pipeline
holds after warm-up and after some epochs (`pipeline_gpu_memory`).
"""
from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
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
    setup: Optional[Callable[[], None]] = None   # run before each slice (e.g. torch threads for this contender)
    samples: list[Sample] = field(default_factory=list)
    _obj: Any = None
    _it: Optional[Iterator] = None

    def _next(self) -> Any:
        if self._obj is None:
            self._obj = self.make()
        fresh = False
        while True:
            if self._it is None:
                self._it, fresh = iter(self._obj), True
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                if fresh:
                    raise RuntimeError(f"{self.name}: an epoch yielded no batch (fewer samples than one batch?)")

    def run(self, *, seconds: float = 0.0, batches: int = 0, record: bool = True, skip: int = 1) -> Sample:
        """Consume batches for `seconds` (or `batches`; at least one) and record images/s, CPU cores used and
        memory. The first `skip` batches of the slice are not timed: they may wait on a refill, or come out of
        a queue prefetched while another contender ran."""
        if self.setup is not None:
            self.setup()
        for _ in range(max(0, skip)):
            self.consume(self._next())
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

    def close(self) -> None:
        """Drop the loader (its pipeline, threads and memory go with it); `make()` builds it again if run."""
        self._it = None
        self._obj = None
        gc.collect()

    def consume(self, batch: Any) -> int:
        """Feed one batch to `step` (default: wait for it on the GPU) and return its size."""
        if self.step is not None:
            return self.step(batch)
        x = batch[0]
        if x.is_cuda:
            torch.cuda.synchronize()
        return int(x.shape[0])

    def median(self) -> dict[str, float]:
        """Median images/s and CPU cores over the recorded slices, peak memory, and every slice's rate."""
        return {"images_per_sec": float(np.median([s.images_per_sec for s in self.samples])),
                "cpu_cores": float(np.median([s.cpu_cores for s in self.samples])),
                "rss_mb": float(max(s.rss_mb for s in self.samples)),
                "runs": [round(s.images_per_sec, 1) for s in self.samples]}


def dataloader_pids(loader: Any) -> list[int]:
    """Worker pids of a torch DataLoader's live (persistent) iterator."""
    it = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(it, "_workers", [])] if it is not None else []


def torchvision_loader(data_dir: str, *, batch_size: int, crop: int, workers: int,
                       pin_memory: bool = False, transform: Any = None) -> torch.utils.data.DataLoader:
    """The reference recipe: ImageFolder + RandomResizedCrop, flip, ToTensor, Normalize (or `transform`,
    e.g. timm's `create_transform` for a recipe with a policy)."""
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    tf = transform or T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
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


class ModelStep:
    """One training step of a classifier on a batch (forward, backward, SGD step): the consumer a loader has
    to keep fed. The network is built as training builds it (`dalimix.train.models.build_model`: any model
    `dalimix-train --arch` takes). Call it with `(images, targets)`; returns the batch size. Targets may be
    int labels or soft targets (scored against their argmax). On the GPU each step ends with a
    synchronisation, so that a timed slice of steps holds all of their work.
    """

    def __init__(self, arch: str = "resnet50", *, device: str = "gpu", num_classes: int = 1000,
                 amp: Optional[bool] = None, channels_last: Optional[bool] = None, crop: int = 224):
        from dalimix.train.models import build_model

        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("device='gpu': no CUDA GPU is visible")
        model = build_model(arch, num_classes, crop=crop)
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        self.amp = (device == "gpu") if amp is None else bool(amp)
        self.channels_last = (device == "gpu") if channels_last is None else bool(channels_last)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.arch = arch
        self.num_classes = num_classes
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = torch.nn.CrossEntropyLoss()

    def __call__(self, batch: Any) -> int:
        x, y = batch[0], batch[1]
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if y.is_floating_point():
            y = y.argmax(dim=1)
        y = y.remainder(self.num_classes)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            loss = self.loss(self.model(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return int(x.shape[0])


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (unchanged when None), then restore the old count."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def training_torch_threads(dali_threads: int) -> int:
    """The torch threads `dalimix-train --device cpu` uses beside `dali_threads` DALI threads (cores minus them,
    at least one), so a CPU model step is measured with the cores it would get in training."""
    return max(1, cpu_cores() - int(dali_threads))


def model_step_rate(arch: str = "resnet50", *, batch_size: int, crop: int, steps: int = 20,
                    warmup: int = 5, amp: Optional[bool] = None, channels_last: Optional[bool] = None,
                    device: str = "gpu", threads: Optional[int] = None) -> float:
    """Images/s of the model's own training step on synthetic input (the rate a loader must feed).

    GPU: AMP (float16) and channels_last by default. CPU: float32 NCHW by default, with `threads` torch
    threads (e.g. `training_torch_threads(dali_threads)`, what a CPU training run leaves the model).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    step = ModelStep(arch, device=device, amp=amp, channels_last=channels_last, crop=crop)
    x = torch.randn(batch_size, 3, crop, crop, device=step.device)
    y = torch.randint(0, 1000, (batch_size,), device=step.device)
    with torch_threads(threads if device == "cpu" else None):
        for _ in range(warmup):
            step((x, y))
        t0 = time.perf_counter()
        for _ in range(steps):
            step((x, y))
        return steps * batch_size / (time.perf_counter() - t0)


def bound_by(loader_rate: float, model_rate: float, *, arch: str, device: str) -> str:
    """One sentence: is training input-bound or model-bound, and by how much."""
    if not (loader_rate > 0 and model_rate > 0):
        raise ValueError(f"rates must be > 0, got loader {loader_rate}, model {model_rate}")
    shared = (" (measured apart: on the CPU the loader and the model share the cores, so together both run "
              "slower)") if device == "cpu" else ""
    if loader_rate < model_rate:
        return (f"Input-bound: the loader delivers {loader_rate:.0f} img/s, {model_rate / loader_rate:.2f}x fewer "
                f"than the {arch} training step consumes ({model_rate:.0f} img/s), so the model would wait "
                f"~{1 - loader_rate / model_rate:.0%} of the time{shared}; `dalimix-profile --tune` searches "
                f"for faster loader settings.")
    return (f"Model-bound: the loader delivers {loader_rate:.0f} img/s, {loader_rate / model_rate:.2f}x what the "
            f"{arch} training step consumes ({model_rate:.0f} img/s), so a faster loader would not speed "
            f"training up{shared}.")


def _nvimgcodec_version() -> str:
    try:
        from nvidia.dali import backend
        v = int(backend.GetNvimgcodecVersion())
        return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"
    except Exception:  # noqa: BLE001 - the version is decoration
        return "?"


def decoder_path(device: str, *, device_id: Optional[int] = None, sample: Optional[str] = None,
                 hw_decoder_load: Optional[float] = None) -> str:
    """Which JPEG decoder a dalimix train pipeline runs on `device`, in words.

    CPU: DALI's CPU decoder, nvImageCodec with libjpeg-turbo. GPU (DALI's "mixed" decoder): nvJPEG on CUDA
    with the Huffman stage on the CPU threads, plus the hardware JPEG decoder for `hw_decoder_load` of each
    batch (DALI's default 0.65) where the GPU has one. Whether it has one is asked of nvImageCodec (the
    library DALI decodes with) by decoding `sample` with its hardware backend only.
    """
    if device == "cpu":
        return f"cpu: libjpeg-turbo via nvImageCodec {_nvimgcodec_version()} (DALI CPU decoder)"
    if device != "gpu":
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    load = 0.65 if hw_decoder_load is None else float(hw_decoder_load)
    cuda = "nvJPEG CUDA decoder (Huffman decoding on the DALI CPU threads)"
    if sample is None:
        return f"mixed: {cuda}; hardware JPEG decoder not probed (no sample file)"
    dev = 0 if device_id is None else int(device_id)
    try:
        import nvidia.nvimgcodec as nvimgcodec
        hw = nvimgcodec.Decoder(device_id=dev, backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
        with open(sample, "rb") as fh:
            image = hw.decode(nvimgcodec.CodeStream(fh.read()))
    except Exception as exc:  # noqa: BLE001 - a failed probe is reported, not fatal
        return f"mixed: {cuda}; hardware JPEG decoder unknown (probe failed: {type(exc).__name__}: {exc})"
    name = torch.cuda.get_device_name(dev) if torch.cuda.is_available() else f"GPU {dev}"
    if image is None:
        return f"mixed: {cuda}; no hardware JPEG decoder on {name} (nvImageCodec's hardware backend declined {sample})"
    if load <= 0:
        return f"mixed: {cuda}; the hardware JPEG decoder of {name} is off (hw_decoder_load=0)"
    return (f"mixed: hardware JPEG decoder of {name} for ~{min(load, 1.0):.0%} of each batch (hw_decoder_load "
            f"{load:g}), {cuda} for the rest")


def pipeline_gpu_memory(make_loader: Callable[[], Iterable], *, device_id: int = 0, warmup_batches: int = 10,
                        epochs: int = 1) -> dict[str, Any]:
    """GPU memory (MiB) a loader's DALI pipeline holds after `warmup_batches` and after `epochs` epochs.

    Device memory in use (`torch.cuda.mem_get_info`, the whole device, so run it on a GPU no one else uses)
    minus what torch's caching allocator reserved, measured against the same figures before `make_loader()`
    builds the loader. Build nothing else on the device meanwhile. The loader is dropped afterwards and DALI
    asked to release its unused pool memory.
    """
    if epochs < 1 or warmup_batches < 1:
        raise ValueError(f"epochs and warmup_batches must be >= 1, got {epochs}, {warmup_batches}")
    if not torch.cuda.is_available():
        raise ValueError("pipeline_gpu_memory needs a CUDA GPU")
    mib = 1024.0 ** 2

    def held() -> float:
        torch.cuda.synchronize(device_id)
        free, total = torch.cuda.mem_get_info(device_id)
        return (total - free - torch.cuda.memory_reserved(device_id)) / mib

    base = held()
    loader = make_loader()
    seen, warm = 0, None
    for _ in range(epochs):
        for batch in loader:
            seen += 1
            if seen == warmup_batches:
                warm = held() - base
            del batch  # hold no batch across the measurements
    after = held() - base
    if warm is None:  # fewer batches in all the epochs than the warm-up asked for
        warm = after
    del loader
    gc.collect()
    try:
        from nvidia.dali import backend
        backend.ReleaseUnusedMemory()
    except Exception:  # noqa: BLE001 - releasing is a courtesy
        pass
    return {"after_warmup_mib": round(warm, 1), "after_epochs_mib": round(after, 1),
            "growth_mib": round(after - warm, 1), "warmup_batches": min(warmup_batches, seen), "epochs": epochs,
            "batches": seen}
