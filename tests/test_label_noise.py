"""Corrupted labels for `dalimix-reproduce --label-noise` (Zhang et al. 2018, Table 2), the held-out val set,
and the report's four columns.

The share of changed labels follows Binomial(n, P * (K-1) / K) (symmetric) or Binomial(n, P) (pair-flip); the
seed fixes the corruption; the training errors compare predictions with the real labels of the corrupted
samples (an oracle of the real class scores 0% there and 100% against the corrupted labels); end to end, a
tiny run of two methods writes the four columns.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn

from dalimix import reproduce
from dalimix.pipelines.options import IMAGENET_MEAN, IMAGENET_STD
from dalimix.data.dataset import read_file_list
from dalimix.reproduce.label_noise import corrupt_labels, noisy_labels, paper_mixup_alpha, train_errors
from dalimix.reproduce.subsets import HELD_OUT, comparison_classes, resolve_val
from dalimix.train.distributed import DistContext

COLOURS = {"blue": (20, 40, 230), "green": (30, 200, 40), "grey": (128, 128, 128), "red": (220, 30, 30)}


# -- the corruption -------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_symmetric_noise_changes_a_binomial_share(p):
    k, n = 10, 20000
    labels = np.random.default_rng(1).integers(0, k, n)
    given = corrupt_labels(labels, k, p, "symmetric", seed=7)
    changed = int((given != labels).sum())
    assert stats.binomtest(changed, n, p * (k - 1) / k).pvalue > 1e-3
    # A changed label is any other class, uniformly.
    moved = (given - labels)[given != labels] % k
    counts = np.bincount(moved, minlength=k)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_pairflip_moves_to_the_next_class(p):
    k, n = 10, 20000
    labels = np.random.default_rng(2).integers(0, k, n)
    given = corrupt_labels(labels, k, p, "pairflip", seed=3)
    changed = given != labels
    assert stats.binomtest(int(changed.sum()), n, p).pvalue > 1e-3
    assert np.array_equal(given[changed], (labels[changed] + 1) % k)


def test_the_seed_fixes_the_corruption_and_nothing_else_does():
    labels = np.arange(1000) % 10
    a = corrupt_labels(labels, 10, 0.5, seed=4)
    np.random.seed(123)
    torch.manual_seed(123)
    assert np.array_equal(a, corrupt_labels(labels, 10, 0.5, seed=4))
    assert not np.array_equal(a, corrupt_labels(labels, 10, 0.5, seed=5))
    assert np.array_equal(corrupt_labels(labels, 10, 0.0, seed=4), labels)
    assert (corrupt_labels(labels, 10, 1.0, "pairflip", seed=4) == (labels + 1) % 10).all()


def test_bad_settings_name_themselves():
    with pytest.raises(ValueError, match="label_noise: must be in"):
        corrupt_labels([0, 1], 2, 1.5)
    with pytest.raises(ValueError, match="noise_kind"):
        corrupt_labels([0, 1], 2, 0.5, "asymmetric")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        corrupt_labels([0, 3], 3, 0.5)


def test_paper_alphas():
    assert [paper_mixup_alpha(p) for p in (0.2, 0.5, 0.8, 0.1, 0.3, 0.4, 0.95)] == [8, 32, 32, 8, 8, 32, 32]


def read_list(path: str, root: Path) -> tuple[list[str], np.ndarray]:
    """A written file list through dalimix's own reader: (paths relative to `root`, labels)."""
    ds = read_file_list(path, root, verify=False)
    return [os.path.relpath(f, root) for f in ds.files], np.asarray(ds.labels)


# -- training errors against the real labels -------------------------------------------------------------
def colour_dataset(root: Path, per_class: int, val: bool = False) -> Path:
    for split in ("train", "val") if val else ("train",):
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (12, 12), rgb).save(folder / f"{name}_{i:03d}.png")
    return root


class NearestColour(nn.Module):
    """Predicts the class whose (normalised) colour is nearest to the image's mean: the real class."""

    def __init__(self, classes) -> None:
        super().__init__()
        rgb = torch.tensor([COLOURS[c] for c in classes], dtype=torch.float32)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("centres", (rgb / 255 - mean) / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.float().mean((2, 3)), self.centres)


