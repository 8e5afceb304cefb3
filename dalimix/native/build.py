"""Compiling dalimix's DALI plugin against the installed DALI, into a cache keyed by what it depends on.

Built on first use rather than at `pip install` time because the plugin must match the DALI wheel that is
installed *now* (a pip build environment does not have it, and a DALI upgrade must trigger a rebuild):
the cache key hashes the sources, the compile flags, the DALI version and the compiler's version, so a
change of any of them builds afresh, and concurrent ranks of one run build once (a file lock).

`python -m dalimix.native.build` builds (or finds) the libraries and prints where they are.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SRC = Path(__file__).resolve().parent / "src"
CPU_SOURCES = ("fused_args.cc", "fused_cpu.cc", "fused_gpu_emulator.cc", "mix_params.cc", "erase_params.cc",
               "parse_label.cc", "policy_program.cc", "policy_apply_cpu.cc", "file_check.cc")
# Targets must equal NumPy's float32 arithmetic, programs Python's and policies Pillow's, bit for bit: no
# fused multiply-add there.
EXACT_SOURCES = ("mix_params.cc", "erase_params.cc", "policy_program.cc", "policy_apply_cpu.cc")
GPU_SOURCES = ("fused_gpu.cu", "policy_apply_gpu.cu")
EXACT_GPU_SOURCES = ("policy_apply_gpu.cu",)
CPU_LIB = "libdalimix_ops.so"
GPU_LIB = "libdalimix_ops_cuda.so"
# SASS for these GPUs where the nvcc in use can build it (always sm_80 and sm_90: A100, H100), plus PTX of
# the newest for what comes later.
CUDA_ARCHS = ("75", "80", "86", "89", "90", "100", "120")
# How long a failed CUDA build stays failed before a new process tries again (seconds).
RETRY_FAILED_AFTER = 600


class BuildError(RuntimeError):
    """The plugin could not be compiled; the message says which step and why."""


@dataclass
class Toolchain:
    cxx: Optional[str]
    nvcc: Optional[str]
    cuda_include: Optional[str]
    dali_version: str
    dali_cflags: list[str]
    dali_ldflags: list[str]
    dali_lib_dir: str
    notes: list[str] = field(default_factory=list)


def cache_root() -> Path:
    env = os.environ.get("DALIMIX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dalimix"


def _which(*names: str) -> Optional[str]:
    for name in names:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cuda_home_candidates() -> list[Path]:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(h) for h in homes if h]


def find_toolchain() -> Toolchain:
    import nvidia.dali as dali
    import nvidia.dali.sysconfig as sysconfig

    cxx = _which(os.environ.get("CXX", ""), "g++", "c++", "clang++")
    nvcc = _which(os.environ.get("NVCC", ""), "nvcc")
    if nvcc is None:
        nvcc = next((str(h / "bin" / "nvcc") for h in _cuda_home_candidates() if (h / "bin" / "nvcc").is_file()),
                    None)
    # DALI's headers include cuda_runtime.h: from a toolkit, or from the CUDA pip packages.
    include = None
    candidates = [h / "include" for h in _cuda_home_candidates()]
    nvidia_dir = Path(dali.__file__).resolve().parent.parent
    candidates += sorted(nvidia_dir.glob("cu*/include")) + sorted(nvidia_dir.glob("cuda_runtime/include"))
    for cand in candidates:
        if (cand / "cuda_runtime.h").is_file():
            include = str(cand)
            break
    return Toolchain(cxx=cxx, nvcc=nvcc, cuda_include=include, dali_version=dali.__version__,
                     dali_cflags=list(sysconfig.get_compile_flags()), dali_ldflags=list(sysconfig.get_link_flags()),
                     dali_lib_dir=sysconfig.get_lib_dir())


def _version_of(tool: Optional[str]) -> str:
    if tool is None:
        return "none"
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_flags() -> str:
    """The CPU's instruction-set flags: the cache key includes them since the build uses -march=native."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.machine()


def cxx_flags(tc: Toolchain) -> list[str]:
    flags = ["-std=c++17", "-O3", "-march=native", "-fPIC", "-DNDEBUG", "-w"] + tc.dali_cflags
    if tc.cuda_include:
        flags.append(f"-I{tc.cuda_include}")
    return flags


