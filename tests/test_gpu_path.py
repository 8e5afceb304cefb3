"""The GPU path's logic, checked on the CPU: which kernel code nvcc is asked for, when a failed CUDA build is
tried again, what a failed probe for the pipeline's GPU changes (mixing falls back to stock operators and
says why), which errors make the loader look for a bad file, one visible GPU per process, and separate
prefetch queues. Fakes stand in for CUDA's and nvcc's answers; the kernel's arithmetic itself is checked
through the host emulator in tests/test_native.py, and on a GPU box by `make gpu-check`."""
from __future__ import annotations

import os
import shutil
import stat
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def

import dalimix.ops  # noqa: F401  (loads the plugin)
from conftest import make_class_tree
from dalimix import DaliLoader, MixConfig, native
from dalimix.native import build
from dalimix.pipelines.imagenet import train_pipeline


def fake_nvcc(tmp_path: Path, release: str, codes: str | None) -> str:
    """An executable answering `--version` and (when `codes` is given) `--list-gpu-code` like nvcc."""
    script = tmp_path / f"nvcc-{release}"
    listing = f'if [ "$1" = "--list-gpu-code" ]; then printf "{codes}"; exit 0; fi\n' if codes is not None else \
        'if [ "$1" = "--list-gpu-code" ]; then echo "nvcc fatal: Unknown option" >&2; exit 1; fi\n'
    script.write_text("#!/bin/sh\n" + listing + f'echo "Cuda compilation tools, release {release}, V{release}.1"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


# -- 2. the architectures come from the nvcc in use -----------------------------------------------------------
def test_cuda_archs_follow_what_the_nvcc_in_use_builds(tmp_path):
    build.cuda_archs.cache_clear()
    cuda13 = fake_nvcc(tmp_path, "13.0", "sm_75\\nsm_80\\nsm_86\\nsm_87\\nsm_89\\nsm_90\\nsm_100\\nsm_110\\nsm_120\\n")
    assert build.cuda_archs(cuda13) == ["75", "80", "86", "89", "90", "100", "120"]
    cuda124 = fake_nvcc(tmp_path, "12.4", "sm_50\\nsm_75\\nsm_80\\nsm_86\\nsm_89\\nsm_90\\n")
    assert build.cuda_archs(cuda124) == ["75", "80", "86", "89", "90"]  # no sm_100 / sm_120 before 12.8
    old = fake_nvcc(tmp_path, "12.2", None)  # an nvcc that cannot list: judged from its release
    assert build.cuda_archs(old) == ["75", "80", "86", "89", "90"]
    tc = build.find_toolchain()
    tc.nvcc = cuda124
    flags = " ".join(build.nvcc_flags(tc))
    assert "code=sm_80" in flags and "code=sm_90" in flags and "sm_100" not in flags and "sm_120" not in flags
    assert flags.endswith("arch=compute_90,code=compute_90")  # PTX of the newest, for GPUs that come later
    build.cuda_archs.cache_clear()


def test_the_build_key_covers_every_source_and_header(tmp_path, monkeypatch):
    """An edit to any file the plugin is compiled from, a new header included, must build it again."""
    tc = build.find_toolchain()
    if tc.cxx is None:
        pytest.skip("needs g++")
    src = tmp_path / "src"
    shutil.copytree(build.SRC, src)
    monkeypatch.setattr(build, "SRC", src)
    before = build.build_key(tc, with_cuda=False)
    (src / "a_new_header.h").write_text("// included by a source from now on\n")
    with_new = build.build_key(tc, with_cuda=False)
    assert with_new != before
    for name in sorted(p.name for p in src.glob("*.h")) + list(build.CPU_SOURCES):
        text = (src / name).read_text()
        (src / name).write_text(text + "\n// edited\n")
        assert build.build_key(tc, with_cuda=False) != with_new, name
        (src / name).write_text(text)
    assert build.build_key(tc, with_cuda=False) == with_new


# -- 4. a failed CUDA build is tried again -------------------------------------------------------------------
def test_a_failed_cuda_build_is_said_and_tried_again(tmp_path, monkeypatch):
    tc = build.find_toolchain()
    if tc.nvcc is None or tc.cxx is None:
        pytest.skip("needs g++ and nvcc to build the CPU part and ask for the CUDA part")
    # The CPU library from the real cache, so that only the (faked) CUDA part is built here.
    real = build.build(with_cuda=False)
    key = build.build_key(tc, with_cuda=False)
    cache = tmp_path / "cache"
    (cache / "native" / key).mkdir(parents=True)
    shutil.copy(real.cpu, cache / "native" / key / build.CPU_LIB)
    monkeypatch.setenv("DALIMIX_CACHE", str(cache))
    calls = []

    def failing(tc, out_dir, tmp, final):
        calls.append(final)
        raise build.BuildError("compiling fused_gpu.cu with nvcc failed (exit 1): No space left on device")

    monkeypatch.setattr(build, "_build_gpu", failing)
    first = build.build()
    assert first.gpu is None and "No space left" in first.gpu_note and len(calls) == 1
    again = build.build()  # soon after: not tried again, and the note says when it will be
    assert again.gpu is None and len(calls) == 1
    assert "failed" in again.gpu_note and "No space left" in again.gpu_note and "--rebuild" in again.gpu_note
    build.build(rebuild=True)
    assert len(calls) == 2
    marker = Path(calls[-1]).parent / "FAILED"
    old = time.time() - build.RETRY_FAILED_AFTER - 1
    os.utime(marker, (old, old))
    build.build()  # a later process: tried again
    assert len(calls) == 3


# -- 1. a failed probe for the pipeline's GPU: mixing takes the stock path and says why ----------------------
def _define_gpu_mix(device_id: int):
    @pipeline_def(batch_size=4, num_threads=1, device_id=device_id)
    def graph():
        x = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)] * 4, batch=True, layout="HWC").gpu()
        y = fn.external_source(source=lambda: [np.array(1, np.int32)] * 4, batch=True)
        return dalimix.ops.mix(x, y, MixConfig(num_classes=3), layout="HWC")

    return graph()  # the graph is defined now; nothing runs, so no GPU is needed


