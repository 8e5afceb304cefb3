"""Every random generator's state as plain data (tensors, numbers), so checkpoints hold no code."""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states, as plain data (tensors, numbers)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(np_state["bit_generator"]),
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states from `rng_state()` (or the tuple form of dalimix checkpoints before version 2)."""
    py = state["python"]
    if isinstance(py, Mapping):
        py = (int(py["version"]), tuple(int(v) for v in torch.as_tensor(py["state"]).tolist()), py["gauss"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        npy = {"bit_generator": npy["bit_generator"],
               "state": {"key": np.asarray(torch.as_tensor(npy["key"]).numpy(), dtype=np.uint32),
                         "pos": int(npy["pos"])},
               "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])}
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def plain_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 RNG state (python / numpy state tuples) in `rng_state()`'s form."""
    out = dict(state)
    py = state.get("python")
    if isinstance(py, (tuple, list)):
        out["python"] = {"version": int(py[0]), "state": torch.tensor([int(v) for v in py[1]], dtype=torch.int64),
                         "gauss": py[2]}
    npy = state.get("numpy")
    if isinstance(npy, (tuple, list)):
        key = npy[1]
        key = torch.from_numpy(key.astype(np.int64)) if isinstance(key, np.ndarray) else torch.as_tensor(key)
        out["numpy"] = {"bit_generator": str(npy[0]), "key": key.to(torch.int64),
                        "pos": int(npy[2]), "has_gauss": int(npy[3]), "gauss": float(npy[4])}
    return out