def _nvcc_release(text: str) -> tuple[int, int]:
    import re

    m = re.search(r"release (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@functools.lru_cache(maxsize=None)
def cuda_archs(nvcc: str) -> list[str]:
    """The architectures of `CUDA_ARCHS` this nvcc builds SASS for: asked of nvcc (`--list-gpu-code`), else
    judged from its release (sm_100 / sm_120 need CUDA 12.8)."""
    import re

    try:
        listed = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60).stdout
        codes = set(re.findall(r"sm_(\d+)", listed))
    except (OSError, subprocess.SubprocessError):
        codes = set()
    if not codes:
        release = _nvcc_release(_version_of(nvcc))
        codes = {a for a in CUDA_ARCHS if int(a) < 100 or release >= (12, 8)}
    return [a for a in CUDA_ARCHS if a in codes]


def nvcc_flags(tc: Toolchain) -> list[str]:
    flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-DNDEBUG", "-w", "--expt-relaxed-constexpr",
             "-cudart", "static"]
    flags += [f for f in tc.dali_cflags]
    if tc.cuda_include:
        flags.append(f"-I{tc.cuda_include}")
    archs = cuda_archs(tc.nvcc) if tc.nvcc else list(CUDA_ARCHS)
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags


def build_key(tc: Toolchain, with_cuda: bool) -> str:
    h = hashlib.sha256()
    headers = tuple(sorted(p.name for p in SRC.glob("*.h")))  # every header: a new one must rebuild too
    for name in CPU_SOURCES + headers + (GPU_SOURCES if with_cuda else ()):
        h.update(name.encode())
        h.update((SRC / name).read_bytes())
    h.update(" ".join(cxx_flags(tc)).encode())
    h.update(_version_of(tc.cxx).encode())
    h.update(_cpu_flags().encode())
    h.update(tc.dali_version.encode())
    if with_cuda:
        h.update(" ".join(nvcc_flags(tc)).encode())
        h.update(_version_of(tc.nvcc).encode())
    return f"dali{tc.dali_version}-{h.hexdigest()[:16]}"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n{tail}")


def _link_flags(tc: Toolchain) -> list[str]:
    return tc.dali_ldflags + [f"-Wl,-rpath,{tc.dali_lib_dir}"]


def _build_cpu(tc: Toolchain, out_dir: Path, tmp: Path) -> Path:
    if tc.cxx is None:
        raise BuildError("no C++ compiler found (looked for $CXX, g++, c++, clang++)")
    if tc.cuda_include is None:
        raise BuildError("DALI's headers need cuda_runtime.h, found neither under $CUDA_HOME, /usr/local/cuda "
                         "nor in the nvidia CUDA pip packages")

    def compile_one(name: str) -> Path:
        obj = tmp / (name + ".o")
        extra = ["-ffp-contract=off"] if name in EXACT_SOURCES else []
        _run([tc.cxx, *cxx_flags(tc), *extra, "-c", str(SRC / name), "-o", str(obj)], f"compiling {name}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(CPU_SOURCES), os.cpu_count() or 1))) as pool:
        objs = list(pool.map(compile_one, CPU_SOURCES))
    lib = tmp / CPU_LIB
    _run([tc.cxx, "-shared", "-o", str(lib), *map(str, objs), *_link_flags(tc)], f"linking {CPU_LIB}")
    final = out_dir / CPU_LIB
    os.replace(lib, final)
    return final


def _build_gpu(tc: Toolchain, out_dir: Path, tmp: Path, final: Path) -> Path:
    assert tc.nvcc is not None
    def compile_one(name: str) -> Path:
        obj = tmp / (name + ".o")
        extra = ["-fmad=false"] if name in EXACT_GPU_SOURCES else []
        _run([tc.nvcc, *nvcc_flags(tc), *extra, "-c", str(SRC / name), "-o", str(obj)], f"compiling {name} with nvcc")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(GPU_SOURCES), os.cpu_count() or 1))) as pool:
        objs = list(pool.map(compile_one, GPU_SOURCES))
    lib = tmp / GPU_LIB
    # Linked against the CPU library, which defines the operator schemas the GPU backend attaches to.
    _run([tc.nvcc, "-shared", "-cudart", "static", "-o", str(lib), *map(str, objs),
          f"-L{out_dir}", "-l:" + CPU_LIB, "-Xlinker", f"-rpath,{out_dir}", *tc.dali_ldflags, "-ldali_core",
          "-Xlinker", f"-rpath,{tc.dali_lib_dir}"], f"linking {GPU_LIB}")
    os.replace(lib, final)
    return final


