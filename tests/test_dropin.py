"""DaliLoader where a script expects a DataLoader: acting as torchvision's references/classification/train.py and
timm's train.py do with their loaders (read `.dataset`, call `set_epoch` before iterating, toggle
`mixup_enabled` at an epoch boundary, evaluate uneven val shards on 2 gloo ranks, peek then iterate,
bfloat16 out), torch's device names, the class count taken from the data, the builders importable from
`dalimix` past a user's own `pipelines` module, and the `dalimix.compat` helpers built from those scripts'
own parsed arguments."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_class_tree, write_solid
from dalimix import DaliLoader, MixConfig
from dalimix.pipelines.imagenet import train_pipeline, val_pipeline
from dalimix.pipelines.options import normalize_device
from dalimix.validation import ArgumentError

ROOT = Path(__file__).resolve().parents[1]


def id_colour(i: int) -> tuple[int, int, int]:
    """Up to 48 * 48 ids: red and blue carry the two digits of a base-48 number."""
    return (10 + 5 * (i % 48), 128, 10 + 5 * (i // 48))


def make_ids(root: Path, n: int, classes: int = 3) -> Path:
    for i in range(n):
        write_solid(root / f"c{i % classes}" / f"f{i:04d}.jpg", id_colour(i), size=(24, 24))
    return root


def ids_of(images: torch.Tensor) -> list[int]:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    rgb = images.float().mean(dim=(2, 3)).cpu().numpy() * std + mean
    return [int(round((r * 255 - 10) / 5)) + 48 * int(round((b * 255 - 10) / 5)) for r, _, b in rgb]


def tv_accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """torchvision references' utils.accuracy (top-1): 100 * correct / batch size."""
    batch_size = target.size(0)
    correct = output.argmax(dim=1).eq(target).sum().item()
    return correct * (100.0 / batch_size)