class Always(nn.Module):
    def __init__(self, k: int, label: int) -> None:
        super().__init__()
        self.k, self.label = k, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((x.shape[0],), self.label), self.k).float()


def test_training_errors_compare_with_the_real_labels(tmp_path):
    from dalimix.pipelines.imagenet import val_pipeline

    root = colour_dataset(tmp_path / "ds", 25)
    classes = sorted(COLOURS)
    files = [f"{c}/{c}_{i:03d}.png" for c in classes for i in range(25)]
    labels = [k for k in range(4) for _ in range(25)]
    noisy = noisy_labels(files, labels, 4, 0.6, "symmetric", seed=2)
    run_dir = tmp_path / "run"
    train_list, audit = noisy.write(str(run_dir))
    listed, given = read_list(train_list, root / "train")
    assert listed == files and np.array_equal(given, noisy.given)
    rows = [line.split("\t") for line in Path(audit).read_text().splitlines()[1:]]
    assert [(f, int(r), int(g)) for f, r, g in rows] == list(zip(files, noisy.real.tolist(), noisy.given.tolist()))

    kw = dict(pipeline=val_pipeline, classes=classes, batch_size=16, crop=12, resize=12, device="cpu", threads=1,
              channels_last=False, ctx=DistContext(device=torch.device("cpu")))
    oracle = train_errors(NearestColour(classes), noisy, str(root / "train"), str(run_dir), **kw)
    share = 100.0 * noisy.corrupted.mean()
    assert 0 < share < 100
    assert oracle == {"corrupted_share": pytest.approx(share), "train_error_noisy_real": 0.0,
                      "train_error_noisy_given": 100.0, "train_error_clean": 0.0}
    constant = train_errors(Always(4, 1), noisy, str(root / "train"), str(run_dir), **kw)
    bad = noisy.corrupted
    assert constant["train_error_noisy_real"] == pytest.approx(100.0 * (noisy.real[bad] != 1).mean())
    assert constant["train_error_noisy_given"] == pytest.approx(100.0 * (noisy.given[bad] != 1).mean())
    assert constant["train_error_clean"] == pytest.approx(100.0 * (noisy.real[~bad] != 1).mean())
    assert sorted(os.listdir(run_dir)) == ["label_noise.tsv", "train_files.txt"]  # the eval lists are removed


# -- the held-out val set ------------------------------------------------------------------------------
def test_held_out_val_is_the_unused_train_images(tmp_path):
    root = colour_dataset(tmp_path / "ds", 10)
    classes = comparison_classes(str(root), None)
    val = resolve_val(str(root), None, classes, 6, 3, str(tmp_path / "out"))
    listed, labels = read_list(val.file_list, root / "train")
    assert val.root == str(root / "train") and val.images == 12
    assert listed == [f"{c}/{c}_{i:03d}.png" for c in classes for i in (6, 7, 8)]
    assert labels.tolist() == [k for k in range(4) for _ in range(3)]
    assert "held-out" in val.note and "which training does not use" in val.note
    with pytest.raises(ValueError, match="val_data: .* has no val/ folder"):
        resolve_val(str(root), None, classes, None, None, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="beyond the first 10"):
        resolve_val(str(root), None, classes, 10, None, str(tmp_path / "out"))
    # With a val/ folder it is used, unless "unused" asks for the held-out images; a folder can be named.
    both = colour_dataset(tmp_path / "both", 10, val=True)
    assert resolve_val(str(both), None, classes, 6, None, str(tmp_path / "o2")).file_list is None
    assert resolve_val(str(both), HELD_OUT, classes, 6, None, str(tmp_path / "o2")).images == 16
    other = resolve_val(str(both), str(both / "val"), classes, 6, None, str(tmp_path / "o2"))
    assert other.root == str(both / "val") and other.file_list is None
    with pytest.raises(ValueError, match="must hold the class folders"):
        comparison_classes(str(both), str(both / "val" / "red"))


