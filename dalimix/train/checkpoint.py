"""The checkpoint format: plain data only (tensors, numbers, strings, bytes, lists, dicts), written
atomically and loaded with `torch.load(weights_only=True)`, so that loading one never runs code."""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Mapping, Optional

import numpy as np
import torch

from dalimix.atomic_files import fsync_file
from dalimix.train.rng import plain_rng

CHECKPOINT_VERSION = 2  # 2: plain data only (loads with weights_only=True)

class CheckpointError(ValueError):
    """A checkpoint that is refused or cannot be read; the message names the file and the reason."""


_PLAIN = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first entry of `obj` that is not plain data (what weights_only loads)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: checkpoints hold only plain data "
                    f"(tensors, numbers, strings, bytes, lists, dicts)")


def _to_plain(obj: Any, where: str) -> Any:
    """Plain data from what an older, trusted checkpoint held (numpy arrays and scalars become tensors/numbers)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        items = {k: _to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        # Unchanged mappings stay as they are (a model state_dict keeps its OrderedDict and _metadata).
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (tuple, list)):
        seq = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(seq, obj)) else type(obj)(seq)
    _check_plain(obj, where)
    return obj


def _legacy_safe_globals() -> list[Any]:
    """The numpy types of version-1 dalimix checkpoints (the numpy RNG state): data, no code, safe to allow."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.UInt32DType, dtypes.Float64DType, dtypes.Int64DType]
    return allowed


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """torch.save plain data to `path` atomically (tmp file, then rename): a crash mid-write never leaves a
    truncated checkpoint. Raises TypeError naming an entry that is not plain data."""
    state = dict(state)
    _check_plain(state, "checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    fsync_file(tmp)
    os.replace(tmp, path)


def copy_atomic(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    fsync_file(tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str, *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `fit` onto the CPU, as data: `torch.load(weights_only=True)`, nothing runs.

    A file whose pickle needs anything but plain data (tensors, numbers, strings, lists, dicts, bytes) is
    refused with `CheckpointError` naming the file and what it asked to run, and how to convert it; the
    numpy RNG state of version-1 dalimix checkpoints is allowed. `trust=True` unpickles such a file in full
    (which runs whatever code it carries: only for files from a source you trust) and returns plain data.
    Missing files raise FileNotFoundError; foreign or corrupt files raise CheckpointError.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a file")
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is reported naming the file
        text = str(exc)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"checkpoint {path!r} could not be read: {type(exc).__name__}: "
                                  f"{text.strip().splitlines()[0] if text.strip() else exc!r}") from None
        reason = next((line.split("error:", 1)[1].strip() for line in text.splitlines()
                       if "WeightsUnpickler error:" in line), "it holds more than plain data")
        reason = reason.split(" was not an allowed global")[0].split(". Please use")[0]
        if not trust:
            raise CheckpointError(
                f"checkpoint {path!r} refused: loading it would unpickle code ({reason}), and loading a checkpoint "
                f"must never run code. dalimix checkpoints hold plain data only (tensors, numbers, strings, lists, "
                f"dicts, bytes). If the file comes from a source you trust, convert it once with "
                f"`python -c \"from dalimix.train import convert_checkpoint; convert_checkpoint({path!r}, "
                f"'converted.pt', trust=True)\"` (or pass --trust-checkpoint to scripts/train_imagenet.py) and "
                f"use the converted file") from None
        warnings.warn(f"checkpoint {path!r}: unpickling it in full because trust=True ({reason}); this runs any code "
                      f"it carries", stacklevel=2)
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = _to_plain(state, "checkpoint") if isinstance(state, Mapping) else state
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path!r} is not a dalimix training checkpoint (no 'model'/'epoch' entries)")
    if isinstance(state.get("rng"), list):  # version 1 kept python / numpy RNG states as tuples
        state["rng"] = [plain_rng(r) if isinstance(r, Mapping) else r for r in state["rng"]]
    return state


def convert_checkpoint(src: str, dst: str, *, trust: bool = False) -> dict[str, Any]:
    """Rewrite checkpoint `src` as a plain-data checkpoint `dst` (loads with weights_only=True); returns it.

    `trust=True` is needed for files that only load by running their pickle (older or foreign checkpoints):
    it runs that code once, here, so do it only for files from a source you trust.
    """
    state = _to_plain(load_checkpoint(src, trust=trust), "checkpoint")
    state["version"] = CHECKPOINT_VERSION
    save_checkpoint(dst, state)
    return state


def checkpoint_epoch(path: str) -> Optional[int]:
    """The `epoch` a dalimix checkpoint file records, or None when it is missing or unreadable (never runs code)."""
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - any problem means "no usable epoch"
        return None


def dali_checkpoint(loader: Any) -> Optional[bytes]:
    """The DALI pipeline state behind `loader` after the batches it has yielded (prefetching accounted for),
    or None when its pipeline keeps no checkpoints (a bare pipeline, or one built without checkpointing)."""
    spec = getattr(loader, "spec", None)
    if spec is None or not spec.checkpointing:
        return None
    return loader.checkpoint()