def timm_set_loader_epoch(loader, epoch: int) -> None:
    """timm train.py's _set_loader_epoch, as written there."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, "set_epoch"):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


@pytest.fixture(scope="module")
def ids12(tmp_path_factory):
    return make_ids(tmp_path_factory.mktemp("ids12"), 12)


def train(root, **kw):
    kw = dict(dict(batch_size=4, crop=16, device="cpu", num_threads=1, seed=3, scale=(1.0, 1.0), ratio=(1, 1)), **kw)
    return DaliLoader(train_pipeline(root, **kw))


def epoch_ids(loader) -> list[int]:
    return [i for x, _ in loader for i in ids_of(x)]


# -- 1. .dataset, .sampler, .batch_sampler --------------------------------------------------------------------------
def test_dataset_sampler_and_batch_sampler_answer_as_a_dataloader(ids12):
    loader = train(ids12)
    timm_set_loader_epoch(loader, 0)  # reads all three attributes before hasattr
    assert loader.batch_sampler is None
    assert len(loader.dataset) == 12 and loader.dataset.classes == ["c0", "c1", "c2"]
    assert loader.dataset.class_to_idx == {"c0": 0, "c1": 1, "c2": 2}
    assert sorted(t for _, t in loader.dataset.samples) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(loader.sampler) == len(loader) * 4 == 12
    assert sorted(loader.sampler) == list(range(12))
    val = DaliLoader(val_pipeline(ids12, batch_size=5, crop=16, resize=16, device="cpu", num_threads=1))
    # torchvision's evaluate(): the samples seen must equal len(data_loader.dataset).
    seen = sum(x.shape[0] for x, _ in val)
    assert hasattr(val.dataset, "__len__") and len(val.dataset) == seen == 12


# -- 2. mixup_enabled toggled at an epoch boundary --------------------------------------------------------------
def test_mixup_enabled_at_an_epoch_boundary_holds_for_every_batch_of_the_next_epoch(ids12):
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0)
    loader = train(ids12, mix=cfg, batch_size=4)
    assert loader.mixup_enabled
    mixed = [t for _, t in loader]  # epoch 0: DALI prepares epoch 1's first batches as it ends
    assert any((t.max(dim=1).values < 0.99).any() for t in mixed)
    loader.mixup_enabled = False    # what timm's train.py does at --mixup-off-epoch
    assert not loader.mixup_enabled
    for _, t in loader:             # epoch 1: not one batch mixed, the prepared ones included
        assert torch.equal(t.max(dim=1).values, torch.ones(t.shape[0]))
    loader.mixup_enabled = True
    assert any((t.max(dim=1).values < 0.99).any() for _, t in loader)
    without = train(ids12, batch_size=4)
    assert not without.mixup_enabled
    without.mixup_enabled = False   # timm only sets it when it reads True; setting False is harmless
    with pytest.raises(ValueError, match="without mixing"):
        without.mixup_enabled = True


def test_a_discarded_epoch_is_read_again_from_its_start(ids12):
    """The epoch after a toggle has the same order as without the toggle: its prepared batches are remade."""
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0)
    plain = train(ids12, mix=cfg, mix_off_epoch=1)
    toggled = train(ids12, mix=cfg)
    for a, b in zip(epoch_ids(plain), epoch_ids(toggled)):
        assert a == b
    toggled.mixup_enabled = False
    assert epoch_ids(toggled) == epoch_ids(plain)


# -- 3. uneven val shards on 2 gloo ranks -------------------------------------------------------------------------
RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_dropin import ids_of, tv_accuracy
    from dalimix import DaliLoader, val_pipeline
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = DaliLoader(val_pipeline({data!r}, batch_size=64, crop=16, resize=16, device="cpu", num_threads=1,
                                     shard_id=rank, num_shards=world))
    sizes, ids, accs = [], [], []
    for images, labels in loader:
        sizes.append(images.shape[0])
        ids += ids_of(images)
        logits = torch.nn.functional.one_hot(labels, 3).float()
        accs.append(tv_accuracy(logits, labels))  # divides by the batch size
    n = torch.tensor([len(ids)])
    dist.all_reduce(n)
    everything = [None] * world
    dist.all_gather_object(everything, dict(sizes=sizes, ids=ids, accs=accs, len=len(loader),
                                            dataset=len(loader.dataset), total=int(n)))
    dist.barrier()
    if rank == 0:
        json.dump(everything, open({out!r}, "w"))
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_uneven_val_shards_on_two_gloo_ranks_see_each_image_once_without_an_empty_batch(tmp_path):
    data = make_ids(tmp_path / "ids", 129)
    out = tmp_path / "ranks.json"
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(tests=str(ROOT / "tests"), data=str(data), out=str(out)))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["len"] for r in ranks] == [len(r["sizes"]) for r in ranks] == [2, 2]  # same count on every rank
    assert all(s > 0 for r in ranks for s in r["sizes"])                        # none empty
    assert sorted(i for r in ranks for i in r["ids"]) == list(range(129))       # each image once
    assert all(r["total"] == r["dataset"] == 129 for r in ranks)               # torchvision evaluate's check
    assert all(a == 100.0 for r in ranks for a in r["accs"])                    # no division by zero


def test_short_val_shard_splits_its_last_batch(tmp_path):
    data = make_ids(tmp_path / "ids", 9)
    sizes = []
    for shard in range(2):
        loader = DaliLoader(val_pipeline(data, batch_size=4, crop=16, resize=16, device="cpu", num_threads=1,
                                         shard_id=shard, num_shards=2))
        sizes.append([x.shape[0] for x, _ in loader])
    assert sizes == [[2, 2], [4, 1]]


# -- 4. bfloat16 out ----------------------------------------------------------------------------------------------
def test_bfloat16_images_for_timm_model_dtype(ids12):
    kw = dict(batch_size=4, crop=16, resize=16, device="cpu", num_threads=1)
    f32 = next(iter(DaliLoader(val_pipeline(ids12, **kw))))[0]
    bf16 = next(iter(DaliLoader(val_pipeline(ids12, dtype="bfloat16", **kw))))[0]
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, f32.to(torch.bfloat16))
    x, _ = next(iter(train(ids12, dtype="bfloat16", channels_last=True)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ArgumentError, match="dtype"):
        train_pipeline(ids12, batch_size=4, device="cpu", dtype="float64")


# -- 5. set_epoch before iterating --------------------------------------------------------------------------------
def test_set_epoch_decides_the_order_augmentation_and_schedule_of_the_next_epoch(ids12):
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0)
    straight = train(ids12, mix=cfg, mix_off_epoch=2, scale=(0.3, 1.0))
    epochs = [[(x.clone(), t.clone()) for x, t in straight] for _ in range(4)]
    # A resumed script: a new loader told the epoch before its first batch (torchvision, timm).
    resumed = train(ids12, mix=cfg, mix_off_epoch=2, scale=(0.3, 1.0))
    resumed.sampler.set_epoch(3)
    got = [(x, t) for x, t in resumed]
    assert all(torch.equal(a, b) and torch.equal(at, bt) for (a, at), (b, bt) in zip(epochs[3], got))
    assert all(torch.equal(t.max(dim=1).values, torch.ones(4)) for _, t in got)  # epoch 3 is past mix_off_epoch
    # Asked again after an epoch ended (its successor already prepared by DALI): the same batches.
    again = train(ids12, mix=cfg, mix_off_epoch=2, scale=(0.3, 1.0))
    for _ in again:
        pass
    again.set_epoch(1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(epochs[1], [(x, t) for x, t in again]))
    again.set_epoch(again.epoch)  # the natural next epoch: nothing to redo
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(epochs[2], [(x, t) for x, t in again]))
    with pytest.raises(ValueError, match="epoch"):
        again.set_epoch(-1)


# -- 6. peek, then iterate -----------------------------------------------------------------------------------------
def test_a_new_iter_starts_a_new_epoch_and_rest_of_epoch_continues(ids12):
    val = DaliLoader(val_pipeline(ids12, batch_size=5, crop=16, resize=16, device="cpu", num_threads=1))
    peeked = next(iter(val))[0]
    assert peeked.shape[0] == 5
    full = [i for x, _ in val for i in ids_of(x)]
    assert sorted(full) == list(range(12)) and len(val) == 3
    loader = train(ids12)
    first = ids_of(next(iter(loader))[0])
    rest = [i for x, _ in loader.rest_of_epoch() for i in ids_of(x)]
    assert sorted(first + rest) == list(range(12))
    assert loader.epoch == 1 and list(loader.rest_of_epoch()) == []
    stale = iter(loader)
    next(stale)
    newer = [i for x, _ in loader for i in ids_of(x)]  # takes the pipeline over: a whole epoch
    assert sorted(newer) == list(range(12)) and list(stale) == []


# -- 7. num_classes from the data ---------------------------------------------------------------------------------
def test_mix_config_takes_the_class_count_of_the_data(tmp_path):
    root = make_class_tree(tmp_path / "data", [2] * 10)
    _, targets = next(iter(train(root, mix=MixConfig())))
    assert targets.shape == (4, 10)
    _, targets = next(iter(train(root, mix=MixConfig(num_classes=12))))
    assert targets.shape == (4, 12)  # an explicit larger head is kept
    with pytest.raises(ArgumentError, match="num_classes=5 is smaller than the 10 classes") as err:
        train_pipeline(root, batch_size=4, device="cpu", mix=MixConfig(num_classes=5))
    assert err.value.argument == "num_classes"


# -- 8. torch's device names --------------------------------------------------------------------------------------
def test_devices_take_torch_names(ids12, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert normalize_device("cuda") == ("gpu", 0)
    assert normalize_device("cuda:1") == ("gpu", 1)
    assert normalize_device(torch.device("cuda", 3)) == ("gpu", 3)
    assert normalize_device(torch.device("cpu")) == ("cpu", None)
    assert normalize_device("gpu", 2) == ("gpu", 2)
    with pytest.raises(ArgumentError, match="device_id=2 contradicts"):
        normalize_device("cuda:1", 2)
    with pytest.raises(ArgumentError, match="device must be"):
        normalize_device("tpu")
    x, _ = next(iter(train(ids12, device=torch.device("cpu"))))
    assert x.device.type == "cpu"


def test_one_visible_gpu_serves_any_local_rank(monkeypatch):
    """SLURM / Kubernetes give each process one visible GPU whatever its LOCAL_RANK."""
    from nvidia.dali import backend

    from dalimix.pipelines import options

    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(backend, "GetCUDADeviceCount", lambda: 1)
    assert options.normalize_device("cuda") == ("gpu", 0)
    monkeypatch.setattr(backend, "GetCUDADeviceCount", lambda: 8)
    assert options.normalize_device("cuda") == ("gpu", 5)


# -- 9. the builders from dalimix, past a user's own pipelines module -------------------------------------------
def test_builders_import_from_dalimix_when_a_user_pipelines_module_shadows_ours(tmp_path):
    (tmp_path / "pipelines.py").write_text("raise ImportError('the user pipelines module was imported')\n")
    code = "from dalimix import train_pipeline, val_pipeline; print(train_pipeline.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "dalimix.pipelines.imagenet"


# -- 10. the compat helpers ------------------------------------------------------------------------------------------
def timm_args(data: Path, **changes) -> argparse.Namespace:
    """What timm's train.py parses by default (the flags a loader sees), for --data-dir DATA."""
    a = dict(data=None, data_dir=str(data), dataset="", train_split="train", val_split="validation",
             num_classes=3, batch_size=4, validation_batch_size=None, channels_last=False, device="cpu",
             model_dtype=None, no_aug=False, train_crop_mode=None, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3],
             hflip=0.5, vflip=0.0, color_jitter=0.4, color_jitter_prob=None, grayscale_prob=None,
             gaussian_blur_prob=None, aa=None, aug_repeats=0, aug_splits=0, jsd_loss=False, bce_loss=False,
             reprob=0.0, remode="pixel", recount=1, resplit=False, mixup=0.0, cutmix=0.0, cutmix_minmax=None,
             mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=0, smoothing=0.1,
             train_interpolation="random", seed=42, workers=1, pin_mem=False, prefetcher=True,
             distributed=False, rank=0, world_size=1, epoch_repeats=0.0, train_num_samples=None,
             input_img_mode=None, class_map="", train_img_sizes=None)
    a.update(changes)
    return argparse.Namespace(**a)


