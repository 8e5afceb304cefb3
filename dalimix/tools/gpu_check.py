"""One command that verifies a GPU box (`make gpu-check`, `python scripts/gpu_check.py`).

On a machine with a GPU and no network it runs, each step in its own process and within its own time limit:
the plugin build (the CUDA part included) and the probe of every GPU; `pytest -m gpu`; the fused operator
under `compute-sanitizer --tool memcheck` where the tool is found; the fallback where the CUDA operator
is missing but the CPU one is there (`DALIMIX_NATIVE=cpu`, the situation of a failed probe); the profiler
with `--device gpu` for a short budget (decode-only, mixing off and on, the model's step rate); and one
short training epoch with its input wait. Everything measured goes to `gpu_check.json` and a short
`gpu_check.txt` in `--out`. `--device cpu` runs the same steps on the CPU (without the GPU-only ones), to
check the command itself where there is no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TAR = ROOT.parent / "shared" / "data" / "imagenet-sample.tar"

SANITIZED = """
import numpy as np
from nvidia.dali import fn, pipeline_def, types
import dalimix.ops
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (h, w, c)).astype(np.uint8) for h, w, c in
          ((37, 53, 3), (64, 48, 1), (101, 99, 3), (24, 24, 3), (16, 301, 1), (5, 7, 3))]
n = len(images)
params = dict(partner=np.array([2, 4, 0, 5, 1, 3], np.int32), kind=np.array([1, 0, 2, 1, 0, 2], np.int32),
              weight=np.full(n, 0.3, np.float32), mirror=np.array([1, 0, 1, 0, 1, 0], np.int32),
              box=np.tile(np.array([2, 3, 20, 19], np.int32), (n, 1)),
              erase=np.tile(np.array([1, 1, 9, 9, 4, 2, 30, 30], np.int32), (n, 1)),
              erase_seed=np.arange(n, dtype=np.int32))
for before in (False, True):
    for dtype in (types.FLOAT, types.FLOAT16, types.UINT8):
        @pipeline_def(batch_size=n, num_threads=2, device_id=0)
        def pipe():
            x = fn.external_source(source=lambda: images, batch=True, layout="HWC").gpu()
            args = {k: fn.external_source(source=lambda v=v: list(v), batch=True) for k, v in params.items()}
            return fn.dalimix.resample_mix(x, device="gpu", size=[31, 24], dtype=dtype, erase_mode=2,
                                           erase_before=before, mean=[120.0], std=[60.0], **args)
        p = pipe()
        p.build()
        for _ in range(3):
            p.run()
print("sanitized run done")
"""

FALLBACK = """
import dalimix.native as native
from dalimix import DaliLoader, MixConfig, train_pipeline
loader = DaliLoader(train_pipeline({data!r}, batch_size=32, crop=128, device={device!r}, num_threads=2, seed=0,
                                   mix=MixConfig(), re_prob=0.25, re_mode="pixel", max_batches_per_epoch=4))
