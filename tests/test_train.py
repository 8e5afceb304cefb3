"""The training engine and scripts/train_imagenet.py on a tiny generated dataset, on the CPU.

End to end: one epoch writes metrics/summary/checkpoints/curves; --mixup-off-epoch switches mixing off in
the running pipeline; 2 epochs == 1 epoch + --resume for 1 (bit for bit); torchrun with 2 gloo ranks reads
disjoint shards; bad flags and bad data folders are argparse errors naming the flag or the path.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalimix import train as engine
from dalimix.train.distributed import DistContext
from dalimix.data.synthetic import CLASSES, make_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_imagenet.py"
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 4
# Small and fast: resnet18 at 32 px, batches of 8, one DALI thread, no bars.
BASE = ["--arch", "resnet18", "--device", "cpu", "--threads", "1", "--crop", "32", "--batch-size", "8",
        "--lr", "0.02", "--no-progress", "--seed", "3"]
MIXING = ["--mixup-alpha", "0.8", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1",
          "--manifold-mixup-alpha", "2.0", "--manifold-layers", "layer1,layer2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_data") / "ds", train_per_class=TRAIN_PER_CLASS,
                        val_per_class=VAL_PER_CLASS)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_script(*args: str, timeout: float = 300, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit code {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # checkpoints are plain data


# -- engine units (fast) ------------------------------------------------------------------------------------
def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = engine.warmup_cosine(opt, total_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # cosine strictly decays after warmup
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # reaches min_lr_ratio at total_steps


def test_param_groups_skip_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = engine.param_groups(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert len(engine.param_groups(model, 0.05, decay_norm_and_bias=True)) == 1


def test_accuracy_counts_top1_top5():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6], [0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 0, 6])
    c1, c5 = engine.accuracy_counts(logits, labels)
    assert (int(c1), int(c5)) == (1, 1)  # row 0 top-1; row 1 label is the smallest; row 2 label is last
    c1, c5 = engine.accuracy_counts(logits[:, :3], torch.tensor([1, 0, 2]))  # k capped at 3 classes
    assert (int(c1), int(c5)) == (0, 3)


def test_evaluate_skips_empty_batches_and_counts_every_sample():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    batches = [(x[:6], y[:6]), (x[6:], y[6:]), (x[:0], y[:0])]  # a padded empty batch at the end
    res = engine.evaluate(model, batches, ctx=DistContext(), progress=False)
    logits = model(x)
    assert res["val_samples"] == 10
    assert res["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert res["val_top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert res["val_top5"] == 100.0  # 3 classes


def test_train_one_epoch_soft_and_int_targets_reduce_the_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    soft = F.one_hot(y, 2).float() * 0.9 + 0.05
    for targets in (y, soft):
        model = nn.Linear(5, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        batches = [(x[i:i + 16], targets[i:i + 16]) for i in range(0, 64, 16)]
        first = engine.train_one_epoch(model, batches, opt, ctx=DistContext(), progress=False)
        for _ in range(5):
            last = engine.train_one_epoch(model, batches, opt, ctx=DistContext(), progress=False)
        assert first["train_images"] == 64 and math.isfinite(first["train_loss"])
        assert last["train_loss"] < first["train_loss"] * 0.8


def test_train_one_epoch_stops_on_a_diverged_loss():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long))] * 3
    with pytest.raises(FloatingPointError, match="non-finite"):
        engine.train_one_epoch(model, batches, opt, ctx=DistContext(), progress=False, print_freq=0)


# -- flags and data errors (in process: argparse exits with code 2) ---------------------------------------------
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_imagenet_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags, flag", [
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--mixup-alpha", "-0.2"], "--mixup-alpha"),
    (["--cutmix-alpha", "-1"], "--cutmix-alpha"),
    (["--manifold-mixup-alpha", "-2"], "--manifold-mixup-alpha"),
    (["--label-smoothing", "1.0"], "--label-smoothing"),
    (["--mix-prob", "1.5"], "--mix-prob"),
    (["--cutmix-minmax", "0.8", "0.2"], "--cutmix-minmax"),
    (["--arch", "resnet_does_not_exist"], "--arch"),
    (["--lr", "0"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--val-resize", "16"], "--val-resize"),
    (["--mix-mode", "diagonal"], "--mix-mode"),
    (["--manifold-layers", "layer1"], "--manifold-layers"),  # without --manifold-mixup-alpha
    (["--manifold-mode", "cutmix"], "--manifold-mode"),  # without --manifold-mixup-alpha
    (["--manifold-mixup-alpha", "1", "--manifold-layers", "layer1,no_such_layer"], "--manifold-layers"),
    (["--resume", "/no/such/checkpoint.pt"], "--resume"),
    (["--batch-size", "1000"], "--batch-size"),  # more than the dataset holds: found by the pipeline
    (["--device", "gpu"], "--device"),
    (["--aug-repeats", "0"], "--aug-repeats"),
    (["--model-ema", "1.0"], "--model-ema"),
    (["--drop-path", "1.5"], "--drop-path"),
    (["--drop-path", "0.1"], "--drop-path"),  # torchvision's resnet18 has no stochastic depth: found at build
    (["--bce-target-thresh", "0.2"], "--bce-target-thresh"),  # without --bce-loss
    (["--opt", "rmsprop"], "--opt"),
    (["--arch", "timm/resnet_does_not_exist"], "--arch"),
    (["--aa", "rand-x9"], "--aa"),
])
def test_bad_flags_are_argparse_errors_naming_the_flag(script, data, capsys, flags, flag):
    if flags == ["--device", "gpu"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    argv = ["--data", str(data), "--epochs", "1", *BASE]
    argv += flags
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}" in err or f"error: {flag}" in err, err
    if flags[:2] == ["--arch", "resnet_does_not_exist"]:
        assert "unknown model" in err


@pytest.mark.parametrize("missing", ["train", "val", "both"])
def test_missing_train_or_val_folder_names_the_path(script, data, tmp_path, capsys, missing):
    root = tmp_path / "partial"
    for split in ("train", "val"):
        if missing not in (split, "both"):
            shutil.copytree(data / split, root / split)
    root.mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exc:
        script.main(["--data", str(root), "--epochs", "1", *BASE])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    expected = "train" if missing in ("train", "both") else "val"
    assert "--data" in err and str(root / expected) in err and "does not exist" in err, err


def test_mismatched_class_folders_are_an_error(script, data, tmp_path, capsys):
    root = tmp_path / "mismatch"
    shutil.copytree(data / "train", root / "train")
    shutil.copytree(data / "val", root / "val")
    shutil.rmtree(root / "val" / CLASSES[0])
    with pytest.raises(SystemExit) as exc:
        script.main(["--data", str(root), "--epochs", "1", *BASE])
    assert exc.value.code == 2
    assert CLASSES[0] in capsys.readouterr().err


def test_command_line_exit_code_and_message(data):
    proc = run_script("--data", str(data), "--epochs", "-3", *BASE, timeout=120)
    assert proc.returncode == 2
    assert "--epochs" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("--data", str(data / "nowhere"), *BASE, timeout=120)
    assert proc.returncode == 2 and str(data / "nowhere") in proc.stderr


# -- end to end ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_epoch_end_to_end(data, tmp_path):
    out = tmp_path / "run"
    proc = ok(run_script("--data", str(data), "--epochs", "1", *BASE, *MIXING, "--output", str(out)))
    assert "val top-1" in proc.stdout
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "best.pt", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = metrics(out)
    assert len(rows) == 1 and rows[0]["epoch"] == 0
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec", "lr", "epoch_time"):
        assert math.isfinite(rows[0][key]), key
    assert rows[0]["train_images"] == (10 * TRAIN_PER_CLASS // 8) * 8
    assert rows[0]["val_samples"] == 10 * VAL_PER_CLASS  # every val image scored once
    assert 0 <= rows[0]["val_top1"] <= rows[0]["val_top5"] <= 100
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_val_top1", "final_val_top5", "best_val_top1", "best_val_top5", "images_per_sec", "wall_time"):
        assert isinstance(summary[key], (int, float)) and math.isfinite(summary[key]), key
    assert summary["args"]["manifold_mixup_alpha"] == 2.0 and summary["num_classes"] == 10
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["epoch"] == 0 and len(ckpt["dali"]) == 1 and isinstance(ckpt["dali"][0], (bytes, str))
    assert set(ckpt["rng"][0]) >= {"python", "numpy", "torch"}
    assert not any(k.startswith(("module.", "model.")) for k in ckpt["model"])  # the bare network


@pytest.mark.slow
def test_mixup_off_epoch_switches_the_running_pipeline_and_manifold_off(data, tmp_path):
    out = tmp_path / "off"
    seen = tmp_path / "seen"
    ok(run_script("--data", str(data), "--epochs", "2", *BASE, "--mixup-alpha", "1.0", "--cutmix-alpha", "0",
                  "--label-smoothing", "0.1", "--manifold-mixup-alpha", "1.0", "--mixup-off-epoch", "1",
                  "--max-steps-per-epoch", "6", "--output", str(out), "--dump-seen", str(seen)))
    rows = metrics(out)
    assert [r["manifold_mixup"] for r in rows] == [True, False]
    record = json.loads((seen / "rank0_seen.json").read_text())
    files = sorted((data / "train").glob("*/*.jpg"))

    def true_labels(entry):
        return [sorted(CLASSES).index(Path(f).parts[0]) for f in entry["files"]]  # labels follow sorted names

    e0, e1 = record["train/0"], record["train/1"]
    assert len(e0["labels"]) == len(e1["labels"]) == 6 * 8 and len(files) == 10 * TRAIN_PER_CLASS
    # Epoch 0 mixes pixels and targets: the dominant class is often the partner's; epoch 1 only smooths.
    assert e0["labels"] != true_labels(e0)
    assert e1["labels"] == true_labels(e1)


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    common = ["--data", str(data), "--epochs", "2", *BASE, *MIXING, "--warmup-epochs", "0.5",
              "--max-steps-per-epoch", "5", "--max-val-steps", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    ok(run_script(*common, "--output", str(full)))
    ok(run_script(*common, "--output", str(part), "--stop-at-epoch", "1"))
    assert len(metrics(part)) == 1
    first = load(part / "checkpoint.pt")
    assert first["epoch"] == 0
    # A control with the DALI augmentation state stripped: resuming then must differ (and say so).
    stripped = tmp_path / "stripped.pt"
    torch.save({**first, "dali": [None]}, stripped)
    proc = ok(run_script(*common, "--output", str(tmp_path / "control"), "--resume", str(stripped)))
    assert "not restoring the DALI augmentation state" in proc.stderr
    proc = ok(run_script(*common, "--output", str(part), "--resume", str(part / "checkpoint.pt")))
    assert "resumed from" in proc.stdout and "not restoring" not in proc.stderr

    a, b, c = load(full / "checkpoint.pt"), load(part / "checkpoint.pt"), load(tmp_path / "control" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.allclose(a["model"][key].double(), b["model"][key].double(), rtol=1e-6, atol=1e-7), key
    assert any(not torch.allclose(a["model"][k].double(), c["model"][k].double(), rtol=1e-6, atol=1e-7)
               for k in a["model"] if a["model"][k].is_floating_point())
    ra, rb = metrics(full), metrics(part)
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb):
        for key in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "train_images"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), key
    # optimizer momentum buffers and the schedule position carried over too
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"] == 10
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.allclose(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"], rtol=1e-6, atol=1e-7) for k in sa)


def test_the_weights_moving_average_follows_its_rule():
    """ModelEma: the first update copies; then ema = decay * ema + (1 - decay) * weights, BatchNorm buffers
    included, every `every` steps only."""
    from dalimix.train.ema import ModelEma
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(net, 0.9, every=2)
    snapshots = []
    expected = None
    for step in range(1, 7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        ema.step(net)
        if step % 2 == 0:
            now = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
            expected = now if expected is None else {k: 0.9 * expected[k] + 0.1 * now[k] for k in now}
            snapshots.append(expected)
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got["0.weight"], net.state_dict()["0.weight"])
    saved = ema.state_dict()
    again = ModelEma(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 0.9, every=2)
    again.load_state_dict(saved)
    assert again.steps == 6 and int(again.averaged.n_averaged) == 3
    torch.testing.assert_close(again.module.state_dict()["0.weight"], got["0.weight"])
    with pytest.raises(ValueError, match="model_ema"):
        ModelEma(net, 1.0)


@pytest.mark.slow
def test_model_ema_is_evaluated_saved_and_resumed_exactly(data, tmp_path):
    common = ["--data", str(data), "--epochs", "2", *BASE, *MIXING, "--warmup-epochs", "0.5",
              "--max-steps-per-epoch", "5", "--max-val-steps", "2", "--model-ema", "0.8", "--model-ema-steps", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    proc = ok(run_script(*common, "--output", str(full)))
    assert "EMA top-1" in proc.stdout
    ok(run_script(*common, "--output", str(part), "--stop-at-epoch", "1"))
    ok(run_script(*common, "--output", str(part), "--resume", str(part / "checkpoint.pt")))
    rows = metrics(full)
    assert all(0 <= r["ema_top1"] <= r["ema_top5"] <= 100 and math.isfinite(r["ema_loss"]) for r in rows)
    for x, y in zip(rows, metrics(part)):
        assert x["ema_top1"] == pytest.approx(y["ema_top1"]) and x["ema_loss"] == pytest.approx(y["ema_loss"], rel=1e-6)
    a, b = load(full / "checkpoint.pt"), load(part / "checkpoint.pt")
    assert a["ema"]["steps"] == b["ema"]["steps"] == 10 and a["ema"]["n_averaged"] == 5
    for key, value in a["ema"]["module"].items():
        torch.testing.assert_close(value.double(), b["ema"]["module"][key].double(), rtol=1e-6, atol=1e-7)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["best_ema_top1"] == max(r["ema_top1"] for r in rows)
    from dalimix.train.models import build_model
    net = build_model("resnet18", num_classes=10)
    best = load(full / "best_ema.pt")
    net.load_state_dict(best["model"])  # the moving average loads into the plain network
    assert best["ema_of"] == "model" and "optimizer" not in best
    # a crash between the checkpoint and best_ema.pt: the resumed run rebuilds it from the checkpoint
    crashed = tmp_path / "crashed"
    ok(run_script(*common, "--output", str(crashed), "--stop-at-epoch", "1"))
    (crashed / "best_ema.pt").unlink()
    proc = ok(run_script(*common, "--epochs", "2", "--output", str(crashed), "--resume",
                         str(crashed / "checkpoint.pt"), "--stop-at-epoch", "1"))
    assert (crashed / "best_ema.pt").is_file()


def test_optimisers_losses_and_timm_models_are_built_as_named():
    from dalimix.losses import BinarySoftTargetCrossEntropy
    from dalimix.train.models import build_model
    from dalimix.train.run import RunConfig, make_criterion, make_optimizer
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = dict(train_data="x", val_data="x", classes=["a"], epochs=1, batch_size=2, weight_decay=0.05)
    sgd = make_optimizer(net, RunConfig(**cfg))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    adamw = make_optimizer(net, RunConfig(**cfg, opt="adamw", lr=5e-4))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 5e-4
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]  # none on biases and norms
    pytest.importorskip("timm")
    from timm.optim import Lamb
    assert isinstance(make_optimizer(net, RunConfig(**cfg, opt="lamb")), Lamb)
    assert make_criterion(RunConfig(**cfg)) is None
    bce = make_criterion(RunConfig(**cfg, bce_loss=True, bce_target_thresh=0.2))
    assert isinstance(bce, BinarySoftTargetCrossEntropy) and bce.target_threshold == 0.2
    model = build_model("timm/resnet18", 7, crop=32, drop_path=0.05)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    convnext = build_model("convnext_tiny", 5, drop_path=0.1)
    assert max(m.p for m in convnext.modules() if type(m).__name__ == "StochasticDepth") == pytest.approx(0.1)


def test_train_and_val_resolutions_apart(data, script, capsys):
    """--crop 32 --val-crop 40 --crop-pct 0.8: train crops of 32, val resized to floor(40 / 0.8) = 50 and
    centre-cropped to 40 (ResNet Strikes Back A3's 160 / 224 on a small scale)."""
    from dalimix.train.run import RunConfig, build_run
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    cfg = RunConfig(train_data=str(data / "train"), val_data=str(data / "val"), classes=classes, epochs=1,
                    batch_size=8, crop=32, val_crop=40, val_resize=50, device="cpu", threads=1, arch="resnet18",
                    progress=False, seed=0)
    run = build_run(cfg, DistContext(device=torch.device("cpu")), log=lambda *_: None)
    assert next(iter(run.train_loader))[0].shape[-2:] == (32, 32)
    assert next(iter(run.val_loader))[0].shape[-2:] == (40, 40)
    assert "crop=40, resize=50" in run.val_loader.spec.settings
    from dalimix.train import cli
    a = cli.build_parser().parse_args(["--data", str(data), "--crop", "32", "--val-crop", "40", "--crop-pct", "0.8"])
    cli._check_ranges(cli.build_parser(), a)
    assert a.val_resize == 50 and a.val_crop == 40
    with pytest.raises(SystemExit):
        script.main(["--data", str(data), "--epochs", "1", *BASE, "--crop-pct", "0.9", "--val-resize", "40"])
    assert "--crop-pct" in capsys.readouterr().err


@pytest.mark.slow
def test_a_timm_model_with_adamw_bce_and_drop_path_trains_and_resumes(data, tmp_path):
    pytest.importorskip("timm")
    common = ["--data", str(data), "--epochs", "2", *BASE, *MIXING, "--arch", "timm/resnet18", "--opt", "adamw",
              "--lr", "1e-3", "--weight-decay", "0.05", "--bce-loss", "--bce-target-thresh", "0.2",
              "--drop-path", "0.05", "--max-steps-per-epoch", "4", "--max-val-steps", "2"]
    out = tmp_path / "timm"
    ok(run_script(*common, "--output", str(out), "--stop-at-epoch", "1"))
    rows = metrics(out)
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] < 1.0  # BCE scale
    ckpt = load(out / "checkpoint.pt")
    assert "exp_avg" in next(iter(ckpt["optimizer"]["state"].values()))  # AdamW's state
    wrong = run_script(*[c if c != "adamw" else "sgd" for c in common], "--output", str(out), "--resume",
                       str(out / "checkpoint.pt"))
    assert wrong.returncode == 2 and "--opt" in wrong.stderr
    ok(run_script(*common, "--output", str(out), "--resume", str(out / "checkpoint.pt")))
    assert len(metrics(out)) == 2