# -- end to end -------------------------------------------------------------------------------------------
def _main(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = reproduce.main(list(args))
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_tiny_noisy_run_reports_the_four_columns(tmp_path, capsys):
    root = colour_dataset(tmp_path / "ds", 16)
    out = tmp_path / "out"
    code, stdout, stderr = _main(capsys, "--data", str(root), "--output", str(out), "--recipe", "cpu-noisy",
                                 "--label-noise", "0.5", "--methods", "mixup,feature_cutmix", "--seeds", "0",
                                 "--epochs", "1", "--width", "4", "--batch-size", "8", "--threads", "1",
                                 "--torch-threads", "1", "--crop", "12", "--train-per-class", "10",
                                 "--val-per-class", "4", "--no-progress")
    assert code == 0, stderr[-3000:]
    assert "val: 16 held-out images" in stdout
    table = (out / "table.md").read_text()
    for column in ("val error, last epoch", "val error, best epoch", "train error vs real labels (corrupted samples)",
                   "train error vs corrupted labels (corrupted samples)"):
        assert column in table
    assert "| input mixup, alpha 32 | 11.3 / 12.7 |" in table  # the paper's alpha at 50%
    assert "| feature CutMix, alpha 1 (input, layer1, layer2) | - |" in table
    results = json.loads((out / "results.json").read_text())
    assert results["methods"][0]["mixup_alpha"] == 32.0 and results["methods"][1]["manifold_mode"] == "cutmix"
    audits = []
    for r in results["runs"]:
        for key in ("final_error", "best_error", "train_error_noisy_real", "train_error_noisy_given",
                    "train_error_clean"):
            assert 0.0 <= r[key] <= 100.0, key
        audit = (Path(r["run_dir"]) / "label_noise.tsv").read_text()
        rows = [line.split("\t") for line in audit.splitlines()[1:]]
        assert len(rows) == 40
        assert r["corrupted_share"] == pytest.approx(100.0 * sum(a != b for _, a, b in rows) / 40)
        audits.append(audit)
    assert audits[0] == audits[1]  # one corruption per seed, shared by the methods
    for row in results["table"]:
        assert row["train_error_noisy_real_mean"] is not None and row["train_error_noisy_given_mean"] is not None


def test_alpha_flags_and_val_data_errors(tmp_path, capsys):
    root = colour_dataset(tmp_path / "ds", 4)
    base = ["--data", str(root), "--output", str(tmp_path / "o"), "--recipe", "cpu-noisy"]
    code, _, err = _main(capsys, *base, "--cutmix-alpha", "0")
    assert code == 2 and "--cutmix-alpha: must be a finite number > 0" in err
    code, _, err = _main(capsys, *base, "--methods", "erm,mixup", "--cutmix-alpha", "2")
    assert code == 2 and "--cutmix-alpha: the cutmix method is not among --methods erm,mixup" in err
    code, _, err = _main(capsys, *base, "--val-data", str(tmp_path / "missing"))
    assert code == 2 and "--val-data: " in err and "missing" in err
    code, _, err = _main(capsys, *base, "--label-noise", "1.5")
    assert code == 2 and "--label-noise: Recipe.label_noise must be in [0, 1]" in err
    assert not (tmp_path / "o").exists()
    assert reproduce.METHODS["mixup"].with_alpha(4).label == "input mixup, alpha 4"
    assert reproduce.METHODS["feature_cutmix"].with_alpha(0.5).manifold_alpha == 0.5
    with pytest.raises(ValueError, match="no single alpha"):
        reproduce.METHODS["erm"].with_alpha(1.0)


@pytest.mark.slow
def test_a_corruption_that_changes_nothing_is_reported_as_such(tmp_path, capsys):
    root = colour_dataset(tmp_path / "ds", 6)
    args = ["--data", str(root), "--output", str(tmp_path / "out"), "--recipe", "cpu-noisy", "--label-noise", "1e-9",
            "--methods", "erm", "--seeds", "0", "--epochs", "1", "--width", "4", "--batch-size", "4", "--threads", "1",
            "--torch-threads", "1", "--crop", "12", "--train-per-class", "4", "--no-progress"]
    code, stdout, stderr = _main(capsys, *args)
    assert code == 0, stderr[-3000:]
    assert "no training label was changed" in stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["runs"][0]["train_error_noisy_real"] is None and results["runs"][0]["corrupted_share"] == 0.0
    assert "| - | - |" in (tmp_path / "out" / "table.md").read_text()
    code, stdout, _ = _main(capsys, *args)  # finished: read back, not trained again
    assert code == 0 and "finished earlier" in stdout