TIMM_CONFIG = {"input_size": (3, 16, 16), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}


def test_timm_loaders_from_timm_arguments(tmp_path):
    from dalimix.compat import timm_loaders

    data = make_class_tree(tmp_path / "d", [0, 0, 0])
    for split in ("train", "val"):
        make_class_tree(data / split, [4, 4, 4])
    args = timm_args(data, mixup=0.8, cutmix=1.0, mixup_off_epoch=2, model_dtype="bfloat16", channels_last=True,
                     color_jitter=0.0, train_interpolation="bilinear")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, evaluate = timm_loaders(args, TIMM_CONFIG)
    assert not [w for w in caught if "dalimix.compat" in str(w.message)]
    x, t = next(iter(train))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert t.shape == (4, 3) and torch.allclose(t.sum(dim=1), torch.ones(4))
    assert t.min() >= 0.1 / 3 - 1e-6  # timm puts --smoothing into the mixed targets
    assert train.mixup_enabled
    train.set_epoch(2)
    assert not train.mixup_enabled  # --mixup-off-epoch reached the pipeline
    assert evaluate.dataset.classes == ["class_00", "class_01", "class_02"]
    assert sum(x.shape[0] for x, _ in evaluate) == 12 and x.shape[-1] == 16
    # Without mixing, timm trains on int labels (LabelSmoothingCrossEntropy smooths in the loss).
    plain, _ = timm_loaders(timm_args(data, color_jitter=0.0, train_interpolation="bilinear"), TIMM_CONFIG)
    assert next(iter(plain))[1].dtype == torch.int64