@dataclass
class Built:
    cpu: Path
    gpu: Optional[Path]
    gpu_note: str
    nvcc_found: bool = False


def _failed_note(marker: Path, rebuild: bool) -> Optional[str]:
    """Why the CUDA part is not built now, when an earlier attempt failed recently (None: try again)."""
    if not marker.is_file():
        return None
    age = time.time() - marker.stat().st_mtime
    if rebuild or age >= RETRY_FAILED_AFTER:
        marker.unlink(missing_ok=True)
        return None
    reason = marker.read_text().strip().splitlines()
    return (f"the CUDA build failed {age:.0f} s ago ({reason[0] if reason else 'no reason recorded'}); a new process "
            f"tries again after {RETRY_FAILED_AFTER // 60} minutes, or now with `python -m dalimix.native.build "
            f"--rebuild` (which prints the whole error)")


def build(verbose: bool = False, with_cuda: Optional[bool] = None, rebuild: bool = False) -> Built:
    """Build (or find in the cache) the CPU plugin and, where nvcc is found, its CUDA part. A CUDA build that
    failed is tried again by a later process (after `RETRY_FAILED_AFTER` seconds, or at once with `rebuild`)."""
    tc = find_toolchain()
    want_cuda = tc.nvcc is not None if with_cuda is None else with_cuda and tc.nvcc is not None
    cpu_key = build_key(tc, with_cuda=False)
    root = cache_root() / "native"
    out_dir = root / cpu_key
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{cpu_key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out_dir.mkdir(exist_ok=True)
        cpu = out_dir / CPU_LIB
        if not cpu.is_file():
            if verbose or sys.stderr.isatty():
                print("dalimix: compiling the native DALI operators (once per DALI version)...", file=sys.stderr)
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                _build_cpu(tc, out_dir, Path(tmp))
        gpu: Optional[Path] = None
        if tc.nvcc is None:
            note = "no CUDA compiler (nvcc) found on PATH, $CUDA_HOME or /usr/local/cuda"
        elif not want_cuda:
            note = "CUDA build not requested"
        else:
            gpu_key = build_key(tc, with_cuda=True)
            gpu = out_dir / f"cuda-{gpu_key.rsplit('-', 1)[1]}" / GPU_LIB
            failed = gpu.parent / "FAILED"
            note = "built with " + tc.nvcc
            recent = _failed_note(failed, rebuild)
            if recent is not None:
                note, gpu = recent, None
            elif not gpu.is_file():
                gpu.parent.mkdir(exist_ok=True)
                if verbose or sys.stderr.isatty():
                    print("dalimix: compiling the CUDA operators with nvcc (once)...", file=sys.stderr)
                try:
                    with tempfile.TemporaryDirectory(dir=gpu.parent) as tmp:
                        _build_gpu(tc, out_dir, Path(tmp), gpu)
                except BuildError as exc:
                    note = str(exc)
                    failed.write_text(note)
                    gpu = None
        _prune(root, keep=out_dir)
        return Built(cpu=cpu, gpu=gpu, gpu_note=note, nvcc_found=want_cuda)


def _prune(root: Path, keep: Path, newest: int = 4) -> None:
    """Remove all but the `newest` builds (by time of use) besides `keep`: every source edit or DALI upgrade
    makes a new one. A process that has an old library loaded keeps its mapping."""
    os.utime(keep)
    builds = sorted((d for d in root.iterdir() if d.is_dir() and d != keep), key=lambda d: d.stat().st_mtime,
                    reverse=True)
    for old in builds[max(0, newest - 1):]:
        shutil.rmtree(old, ignore_errors=True)
        try:
            (root / f"{old.name}.lock").unlink()
        except OSError:
            pass


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dalimix.native.build", description="Build (or find) dalimix's DALI "
                                "plugin for the installed DALI.")
    p.add_argument("--rebuild", action="store_true", help="try the CUDA part again even if it failed recently")
    a = p.parse_args(argv)
    try:
        built = build(verbose=True, rebuild=a.rebuild)
    except BuildError as exc:
        print(f"dalimix: native build failed: {exc}", file=sys.stderr)
        return 1
    print(f"CPU operators:  {built.cpu}")
    print(f"CUDA operators: {built.gpu if built.gpu else 'not built: ' + built.gpu_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