def test_mix_asks_about_the_pipelines_gpu_and_falls_back_where_the_kernel_cannot_run(monkeypatch):
    import sys

    mix_module = sys.modules["dalimix.ops.mix"]
    native.load()
    monkeypatch.setitem(native._state, "gpu", True)
    monkeypatch.setitem(native._state, "probes", {0: "", 1: "CUDA cannot run dalimix's kernel on GPU 1 (fake)"})
    chosen = []
    monkeypatch.setattr(mix_module, "_native_mix", lambda *a, **k: chosen.append("native") or _stub(*a))
    monkeypatch.setattr(mix_module, "_stock_mix", lambda *a, **k: chosen.append("stock") or _stub(*a))
    _define_gpu_mix(0)
    _define_gpu_mix(1)
    assert chosen == ["native", "stock"]
    assert native.available("gpu", 0) and not native.available("gpu", 1)
    assert native.why_unavailable("gpu", 1) == "CUDA cannot run dalimix's kernel on GPU 1 (fake)"
    assert native.why_unavailable("gpu", 0) == ""


def _stub(images, labels, config, *rest):
    from nvidia.dali import types

    return images, fn.cast(labels, dtype=types.FLOAT), labels


def test_a_real_failed_probe_names_the_reason():
    """On a machine without a usable GPU the probe answers, once, why; nothing pretends the kernel runs."""
    native.load()
    if not native._state.get("gpu"):
        pytest.skip(f"the CUDA part is not built here: {native.why_unavailable('gpu')}")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the probe succeeds here (checked by make gpu-check)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not native.available("gpu", 0)
    assert "CUDA" in native.why_unavailable("gpu", 0)


