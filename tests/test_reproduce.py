"""scripts/reproduce.py and its library (dalimix.reproduce, dalimix.reproduce.preact_resnet) on a tiny generated dataset.

PreAct ResNet-18 has the papers' layer shapes and parameter count; the recipes, schedule and table are
checked directly; end to end, two methods for one epoch write the table, the curves and the JSON, a rerun
reads the finished runs back, and bad flags are argparse errors naming the flag.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalimix import ManifoldMixup
from dalimix.reproduce.preact_resnet import preact_resnet18
from dalimix import reproduce
from dalimix.reproduce import (DEFAULT_METHODS, METHODS, RECIPES, Recipe, StepSchedule, build_model,
                               format_table, summarize)
from dalimix.data.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"


def test_preact_resnet18_has_the_papers_shapes_and_parameter_count():
    net = preact_resnet18(num_classes=10)
    # 11.17M: the PreAct ResNet-18 of Zhang et al.'s and Verma et al.'s CIFAR-10 code.
    assert sum(p.numel() for p in net.parameters()) == 11_171_146
    shapes = {}
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        net.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert shapes == {"conv1": (64, 32, 32), "layer1": (64, 32, 32), "layer2": (128, 16, 16),
                      "layer3": (256, 8, 8), "layer4": (512, 4, 4)}
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]  # 18 = 1 + 2 * 8 + 1 layers
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17 and net.fc.in_features == 512


def test_preact_resnet_width_and_manifold_layers():
    assert sum(p.numel() for p in preact_resnet18(num_classes=10, width=16).parameters()) == 700_762
    narrow = preact_resnet18(num_classes=4, width=16)
    assert narrow.fc.in_features == 128 and narrow.layer4[0].conv1.out_channels == 128
    wrapped = ManifoldMixup(narrow, alpha=2.0, layers=["layer1", "layer2"], num_classes=4)
    assert wrapped.eligible_layers == ["input", "layer1", "layer2"]  # where Verma et al. mixed
    logits, targets = wrapped(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert logits.shape == (6, 4) and targets.shape == (6, 4)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="width"):
        preact_resnet18(width=0)
    with pytest.raises(ValueError, match="num_classes"):
        preact_resnet18(num_classes=0)


def test_methods_and_recipes_are_the_papers():
    assert DEFAULT_METHODS == ("erm", "mixup", "manifold", "cutmix")
    assert METHODS["erm"].mix_config(10) is None
    mixup = METHODS["mixup"].mix_config(10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (1.0, 0.0, 0.0)
    cutmix = METHODS["cutmix"].mix_config(10)
    assert (cutmix.mixup_alpha, cutmix.cutmix_alpha) == (0.0, 1.0)
    manifold = METHODS["manifold"]
    assert manifold.mix_config(10) is None and manifold.manifold_alpha == 2.0
    assert manifold.manifold_layers == ("layer1", "layer2") and manifold.manifold_input
    timm = METHODS["mixup_cutmix"].mix_config(1000)
    assert (timm.mixup_alpha, timm.cutmix_alpha, timm.switch_prob, timm.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    paper = RECIPES["paper"]
    assert (paper.arch, paper.width, paper.epochs, paper.batch_size, paper.lr, paper.momentum) == \
        ("preact_resnet18", 64, 200, 128, 0.1, 0.9)
    assert (paper.weight_decay, paper.schedule, paper.milestones, paper.gamma) == (1e-4, "step", (100, 150), 0.1)
    cpu = RECIPES["cpu"]
    assert cpu.device == "cpu" and cpu.width < paper.width and cpu.epochs < paper.epochs
    assert RECIPES["cpu-lowdata"].train_per_class == 200 and cpu.train_per_class is None
    feature = METHODS["feature_cutmix"]
    assert feature.mix_config(10) is None and (feature.manifold_alpha, feature.manifold_mode) == (1.0, "cutmix")
    assert feature.manifold_layers == ("layer1", "layer2") and feature.manifold_input
    noisy = RECIPES["cpu-noisy"]
    assert (noisy.label_noise, noisy.noise_kind, noisy.train_per_class, noisy.val_per_class) == \
        (0.5, "symmetric", 200, 200)
    assert all(r.label_noise == 0 for name, r in RECIPES.items() if name != "cpu-noisy")


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match=r"Recipe\.epochs"):
        RECIPES["cpu"].replace(epochs=0)
    with pytest.raises(ValueError, match=r"Recipe\.milestones"):
        RECIPES["paper"].replace(milestones=(150, 100))
    with pytest.raises(ValueError, match=r"Recipe\.scale"):
        Recipe(name="x", scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="no field"):
        RECIPES["cpu"].replace(colour="red")
    assert RECIPES["cpu"].replace(epochs=3, lr=None).epochs == 3  # None keeps the recipe's value
    with pytest.raises(ValueError, match="arch: unknown model 'resnet19'"):
        build_model("resnet19", 10)


def test_step_schedule_warmup_and_milestones():
    s = StepSchedule(steps_per_epoch=10, milestones=[2, 3], gamma=0.1, warmup_steps=5)
    assert [round(s(i), 6) for i in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert s(19) == 1.0 and math.isclose(s(20), 0.1) and math.isclose(s(35), 0.01)


def test_table_mean_and_sample_std():
    def run(method, seed, top1):
        return {"method": method, "seed": seed, "final_error": 100 - top1, "best_error": 100 - top1 - 1,
                "final_train_loss": 1.0, "final_val_loss": top1 / 40, "wall_time": 60.0, "history": []}

    runs = [run("erm", 0, 80.0), run("erm", 1, 84.0), run("mixup", 0, 85.0),
            run("cutmix", 0, 83.0), run("cutmix", 1, 85.0), run("cutmix", 2, 90.0)]
    rows = summarize(runs, [METHODS["erm"], METHODS["mixup"], METHODS["cutmix"], METHODS["manifold"]])
    assert rows[0]["error_mean"] == pytest.approx(18.0) and rows[0]["error_std"] == pytest.approx(math.sqrt(8))
    assert rows[1]["error_mean"] == pytest.approx(15.0) and rows[1]["seeds"] == [0]
    assert rows[3]["error_mean"] is None
    # paired by seed: CutMix seeds 0 and 1 against ERM's (seed 2 has no ERM run): -3 and -1
    assert rows[0]["vs_erm"] is None and rows[1]["vs_erm"]["diff_mean"] == pytest.approx(-5.0)
    vs = rows[2]["vs_erm"]
    assert vs["n"] == 2 and vs["diff_mean"] == pytest.approx(-2.0) and vs["diff_std"] == pytest.approx(math.sqrt(2))
    assert vs["t"] == pytest.approx(-2.0 / (math.sqrt(2) / math.sqrt(2)))
    assert rows[3]["vs_erm"]["n"] == 0
    table = format_table(rows, RECIPES["cpu"])
    assert "| ERM (no mixing) | 5.6 [Z], 4.83 [V] | 18.00 +- 2.83 | 2 | 20.0, 16.0 | - |" in table
    assert "| input mixup, alpha 1 |" in table and "15.00 | 1 | 15.0 | -5.00 |" in table
    assert "| 3 | 17.0, 15.0, 10.0 | -2.00 +- 1.41 (t -2.0) |" in table
    assert rows[0]["val_loss_mean"] == pytest.approx(2.05) and "| 2.050 +- 0.071 |" in table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("reproduce") / "ds", train_per_class=8, val_per_class=2,
                        classes=("disc", "square", "stripes", "checks"))


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """scripts/reproduce.py's command line in this process: (exit code, stdout, stderr)."""
    from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

    try:
        code = reproduce.main(list(args), train_pipeline=train_pipeline, val_pipeline=val_pipeline)
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_reproduce_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data", str(tiny), "--recipe", "cpu", "--methods", "mixup,manifold", "--seeds", "0", "--epochs", "1",
            "--width", "4", "--batch-size", "8", "--threads", "1", "--torch-threads", "1", "--train-per-class", "6",
            "--output", str(out)]
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "| input mixup, alpha 1 |" in table and "| manifold mixup, alpha 2 (input, layer1, layer2) |" in table
    assert "after epoch 1" in table and table in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["mixup", "manifold"]
    for r in results["runs"]:
        assert len(r["history"]) == 1 and 0.0 <= r["final_error"] <= 100.0
        assert r["train_images"] == 4 * 6  # --train-per-class 6 of the 8 per class
        assert r["num_params"] == sum(p.numel() for p in preact_resnet18(num_classes=4, width=4).parameters())
        run_dir = Path(r["run_dir"])
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "curves.png").is_file()
        listed = (run_dir / "train_files.txt").read_text().split("\n")[:-1]
        assert len(listed) == 24 and listed[0].endswith("_00000.jpg 0") and listed[-1].endswith("_00005.jpg 3")
        assert not (run_dir / "checkpoint.pt").exists()  # removed once the run finished
    assert results["recipe"]["epochs"] == 1 and results["recipe"]["width"] == 4
    assert [row["method"] for row in results["table"]] == ["mixup", "manifold"]
    assert results["machine"]["torch"] == torch.__version__
    with Image.open(out / "curves.png") as img:
        assert img.size[0] >= 800
    # The same command again reads the finished runs back instead of training them.
    code, stdout, stderr = _main(capsys, *args, "--no-progress")
    assert code == 0, stderr[-3000:]
    assert stdout.count("finished earlier") == 2
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    # Other settings into the same folder are refused, naming the run that differs.
    code, _, stderr = _main(capsys, *[a if a != "4" else "8" for a in args])
    assert code == 2 and "--output" in stderr and "recipe.width" in stderr


def test_reproduce_flag_errors(tiny, tmp_path, capsys):
    def error(*args: str) -> str:
        code, _, stderr = _main(capsys, "--output", str(tmp_path), "--recipe", "cpu", *args)
        assert code == 2
        return stderr

    assert "--methods: unknown ['bogus']" in error("--data", str(tiny), "--methods", "erm,bogus")
    assert "--data: " in error("--data", str(tmp_path / "nope")) and "nope" in error("--data", str(tmp_path / "nope"))
    assert "--epochs: Recipe.epochs must be a positive int" in error("--data", str(tiny), "--epochs", "0")
    assert "checks (8)" in error("--data", str(tiny), "--train-per-class", "9")
    assert "--arch: " in error("--data", str(tiny), "--arch", "resnet19")
    assert not list(tmp_path.iterdir())  # nothing written