def test_timm_loaders_name_each_flag_without_effect_and_refuse_double_mixing(tmp_path):
    from dalimix.compat import timm_loaders

    data = tmp_path / "d"
    for split in ("train", "val"):
        make_class_tree(data / split, [4, 4, 4])
    with pytest.warns(UserWarning, match="dalimix.compat") as caught:
        timm_loaders(timm_args(data, vflip=0.5, aug_splits=2, aa="rand-m9-mstd0.5-inc1"), TIMM_CONFIG)
    text = " ".join(str(w.message) for w in caught)
    assert "--vflip" in text and "--aug-splits" in text
    with pytest.raises(ArgumentError, match="--no-prefetcher"):
        timm_loaders(timm_args(data, mixup=0.2, prefetcher=False), TIMM_CONFIG)
    with pytest.raises(ArgumentError, match="square"):
        timm_loaders(timm_args(data), dict(TIMM_CONFIG, input_size=(3, 16, 20)))


def tv_args(data: Path, **changes) -> argparse.Namespace:
    """torchvision references/classification/train.py's defaults (the flags a loader sees)."""
    a = dict(data_path=str(data), device="cpu", batch_size=4, workers=1, label_smoothing=0.0, mixup_alpha=0.0,
             cutmix_alpha=0.0, auto_augment=None, ra_magnitude=9, augmix_severity=3, random_erase=0.0,
             interpolation="bilinear", val_resize_size=16, val_crop_size=16, train_crop_size=16,
             ra_sampler=False, ra_reps=3, weights=None, test_only=False, resume="", distributed=False,
             cache_dataset=False, backend="PIL", use_v2=False)
    a.update(changes)
    return argparse.Namespace(**a)


