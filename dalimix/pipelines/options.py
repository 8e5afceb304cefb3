"""The pipeline builders' shared arguments, checked once with errors that name them: devices, dtypes, the
prefetch queue, the GPU decoder's options, seeds. No torch here."""
from __future__ import annotations

import os
import random
from typing import Any, Optional

import numpy as np
from nvidia.dali import types

from dalimix import native
from dalimix import validation as V

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEVICES = ("gpu", "cpu")
DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}
# Output dtypes DALI does not write: the graph writes float32 and the loader converts on the device.
LOADER_DTYPES = ("bfloat16",)


def graph_dtype(dtype: str) -> tuple[str, Optional[str]]:
    """(the dtype the graph writes, the dtype the loader converts to or None) for a builder's `dtype`."""
    V.one_of("dtype", dtype, tuple(DTYPES) + LOADER_DTYPES)
    return ("float32", dtype) if dtype in LOADER_DTYPES else (dtype, None)


def prefetch_depth(value: Any, *, graph_reads_gpu_shapes: bool = False, why_stock: str = "") -> Any:
    """Check `prefetch_queue_depth`: an int >= 1, or {"cpu_size": n, "gpu_size": m} for separate queues."""
    if isinstance(value, dict):
        if set(value) != {"cpu_size", "gpu_size"} or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value.values()):
            raise V.ArgumentError("prefetch_queue_depth", f"prefetch_queue_depth must be an int >= 1 or a dict "
                                  f"with int 'cpu_size' and 'gpu_size' >= 1, got {value!r}")
        if graph_reads_gpu_shapes:
            # Separate queues switch DALI's dynamic executor off, and without it a GPU graph cannot read its
            # shapes on the CPU, which the stock-operator graph does for mixing and erasing.
            raise V.ArgumentError("prefetch_queue_depth", "prefetch_queue_depth as a dict (separate CPU/GPU queues) "
                                  "cannot be used with mixing or random erasing on the GPU without dalimix's native "
                                  f"operators ({why_stock or native.why_unavailable('gpu')}); give an int")
        return {k: int(v) for k, v in value.items()}
    return V.positive_int("prefetch_queue_depth", value)


# What `decoder_options` may set on DALI's GPU decoder (nvJPEG / hardware JPEG): the hardware decoder's
# share of the batch, the decoder's memory padding, and buffers preallocated for images of a given size.
DECODER_OPTIONS = ("hw_decoder_load", "device_memory_padding", "host_memory_padding", "device_memory_padding_jpeg2k",
                   "host_memory_padding_jpeg2k", "preallocate_width_hint", "preallocate_height_hint")


def decoder_options(options: Optional[dict], device: str) -> tuple[tuple[str, Any], ...]:
    if not options:
        return ()
    unknown = sorted(set(options) - set(DECODER_OPTIONS))
    if unknown:
        raise V.ArgumentError("decoder_options", f"decoder_options: unknown {unknown}; expected some of "
                                                 f"{DECODER_OPTIONS}")
    if device != "gpu":
        raise V.ArgumentError("decoder_options", "decoder_options tune the GPU decoder; they apply with device='gpu'")
    return tuple(sorted(options.items()))


def normalize_device(device: Any, device_id: Optional[int] = None) -> tuple[str, Optional[int]]:
    """("gpu", id) or ("cpu", None) from dalimix's names ("gpu", "cpu") or torch's ("cuda", "cuda:1", a
    `torch.device`). A GPU without an index is `device_id`, else this rank's (`LOCAL_RANK`), else 0."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind in ("cuda", "gpu"):
        if index:
            if not index.isdigit():
                raise V.ArgumentError("device", f"device {device!r}: expected 'gpu', 'cpu', 'cuda' or 'cuda:N'")
            if device_id is not None and int(device_id) != int(index):
                raise V.ArgumentError("device_id", f"device_id={device_id} contradicts device={device!r}")
            return "gpu", int(index)
        return "gpu", int(device_id) if device_id is not None else local_gpu()
    if kind == "cpu" and not index:
        return "cpu", None
    raise V.ArgumentError("device", f"device must be 'gpu', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}")


def local_gpu() -> int:
    """This rank's GPU: `LOCAL_RANK`, or 0 where the launcher shows each process only its own GPU (SLURM,
    Kubernetes: one visible device whatever the local rank)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local > 0:
        try:
            from nvidia.dali import backend
            if int(backend.GetCUDADeviceCount()) == 1:
                return 0
        except Exception:  # noqa: BLE001 - no CUDA here: the pipeline build will say so
            pass
    return local


def device_id_for(device: Any, device_id: Optional[int]) -> Optional[int]:
    """The DALI `device_id` of a builder's `device` (None on the CPU)."""
    return normalize_device(device, device_id)[1]


def seeds(seed: Optional[int], shard_id: int, num_shards: int) -> tuple[int, int]:
    """(order seed shared by all shards, augmentation seed distinct per shard)."""
    if seed is None:
        # Shards must agree on the order or they would overlap; augmentation may differ freely.
        order_seed = 0 if num_shards > 1 else random.SystemRandom().randrange(2 ** 31)
        return order_seed, random.SystemRandom().randrange(2 ** 31)
    V.optional_epoch("seed", seed)  # None or an int >= 0
    return int(seed), (int(seed) * 1_000_003 + shard_id * 7919 + 1) % (2 ** 31)
