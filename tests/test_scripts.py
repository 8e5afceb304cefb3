"""The profiler and the preview script run end to end on a tiny generated tree."""
from __future__ import annotations

import argparse
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


@pytest.mark.slow
def test_profiler_runs_the_recipe_on_both_sides(tiny, tmp_path):
    """--aa (and the other recipe flags) go into dalimix's graph and, as timm's own transform and Mixup, into
    the torchvision contenders; the stage breakdown shows the policy."""
    pytest.importorskip("timm")
    out_json = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--data", str(tiny / "train"),
                           "--device", "cpu", "--batch-size", "8", "--crop", "32", "--threads", "2", "--seconds", "1",
                           "--repeats", "1", "--warmup", "0.3", "--no-stock", "--aa", "rand-m9-mstd0.5-inc1",
                           "--interpolation", "bicubic", "--re-prob", "0.25", "--re-mode", "pixel",
                           "--re-order", "before_mix", "--json", str(out_json)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["recipe"] == {"auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "re_prob": 0.25,
                                "re_mode": "pixel", "re_order": "before_mix"}
    assert "timm's create_transform" in report["reference"] and "recipe: auto_augment=" in proc.stdout
    assert report["ratios"]["mix_on_vs_torchvision_mix"] > 0
    from dalimix import native
    if native.available("cpu"):
        assert list(report["stages"]["ms_per_image"]) == ["read", "decode", "policy", "augment", "mix",
                                                          "copy_to_torch"]


def test_the_reference_transform_is_timms_and_survives_posterize_to_zero_bits():
    """timm's own transform for the recipe, whose posterize to 0 bits (inc1 at magnitude 10) gives black as
    timm means instead of Pillow 13's error."""
    pytest.importorskip("timm")
    import numpy as np
    from timm.data.auto_augment import RandAugment
    from dalimix.tools.profiler import reference_transform
    a = argparse.Namespace(aa="rand-m10-inc1", color_jitter=None, interpolation="bicubic", re_prob=0.0,
                           re_mode="pixel", re_order="after_mix", crop=32)
    transform = reference_transform(a)
    rand = next(t for t in transform.transforms if isinstance(t, RandAugment))
    poster = next(op for op in rand.ops if op.name == "PosterizeIncreasing")
    poster.prob, poster.magnitude_std = 1.0, 0.0
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.array(poster(img)).max() == 0


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
    policy = subprocess.run([sys.executable, str(ROOT / "scripts/preview_mix.py"), "--data", str(tiny / "train"),
                             "--out", str(out), "--count", "4", "--crop", "48", "--aa", "ta_wide", "--color-jitter",
                             "0.4", "--interpolation", "random", "--re-prob", "0.5", "--re-order", "before_mix"],
                            capture_output=True, text=True, timeout=300)
    assert policy.returncode == 0, policy.stderr[-3000:]
    wrong = subprocess.run([sys.executable, str(ROOT / "scripts/preview_mix.py"), "--data", str(tiny / "train"),
                            "--out", str(out), "--aa", "rand-q9"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--aa" in wrong.stderr and "rand-m9-mstd0.5-inc1" in wrong.stderr


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


def test_the_torchvision_reference_reads_policy_names_as_dalimix_does():
    """`--aa ra-m7-n3` is torchvision's RandAugment(num_ops=3, magnitude=7) on the reference side too, and
    pixel erasing is torchvision's per-pixel noise."""
    import torchvision.transforms as T
    from dalimix.tools.profiler import reference_transform
    a = argparse.Namespace(aa="ra-m7-n3", color_jitter=None, interpolation="bilinear", re_prob=0.25,
                           re_mode="pixel", re_order="before_mix", crop=32)
    steps = reference_transform(a).transforms
    rand = next(t for t in steps if isinstance(t, T.RandAugment))
    erase = next(t for t in steps if isinstance(t, T.RandomErasing))
    assert (rand.num_ops, rand.magnitude) == (3, 7) and erase.value == "random" and erase.p == 0.25
    a.aa, a.re_mode = "ta_wide", "const"
    steps = reference_transform(a).transforms
    assert any(isinstance(t, T.TrivialAugmentWide) for t in steps)
    assert next(t for t in steps if isinstance(t, T.RandomErasing)).value == 0
