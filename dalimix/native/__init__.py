"""dalimix's DALI plugin: the fused resample + mix + flip + normalise + erase operator and the native
mixing / erasing parameter steps, compiled against the installed DALI and loaded into it.

`load()` runs once, on `import dalimix.ops`: it builds the plugin into the cache if needed (see
`dalimix.native.build`) and registers `fn.dalimix.resample_mix`, `fn.dalimix.mix_params` and
`fn.dalimix.erase_params` with DALI. Where that is impossible (no compiler, or `DALIMIX_NATIVE=0`),
dalimix warns once and its graphs use stock DALI operators instead. No torch here.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Optional

_state: dict = {}

# What the stock-operator graph costs, measured with scripts/profile_loader.py (docs/BENCHMARKS.md).
FALLBACK_COST = ("the CPU train loader then runs at about half the speed (774 vs 1501 img/s with mixing on 2 cores, "
                 "docs/BENCHMARKS.md)")


def _disabled() -> Optional[str]:
    value = os.environ.get("DALIMIX_NATIVE", "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "DALIMIX_NATIVE=0 is set"
    return None


def load() -> bool:
    """Build and load the plugin once; True when the native CPU operators are available."""
    if "cpu" in _state:
        return _state["cpu"]
    _state.update(cpu=False, gpu=False, why="", gpu_why="")
    why = _disabled()
    if why is None:
        try:
            from nvidia.dali import plugin_manager

            from dalimix.native.build import BuildError, build
            cpu_only = os.environ.get("DALIMIX_NATIVE", "").strip().lower() == "cpu"
            built = build(with_cuda=False if cpu_only else None)
            plugin_manager.load_library(str(built.cpu))
            _state["cpu"] = True
            _state["cpu_path"] = str(built.cpu)
            if built.gpu is not None:
                try:
                    plugin_manager.load_library(str(built.gpu))
                    _state["gpu"] = True
                    _state["gpu_path"] = str(built.gpu)
                except RuntimeError as exc:
                    _state["gpu_why"] = f"loading {built.gpu} failed: {exc}"
            else:
                _state["gpu_why"] = "DALIMIX_NATIVE=cpu is set" if cpu_only else built.gpu_note
                if built.nvcc_found and not cpu_only:
                    # nvcc is there and the CUDA part did not build: GPU pipelines would silently run slower.
                    warnings.warn(f"dalimix: the native CUDA operator was not built ({built.gpu_note.splitlines()[0]}); "
                                  f"GPU pipelines use stock DALI operators instead", RuntimeWarning, stacklevel=2)
        except BuildError as exc:
            why = str(exc)
        except (OSError, RuntimeError) as exc:
            why = f"loading the plugin failed: {exc}"
    if why is not None:
        _state["why"] = why
        _state["gpu_why"] = why
        warnings.warn(f"dalimix: native operators unavailable ({why.splitlines()[0]}); using stock DALI "
                      f"operators instead: {FALLBACK_COST}. Install g++ (and nvcc for GPUs) to get them.",
                      RuntimeWarning, stacklevel=2)
    return _state["cpu"]


def library_path() -> Optional[str]:
    """The loaded CPU library's file (after `load()`), or None."""
    return _state.get("cpu_path") if load() else None


def _probe_gpu(device_id: int) -> str:
    """"" when the CUDA kernels can run on GPU `device_id`, else why not (asked once per device)."""
    probes = _state.setdefault("probes", {})
    if device_id not in probes:
        import ctypes
        msg = ctypes.create_string_buffer(512)
        lib = ctypes.CDLL(_state["gpu_path"])
        failed = lib.dalimix_cuda_probe(ctypes.c_int(device_id), msg, ctypes.c_int(len(msg)))
        probes[device_id] = msg.value.decode(errors="replace") if failed else ""
        if failed:
            warnings.warn(f"dalimix: the native CUDA operator cannot run on GPU {device_id} ({probes[device_id]}); "
                          f"GPU pipelines use stock DALI operators instead.", RuntimeWarning, stacklevel=3)
    return probes[device_id]


def _gpu(device_id: Optional[int]) -> int:
    """The GPU meant when none is named: the pipeline being defined's, else this rank's (LOCAL_RANK), else 0."""
    if device_id is not None:
        return int(device_id)
    from nvidia.dali.pipeline import Pipeline

    current = Pipeline.current()
    if current is not None and current.device_id is not None:
        return int(current.device_id)
    return int(os.environ.get("LOCAL_RANK", 0))


def available(device: str = "cpu", device_id: Optional[int] = None) -> bool:
    """Whether the native operators run on `device` ("cpu" or "gpu"). On the GPU, CUDA is asked whether the
    kernel runs on GPU `device_id` (default: the pipeline being defined's, else this rank's), once per GPU."""
    load()
    if _forced_off:
        return False
    if device != "gpu":
        return bool(_state["cpu"])
    if not _state["gpu"]:
        return False
    return _probe_gpu(_gpu(device_id)) == ""


def why_unavailable(device: str = "cpu", device_id: Optional[int] = None) -> str:
    """Why the native operators do not run on `device` (on the GPU: GPU `device_id`, as `available` picks
    it); "" when they do."""
    load()
    if _forced_off:
        return "switched off by dalimix.native.stock_operators()"
    if device != "gpu":
        return _state["why"]
    if not _state["gpu"]:
        return _state["gpu_why"]
    return _probe_gpu(_gpu(device_id))


_forced_off = False


@contextlib.contextmanager
def stock_operators() -> Iterator[None]:
    """Graphs defined inside this block use stock DALI operators, as where no compiler is found: for
    comparing the two paths (tests, the profiler). Only graph definition needs to happen inside."""
    global _forced_off
    before, _forced_off = _forced_off, True
    try:
        yield
    finally:
        _forced_off = before