def test_torchvision_loaders_do_not_smooth_twice_and_resume_the_epoch(tmp_path):
    from dalimix.compat import torchvision_loaders

    data = tmp_path / "d"
    for split in ("train", "val"):
        make_class_tree(data / split, [4, 4, 4])
    train, test = torchvision_loaders(tv_args(data, label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0))
    dataset, train_sampler = train.dataset, train.sampler
    assert len(dataset.classes) == 3 and len(test.dataset) == 12
    train_sampler.set_epoch(0)
    for _, t in train:
        assert torch.allclose(t.sum(dim=1), torch.ones(t.shape[0]))
        # CrossEntropyLoss(label_smoothing=0.1) smooths; the targets carry no smoothing floor of their own.
        assert (t == 0).any() or (t.max(dim=1).values == 1).all()
    plain, _ = torchvision_loaders(tv_args(data, label_smoothing=0.1))
    assert next(iter(plain))[1].dtype == torch.int64
    # A resumed single-process run: the checkpoint's epoch + 1 (torchvision's start_epoch).
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 4, "args": argparse.Namespace(lr=0.1)}, ckpt)
    resumed, _ = torchvision_loaders(tv_args(data, resume=str(ckpt)))
    assert resumed.epoch == 5


def test_compat_maps_the_recipes_policies_as_their_scripts_mean_them(tmp_path):
    """timm: --aa runs the policy and turns --color-jitter off unless it is a 3a policy, --train-interpolation
    'random' picks per image; torchvision: --auto-augment ra with --ra-magnitude, erasing before mixing."""
    from dalimix.compat import timm_loaders, torchvision_loaders

    data = tmp_path / "d"
    for split in ("train", "val"):
        make_class_tree(data / split, [4, 4, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unhonoured
        deit, val = timm_loaders(timm_args(data, aa="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, reprob=0.25,
                                           color_jitter=0.4), TIMM_CONFIG)
        three, _ = timm_loaders(timm_args(data, aa="3a", color_jitter=0.3, train_interpolation="bicubic"), TIMM_CONFIG)
        tv, tv_val = torchvision_loaders(tv_args(data, auto_augment="ra", ra_magnitude=12, random_erase=0.1,
                                                 interpolation="bicubic"))
    assert "auto_augment='rand-m9-mstd0.5-inc1'" in deit.spec.settings and "color_jitter" not in deit.spec.settings
    assert "interpolation='random'" in deit.spec.settings and "re_order" not in deit.spec.settings
    assert "interpolation='bicubic'" in val.spec.settings  # timm's data_config
    assert "auto_augment='3a'" in three.spec.settings and "color_jitter=(0.3, 0.3, 0.3)" in three.spec.settings
    assert "auto_augment='ra-m12'" in tv.spec.settings and "re_order='before_mix'" in tv.spec.settings
    assert "interpolation='bicubic'" in tv_val.spec.settings
    assert next(iter(deit))[0].shape == (4, 3, 16, 16) and next(iter(tv))[0].shape == (4, 3, 16, 16)