@pytest.mark.slow
def test_manifold_mixup_composes_with_ema_and_bce(data, tmp_path):
    out = tmp_path / "manifold"
    ok(run_script("--data", str(data), "--epochs", "1", *BASE, *MIXING, "--manifold-mixup-alpha", "1.0",
                  "--model-ema", "0.9", "--bce-loss", "--bce-target-thresh", "0.2", "--max-steps-per-epoch", "3",
                  "--max-val-steps", "1", "--output", str(out)))
    row = metrics(out)[0]
    assert row["manifold_mixup"] and math.isfinite(row["ema_top1"]) and math.isfinite(row["train_loss"])
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["ema"]["module"].keys() == ckpt["model"].keys()  # the average of the bare network's weights


# The published recipes as the table states them (typed here, not read from dalimix).
PUBLISHED = {
    "deit": dict(aa="rand-m9-mstd0.5-inc1", mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, re_prob=0.25,
                 re_mode="pixel", re_order="before_mix", interpolation="bicubic", aug_repeats=3, model_ema=0.99996,
                 opt="adamw", weight_decay=0.05, epochs=300, warmup_epochs=5.0, drop_path=0.1, crop=224, val_crop=224,
                 val_resize=256, bce_loss=False, lr=5e-4 * 1024 / 512),
    "rsb-a2": dict(aa="rand-m7-mstd0.5-inc1", mixup_alpha=0.1, cutmix_alpha=1.0, interpolation="bicubic",
                   aug_repeats=3, model_ema=None, opt="lamb", weight_decay=0.02, epochs=300, bce_loss=True,
                   bce_target_thresh=0.2, drop_path=0.05, crop=224, val_crop=224, val_resize=235, lr=5e-3 * 1024 / 2048),
    "rsb-a3": dict(aa="rand-m6-mstd0.5-inc1", mixup_alpha=0.1, cutmix_alpha=1.0, interpolation="bicubic",
                   aug_repeats=1, opt="lamb", epochs=100, bce_loss=True, crop=160, val_crop=224, val_resize=235,
                   lr=8e-3 * 1024 / 2048),
    "convnext": dict(aa="rand-m9-mstd0.5-inc1", mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                     re_prob=0.25, re_mode="pixel", re_order="before_mix", model_ema=0.9999, opt="adamw",
                     weight_decay=0.05, epochs=300, warmup_epochs=20.0, drop_path=0.1, crop=224, val_crop=224,
                     interpolation="bicubic", lr=4e-3 * 1024 / 4096),
    "torchvision-v2": dict(aa="ta_wide", mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, re_prob=0.1,
                           re_order="before_mix", aug_repeats=4, model_ema_steps=32, opt="sgd", weight_decay=2e-5,
                           epochs=600, warmup_epochs=5.0, crop=176, val_crop=224, val_resize=232,
                           interpolation="bilinear", lr=0.5 * 1024 / 1024,
                           model_ema=1 - (1 - 0.99998) * 1024 * 32 / 600),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_recipes_settings_are_the_published_ones(name):
    from dalimix.train import cli
    argv = ["--data", "x", "--recipe", name, "--batch-size", "1024"]
    a = cli.build_parser().parse_args(argv)
    cli._apply_recipe(a, argv)
    cli._check_ranges(cli.build_parser(), a)
    for key, want in PUBLISHED[name].items():
        got = getattr(a, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (key, got, want)
    # a flag given on the command line wins over the recipe
    argv = ["--data", "x", "--recipe", name, "--mixup-alpha", "0.3", "--lr", "0.01", "--epochs", "7"]
    a = cli.build_parser().parse_args(argv)
    lines = cli._apply_recipe(a, argv)
    assert (a.mixup_alpha, a.lr, a.epochs) == (0.3, 0.01, 7)
    assert any(line.startswith("mixup_alpha=0.3 (given") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_recipe_runs_a_short_epoch_and_records_its_settings(name, data, tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / name
    proc = ok(run_script("--data", str(data), "--recipe", name, "--arch", "timm/resnet18", "--device", "cpu",
                         "--threads", "1", "--batch-size", "8", "--crop", "32", "--val-crop", "32", "--val-resize",
                         "36", "--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "2",
                         "--max-val-steps", "1", "--no-progress", "--output", str(out)))
    assert f"--recipe {name}:" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["args"]["recipe"] == name and summary["args"]["recipe_settings"]
    for key in ("aa", "mixup_alpha", "opt", "aug_repeats", "bce_loss"):
        if key in PUBLISHED[name]:
            assert summary["args"][key] == PUBLISHED[name][key], key
    assert math.isfinite(metrics(out)[0]["train_loss"])


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_read_disjoint_shards(data, tmp_path):
    out, seen = tmp_path / "ddp", tmp_path / "seen"
    proc = ok(run_script("--data", str(data), "--epochs", "1", *BASE, "--manifold-mixup-alpha", "2.0",
                         "--output", str(out), "--dump-seen", str(seen), "--dist-timeout", "3",
                         launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
                         timeout=400))
    assert "2 rank(s)" in proc.stdout
    ranks = [json.loads((seen / f"rank{r}_seen.json").read_text()) for r in (0, 1)]
    classes = sorted(CLASSES)
    per_rank = (10 * TRAIN_PER_CLASS // 2) // 8 * 8
    for split, expect in (("train", per_rank), ("val", 10 * VAL_PER_CLASS // 2)):
        r0, r1 = (r[f"{split}/0"] for r in ranks)
        assert len(r0["indices"]) == len(r1["indices"]) == expect
        assert not set(r0["indices"]) & set(r1["indices"]), f"{split}: ranks read the same files"
        assert not set(r0["files"]) & set(r1["files"])
        for r in (r0, r1):  # what the loader yielded is what those files are (no mixing in the loader here)
            assert r["labels"] == [classes.index(Path(f).parts[0]) for f in r["files"]]
    val_files = set(ranks[0]["val/0"]["files"]) | set(ranks[1]["val/0"]["files"])
    assert len(val_files) == 10 * VAL_PER_CLASS  # together the ranks score the whole val set
    rows = metrics(out)
    assert len(rows) == 1 and rows[0]["val_samples"] == 10 * VAL_PER_CLASS
    assert rows[0]["train_images"] == 2 * per_rank  # summed over ranks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16
    assert load(out / "checkpoint.pt")["world_size"] == 2 and len(load(out / "checkpoint.pt")["dali"]) == 2