# -- 6. only decode failures make the loader look for a bad file --------------------------------------------------
def test_only_decode_failures_are_traced_to_files():
    from dalimix.loader import _is_decode_failure

    decode = ("Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image_random_crop`,\n"
              "encountered:\n\nnvImageCodec failure: '#3'")
    assert _is_decode_failure(RuntimeError(decode))
    for cuda in ("Error in MIXED operator `nvidia.dali.fn.decoders.image_random_crop`: CUDA error: "
                 "cudaErrorInsufficientDriver", "dalimix.resample_mix (GPU): launching the kernel failed: "
                 "cudaErrorIllegalAddress: an illegal memory access was encountered", "CUDA runtime API error: out of "
                 "memory"):
        assert not _is_decode_failure(RuntimeError(cuda))


def test_a_cuda_error_reaches_the_user_as_it_is(tmp_path, monkeypatch):
    from dalimix.data import dataset

    root = make_class_tree(tmp_path / "d", [4, 4])
    loader = DaliLoader(train_pipeline(root, batch_size=4, crop=16, device="cpu", num_threads=1))
    monkeypatch.setattr(dataset, "find_undecodable", lambda *a, **k: pytest.fail("searched for bad files"))
    error = RuntimeError("Error in GPU operator `nvidia.dali.fn.dalimix.resample_mix`: cudaErrorIllegalAddress")
    assert loader._explain(error) is error


# -- 7. one visible GPU per process --------------------------------------------------------------------------------
def test_local_rank_on_a_launcher_that_shows_each_process_one_gpu(monkeypatch):
    from dalimix.train import distributed

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.init_distributed("gpu").device == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert distributed.init_distributed("gpu").device == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3 but only 2 CUDA device"):
        distributed.init_distributed("gpu")


# -- 9. separate CPU/GPU prefetch queues -------------------------------------------------------------------------
def test_separate_prefetch_queues_build_without_dali_checkpoints(tmp_path):
    root = make_class_tree(tmp_path / "d", [4, 4])
    spec = train_pipeline(root, batch_size=4, crop=16, device="cpu", num_threads=1,
                          prefetch_queue_depth={"cpu_size": 2, "gpu_size": 2}, mix=MixConfig())
    assert not spec.checkpointing
    loader = DaliLoader(spec)
    assert sum(x.shape[0] for x, _ in loader) == 8
    with pytest.raises(ValueError, match="without DALI checkpointing"):
        loader.checkpoint()
    with pytest.raises(ValueError, match="prefetch_queue_depth as a dict"):
        train_pipeline(root, batch_size=4, device="cpu", prefetch_queue_depth={"cpu_size": 2, "gpu_size": 2},
                       checkpoint=b"state")


# -- make gpu-check ---------------------------------------------------------------------------------------------------
def test_gpu_check_report_says_each_step_and_its_figures():
    from dalimix.tools.gpu_check import report_text

    result = {"machine": "box", "device": "gpu", "seconds": 300.0, "steps": [
        {"name": "pytest -m gpu", "status": "ok", "seconds": 40.0, "summary": "60 passed in 38.1s"},
        {"name": "compute-sanitizer memcheck", "status": "failed", "seconds": 60.0,
         "error_summary": "========= ERROR SUMMARY: 2 errors"},
        {"name": "profiler", "status": "ok", "seconds": 80.0, "images_per_sec": {"mix_on": 9000.0}},
        {"name": "training epoch", "status": "failed", "seconds": 5.0, "error": "RuntimeError: the training epoch "
                                                                               "failed"}]}
    text = report_text(result)
    assert "60 passed" in text and "ERROR SUMMARY: 2 errors" in text and "mix_on 9000 img/s" in text
    assert "failed  training epoch" in text and "the training epoch failed" in text


def test_gpu_check_refuses_a_box_without_a_gpu(tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check runs for real")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "torch sees no CUDA GPU" in (tmp_path / "gpu_check.txt").read_text()
