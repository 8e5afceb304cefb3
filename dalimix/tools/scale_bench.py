"""ImageNet-scale start-up and read figures (`scripts/bench_scale.py`): a generated tree of N small JPEGs in
1000 class folders; listing and the up-front check on a first and a second start, for 1 and R ranks of one
node (separate processes, as torchrun starts them), each rank's peak memory; `train_pipeline(...)` until it
returns; the folder source's read ceiling with 1, 4 and 16 reads in flight, on the local disk and with a
simulated per-file latency; torchvision's ImageFolder and DALI's file reader beside them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

CLASSES = 1000


def make_tree(root: Path, n: int) -> Path:
    """`root` holding `n` small JPEGs in 1000 class folders (kept when it already holds exactly that)."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return root
    from io import BytesIO

    from PIL import Image

    samples = []
    rng = np.random.default_rng(0)
    for _ in range(8):
        buf = BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        samples.append(buf.getvalue())
    for c in range(CLASSES):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(c, n, CLASSES):
            with open(folder / f"img_{j:08d}.JPEG", "wb") as fh:
                fh.write(samples[j % len(samples)])
    marker.write_text(str(n))
    return root


_RANK = r"""
import json, os, resource, sys, time
kind, root = sys.argv[1], sys.argv[2]
from dalimix.data.dataset import scan_folder, sniff_problem
if kind == "old_check":
    from concurrent.futures import ThreadPoolExecutor
elif kind == "imagefolder":
    import torchvision
elif kind == "dali_reader":
    from nvidia.dali import fn, pipeline_def
elif kind == "train_pipeline":
    from dalimix import native, train_pipeline
    native.load()
t = time.perf_counter()  # imports apart: what a start costs beyond them
if kind == "scan":
    n = len(scan_folder(root).files)
elif kind == "scan_noverify":
    n = len(scan_folder(root, verify=False).files)
elif kind == "old_check":
    files = scan_folder(root, verify=False).files
    with ThreadPoolExecutor(max_workers=8) as pool:  # the check before this change: a task per file
        n = sum(p is None for p in pool.map(sniff_problem, files, chunksize=256))
elif kind == "imagefolder":
    n = len(torchvision.datasets.ImageFolder(root).samples)
elif kind == "dali_reader":
    @pipeline_def(batch_size=64, num_threads=1, device_id=None)
    def p():
        return tuple(fn.readers.file(file_root=root, name="r"))
    pipe = p(); pipe.build(); n = pipe.epoch_size("r")
elif kind == "train_pipeline":
    n = len(train_pipeline(root, batch_size=64, crop=32, device="cpu", num_threads=1).source.files)
print(json.dumps({"seconds": time.perf_counter() - t, "files": n,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _ranks(kind: str, root: Path, ranks: int, env: Optional[dict] = None) -> dict[str, Any]:
    """`kind` on `ranks` processes started at once; wall seconds until the last one is done."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, kind, str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
             for _ in range(ranks)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {"wall_s": round(time.perf_counter() - t, 2), "per_rank_s": [round(o["seconds"], 2) for o in outs],
            "peak_mib": round(max(o["peak_mib"] for o in outs)), "files": outs[0]["files"]}


def _drop_cache(root: Path) -> None:
    from dalimix.data.check_cache import cache_path
    path = cache_path(str(root))
    path.unlink(missing_ok=True)


def startup(root: Path, ranks: tuple[int, ...], before: bool = True) -> dict[str, Any]:
    """Listing + check on a first start (no cache) and a second start, per rank count; the references."""
    out: dict[str, Any] = {}
    for r in ranks:
        _drop_cache(root)
        out[f"scan_first_start_{r}_ranks"] = _ranks("scan", root, r)
        out[f"scan_second_start_{r}_ranks"] = _ranks("scan", root, r)
    _drop_cache(root)
    out["train_pipeline_first_start"] = _ranks("train_pipeline", root, 1)
    out["train_pipeline_second_start"] = _ranks("train_pipeline", root, 1)
    out["scan_no_verify"] = _ranks("scan_noverify", root, 1)
    if before:
        out["check_before_this_change_1_rank"] = _ranks("old_check", root, 1)
    out["torchvision_imagefolder"] = _ranks("imagefolder", root, 1)
    out["dali_file_reader_build"] = _ranks("dali_reader", root, 1)
    return out


def read_ceiling(root: Path, in_flight: tuple[int, ...], latency_s: float, batches: int = 40) -> dict[str, float]:
    """Files per second the folder source reads, for each number of reads in flight (latency simulated by
    a sleep before each file read)."""
    from dalimix.data.dataset import scan_folder
    from dalimix.data.source import FileSource

    ds = scan_folder(root, verify=False)
    real = np.fromfile
    if latency_s > 0:
        def slow(*args: Any, **kw: Any) -> np.ndarray:
            time.sleep(latency_s)
            return real(*args, **kw)
        np.fromfile = slow
    try:
        rates = {}
        for k in in_flight:  # 0: the default (auto)
            src = FileSource(ds.files, ds.labels, batch_size=64, reads_in_flight=k or None, seed=0)
            src._read(0, 0)
            t, n = time.perf_counter(), 0
            for it in range(1, min(batches, src.batches_per_epoch)):
                n += len(src._read(0, it))
            rates[str(k) if k else "auto"] = round(n / (time.perf_counter() - t))
        return rates
    finally:
        np.fromfile = real


def run(root: Path, n: int, ranks: tuple[int, ...], in_flight: tuple[int, ...], latency_ms: float,
        skip_startup: bool = False, before: bool = True) -> dict[str, Any]:
    t = time.perf_counter()
    make_tree(root, n)
    report: dict[str, Any] = {"files": n, "tree_build_s": round(time.perf_counter() - t, 1)}
    if not skip_startup:
        report["startup"] = startup(root, ranks, before)
    report["read_files_per_s_local"] = read_ceiling(root, in_flight, 0.0)
    report[f"read_files_per_s_{latency_ms:g}ms_latency"] = read_ceiling(root, in_flight, latency_ms / 1000, 12)
    return report