batches = [x.shape[0] for x, _ in loader]
print("path:", loader.spec.settings)
print("batches:", batches)
assert batches and all(b == 32 for b in batches)
"""


class Step:
    """One step of the check: its status ("ok", "failed", "skipped"), time, and what it found."""

    def __init__(self, name: str):
        self.name, self.status, self.seconds, self.details = name, "skipped", 0.0, {}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 1), **self.details}


def _run(cmd: Sequence[str], *, timeout: float, env: Optional[dict] = None, cwd: Optional[Path] = None) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(cwd or ROOT))
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = 124, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout:.0f} s"
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    return {"returncode": code, "seconds": round(time.perf_counter() - t0, 1), "stdout_tail": out[-3000:],
            "stderr_tail": err[-3000:]}


def _step(steps: list[Step], name: str, fn: Callable[[Step], None]) -> Step:
    step = Step(name)
    t0 = time.perf_counter()
    try:
        fn(step)
    except Exception as exc:  # noqa: BLE001 - a failing step is reported, the others still run
        step.status, step.details["error"] = "failed", f"{type(exc).__name__}: {exc}"
    step.seconds = time.perf_counter() - t0
    steps.append(step)
    print(f"[{step.status:>7}] {name} ({step.seconds:.0f} s)", flush=True)
    return step


def _data(arg: Optional[str], scratch: Path) -> Path:
    """A dataset root holding train/ and val/: the one given, the shared ImageNet sample, or a generated one."""
    if arg:
        return Path(arg)
    if SAMPLE_TAR.is_file():
        with tarfile.open(SAMPLE_TAR) as tar:
            tar.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        root = scratch / "imagenet-sample"
        if not (root / "val").exists():
            (root / "val").symlink_to(root / "train")
        return root
    from dalimix.data.synthetic import make_dataset

    return make_dataset(scratch / "synthetic", train_per_class=64, val_per_class=16,
                        sizes=((320, 240), (500, 375), (256, 256)))


def _environment(step: Step, device: str) -> None:
    import torch
    from nvidia import dali

    step.details.update(python=platform.python_version(), torch=torch.__version__, dali=dali.__version__,
                        cuda_available=torch.cuda.is_available(), machine=platform.machine())
    if torch.cuda.is_available():
        step.details["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    smi = shutil.which("nvidia-smi")
    if smi:
        step.details["nvidia_smi"] = _run([smi, "--query-gpu=name,driver_version,memory.total",
                                           "--format=csv,noheader"], timeout=60)["stdout_tail"].strip()
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU; run with --device cpu to check the command itself")
    step.status = "ok"


def _build(step: Step, device: str) -> None:
    result = _run([sys.executable, "-m", "dalimix.native.build", "--rebuild"], timeout=600)
    step.details["build"] = result
    if result["returncode"] != 0:
        raise RuntimeError("the plugin did not build: " + result["stderr_tail"][-500:])
    import torch

    from dalimix import native

    probes = {}
    for i in range(torch.cuda.device_count()):
        probes[i] = native.why_unavailable("gpu", i) or "ok"
    step.details["probes"] = probes
    step.details["cpu"] = native.why_unavailable("cpu") or "ok"
    if device == "gpu" and any(v != "ok" for v in probes.values()):
        raise RuntimeError(f"the CUDA operator cannot run: {probes}")
    step.status = "ok"


def _pytest_gpu(step: Step) -> None:
    result = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], timeout=300)
    lines = [line for line in result["stdout_tail"].splitlines() if " passed" in line or " failed" in line]
    step.details.update(summary=lines[-1] if lines else "", returncode=result["returncode"],
                        output_tail=result["stdout_tail"][-2000:])
    step.status = "ok" if result["returncode"] == 0 else "failed"


def _sanitizer(step: Step) -> None:
    tool = shutil.which("compute-sanitizer") or next((str(p) for p in (Path("/usr/local/cuda/bin/compute-sanitizer"),)
                                                       if p.exists()), None)
    if tool is None:
        step.details["note"] = "compute-sanitizer not found (it comes with the CUDA toolkit)"
        return
    result = _run([tool, "--tool", "memcheck", "--error-exitcode", "99", "--target-processes", "all",
                   sys.executable, "-c", SANITIZED], timeout=300)
    errors = [line for line in result["stdout_tail"].splitlines() if "ERROR SUMMARY" in line]
    step.details.update(error_summary=errors[-1] if errors else "", returncode=result["returncode"],
                        output_tail=(result["stdout_tail"] + result["stderr_tail"])[-2000:])
    step.status = "ok" if result["returncode"] == 0 else "failed"


def _fallback(step: Step, data: Path, device: str) -> None:
    env = dict(os.environ, DALIMIX_NATIVE="cpu")
    result = _run([sys.executable, "-c", FALLBACK.format(data=str(data / "train"), device=device)], timeout=300,
                  env=env)
    step.details.update(result)
    step.status = "ok" if result["returncode"] == 0 else "failed"


def _profile(step: Step, data: Path, device: str, scratch: Path, threads: int) -> None:
    out = scratch / "profile.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "profile_loader.py"), "--data", str(data / "train"), "--device",
           device, "--threads", str(threads), "--batch-size", "64", "--crop", "224", "--seconds", "4", "--repeats",
           "2", "--warmup", "2", "--no-stages", "--no-stock", "--no-torchvision", "--json", str(out)]
    if device == "gpu":
        cmd += ["--memory-epochs", "1"]
    else:
        cmd += ["--model-step"]
    result = _run(cmd, timeout=360)
    step.details["returncode"] = result["returncode"]
    if result["returncode"] != 0:
        step.details["stderr_tail"] = result["stderr_tail"]
        raise RuntimeError("the profiler failed")
    report = json.loads(out.read_text())
    step.details.update(images_per_sec={k: round(v["images_per_sec"], 1) for k, v in report["results"].items()},
                        ratios=report["ratios"], verdict=report.get("verdict"), decoder=report.get("decoder"),
                        gpu_memory=report.get("gpu_memory"))
    step.status = "ok"


def _train(step: Step, data: Path, device: str, scratch: Path, threads: int) -> None:
    out = scratch / "train"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_imagenet.py"), "--data", str(data), "--device", device,
           "--arch", "resnet18" if device == "cpu" else "resnet50", "--epochs", "1", "--batch-size",
           "32" if device == "cpu" else "128", "--crop", "128" if device == "cpu" else "224", "--threads",
           str(threads), "--max-steps-per-epoch", "6" if device == "cpu" else "40", "--max-val-steps", "2",
           "--mixup-alpha", "0.8", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--re-prob", "0.25",
           "--output", str(out), "--no-progress", "--seed", "0"]
    if device == "gpu":
        cmd += ["--amp", "--channels-last"]
    result = _run(cmd, timeout=420)
    step.details["returncode"] = result["returncode"]
    if result["returncode"] != 0:
        step.details["stderr_tail"] = result["stderr_tail"]
        raise RuntimeError("the training epoch failed")
    summary = json.loads((out / "summary.json").read_text())
    step.details.update({k: summary.get(k) for k in ("images_per_sec", "input_wait", "input_wait_max",
                                                      "input_wait_method", "final_val_top1", "wall_time")})
    step.status = "ok"


def report_text(result: dict) -> str:
    """The short text report: each step's status and the figures that matter."""
    lines = [f"dalimix gpu-check on {result['machine']} ({result['device']}), {result['seconds']:.0f} s in all"]
    for s in result["steps"]:
        extra = ""
        if s["name"] == "pytest -m gpu":
            extra = s.get("summary", "")
        elif s["name"] == "compute-sanitizer memcheck":
            extra = s.get("error_summary") or s.get("note", "")
        elif s["name"] == "profiler" and s["status"] == "ok":
            extra = ", ".join(f"{k} {v:.0f}" for k, v in s["images_per_sec"].items()) + " img/s"
        elif s["name"] == "training epoch" and s["status"] == "ok":
            wait = s.get("input_wait")
            extra = f"{s.get('images_per_sec') or 0:.0f} img/s, input wait " + (f"{wait:.0%}" if wait is not None
                                                                                  else "n/a")
        elif s["name"] == "plugin build and probe":
            extra = f"probes {s.get('probes')}"
        if s["status"] == "failed" and "error" in s:
            extra = s["error"]
        lines.append(f"  {s['status']:>7}  {s['name']:<36} {s['seconds']:>5.0f} s  {extra}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu-check", help="where gpu_check.json and gpu_check.txt go")
    p.add_argument("--data", default=None, help="a dataset root with train/ and val/ (default: ../shared/data's "
                                                "ImageNet sample, else a generated one)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="cpu: run the same steps on the CPU, to check the command where there is no GPU")
    p.add_argument("--threads", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)), help="DALI threads")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="dalimix-gpu-check-") as tmp:
        scratch = Path(tmp)
        env_step = _step(steps, "environment", lambda s: _environment(s, a.device))
        if env_step.status == "ok":
            data = _data(a.data, scratch)
            _step(steps, "plugin build and probe", lambda s: _build(s, a.device))
            if a.device == "gpu":
                _step(steps, "pytest -m gpu", _pytest_gpu)
                _step(steps, "compute-sanitizer memcheck", _sanitizer)
            _step(steps, "fallback without the CUDA operator", lambda s: _fallback(s, data, a.device))
            _step(steps, "profiler", lambda s: _profile(s, data, a.device, scratch, a.threads))
            _step(steps, "training epoch", lambda s: _train(s, data, a.device, scratch, a.threads))
    result = {"device": a.device, "machine": platform.node(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "seconds": time.perf_counter() - t0, "steps": [s.as_dict() for s in steps]}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report_text(result)
    (out / "gpu_check.txt").write_text(text)
    print("\n" + text + f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.txt'}")
    return 0 if all(s.status != "failed" for s in steps) else 1
