"""The profiler and the preview script run end to end on a tiny generated tree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dalimix.data.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), train_per_class=8, val_per_class=1,
                        classes=("disc", "square", "stripes", "checks"))


@pytest.mark.slow
def test_profiler_writes_json_and_png(tiny, tmp_path):
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    from dalimix.data.shard_writer import write_shards
    write_shards(tiny / "train", tmp_path / "shards", shard_size=7, progress=False)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--data", str(tiny / "train"),
                           "--shards", str(tmp_path / "shards"),
                           "--device", "cpu", "--batch-size", "8", "--crop", "32", "--threads", "2",
                           "--seconds", "2", "--repeats", "1", "--warmup", "0.3", "--json", str(out_json),
                           "--plot", str(out_png)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    for name in ("decode_only", "mix_off", "mix_on", "torchvision", "torchvision_mix"):
        assert report["results"][name]["images_per_sec"] > 0
    for name in ("mix_on_vs_torchvision", "mix_on_vs_decode_only", "mix_on_vs_mix_off", "mix_on_shards_vs_mix_on",
                 "read_shards_vs_read_folder"):
        assert report["ratios"][name] > 0
    from dalimix import native
    if native.available("cpu"):  # the fused operator: no separate resize; the stock graph measured beside it
        assert report["stages"]["path"] == "native"
        assert set(report["stages"]["ms_per_image"]) == {"read", "decode", "augment", "mix", "copy_to_torch"}
        assert report["ratios"]["mix_on_vs_mix_on_stock"] > 0 and report["results"]["mix_off_stock"]["images_per_sec"] > 0
    else:
        assert set(report["stages"]["ms_per_image"]) == {"read", "decode", "resize", "augment", "mix", "copy_to_torch"}
    assert Image.open(out_png).size[0] > 300
    assert "mix_on_vs_torchvision" in proc.stdout


def test_profiler_flag_errors(tiny):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--data", str(tiny / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_preview_grid(tiny, tmp_path):
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/preview_mix.py"), "--data", str(tiny / "train"),
                           "--out", str(out), "--count", "8", "--crop", "48", "--mode", "pair"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(out).size[0] > 200
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/preview_mix.py"), "--data", str(tiny / "train"),
                          "--out", str(out), "--prob", "3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "prob" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torchvision", "dali"])
def test_torchvision_baseline_one_epoch(tiny, tmp_path, loader):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/train_torchvision_baseline.py"), "--data", str(tiny),
                           "--arch", "resnet18", "--epochs", "1", "--batch-size", "8", "--crop", "32",
                           "--val-resize", "32", "--workers", "1", "--torch-threads", "1", "--loader", loader,
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["history"]) == 1
    assert 0.0 <= summary["final_val_top1"] <= 100.0 and summary["images_per_sec"] > 0
    assert summary["args"]["loader"] == loader


@pytest.mark.parametrize("command", ["dalimix-train", "dalimix-profile", "dalimix-preview", "dalimix-make-shards",
                                     "dalimix-reproduce"])
def test_console_commands_are_installed(command, tmp_path):
    exe = Path(sys.executable).parent / command
    assert exe.exists(), f"{command} is not installed beside {sys.executable} (pip install -e .)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and f"usage: {command}" in proc.stdout
