"""Repeated augmentation (`train_pipeline(repeats=R)`): DeiT's RASampler / torchvision's --ra-sampler meaning,
per shard and per epoch, seeded, exact on resume, refused by name where it cannot be done."""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import pytest

from conftest import make_class_tree
from dalimix import DaliLoader
from dalimix.data.source import FileSource
from dalimix.pipelines.imagenet import train_pipeline
from dalimix.validation import ArgumentError


def _source(n, *, repeats, shard=0, shards=1, batch=8, seed=3, start_epoch=0):
    return FileSource([f"f{i}" for i in range(n)], [i % 5 for i in range(n)], batch_size=batch, shard_id=shard,
                      num_shards=shards, seed=seed, repeats=repeats, start_epoch=start_epoch)


def _epoch(n, repeats, shards, epoch=0, **kw):
    return [_source(n, repeats=repeats, shard=s, shards=shards, **kw).epoch_indices(epoch) for s in range(shards)]


@pytest.mark.parametrize("n,repeats,shards", [(240, 3, 1), (240, 3, 2), (240, 3, 4), (241, 2, 8), (300, 4, 3)])
def test_an_epoch_keeps_its_length_and_holds_each_image_r_times(n, repeats, shards):
    plain = _epoch(n, 1, shards)
    per_rank = _epoch(n, repeats, shards)
    assert [len(r) for r in per_rank] == [len(r) for r in plain]  # the same length per rank as without repeats
    counts = Counter(np.concatenate(per_rank).tolist())
    # DeiT's list: the order's images R times in a row, dealt with a stride; only the last image may be cut short
    assert sum(c == repeats for c in counts.values()) >= len(counts) - 1
    assert abs(len(counts) - sum(len(r) for r in per_rank) / repeats) <= 1
    if shards >= repeats:  # the copies of an image go to different ranks
        for rank in per_rank:
            assert len(set(rank.tolist())) == len(rank)


def test_copies_on_one_rank_never_share_a_batch_and_the_order_is_seeded():
    n, repeats, batch = 240, 3, 16
    idx = _epoch(n, repeats, 1, batch=batch)[0]
    for b in range(len(idx) // batch):
        chunk = idx[b * batch:(b + 1) * batch]
        assert len(set(chunk.tolist())) == batch, f"batch {b} holds a repeated image"
    # two ranks, three copies: each rank holds one or two copies of an image, apart
    for rank in _epoch(n, repeats, 2, batch=batch):
        for b in range(len(rank) // batch):
            chunk = rank[b * batch:(b + 1) * batch]
            assert len(set(chunk.tolist())) == batch
    again = _epoch(n, repeats, 1, batch=batch)[0]
    np.testing.assert_array_equal(idx, again)  # a resumed run (a new source at that epoch) reads the same
    other_epoch = _epoch(n, repeats, 1, epoch=1, batch=batch)[0]
    assert not np.array_equal(idx, other_epoch)
    other_seed = _epoch(n, repeats, 1, batch=batch, seed=4)[0]
    assert not np.array_equal(idx, other_seed)
    # the rounds are not the same sequence of images over again (batch composition varies)
    third = len(idx) // repeats
    assert not np.array_equal(idx[:third], idx[third:2 * third])


def test_repeats_one_is_the_plain_order_and_bad_values_are_named():
    np.testing.assert_array_equal(_epoch(200, 1, 3)[1], FileSource([f"f{i}" for i in range(200)], [0] * 200,
                                                                   batch_size=8, shard_id=1, num_shards=3,
                                                                   seed=3).epoch_indices(0))
    with pytest.raises(ArgumentError, match="repeats"):
        _source(10, repeats=0)
    with pytest.raises(ArgumentError, match="repeats"):
        FileSource(["a", "b"], [0, 1], batch_size=1, drop_last=False, shuffle=False, repeats=2)


def test_the_train_pipeline_repeats_and_resumes_exactly(tmp_path):
    root = make_class_tree(tmp_path / "d", [12, 12, 12, 12])

    def loader(first_epoch=0):
        return DaliLoader(train_pipeline(root, batch_size=8, crop=16, device="cpu", num_threads=1, seed=5,
                                         repeats=3, first_epoch=first_epoch))

    full = loader()
    epochs = []
    for epoch in range(2):
        full.set_epoch(epoch)
        epochs.append([[f for f in full.spec.source.batch_files(epoch, i)] for i in range(len(full))])
        images = [x for x, _ in full]
        assert len(images) == len(full) == 48 // 8
    files = [f for batch in epochs[0] for f in batch]
    counts = Counter(files)
    assert len(files) == 48 and set(counts.values()) == {3} and len(counts) == 16
    resumed = loader(first_epoch=1)
    assert [[f for f in resumed.spec.source.batch_files(1, i)] for i in range(len(resumed))] == epochs[1]


def test_tar_shards_refuse_repeats_by_name(tmp_path):
    from dalimix.data.shard_writer import write_shards
    root = make_class_tree(tmp_path / "d", [4, 4])
    write_shards(root, tmp_path / "shards", shard_size=4, progress=False)
    with pytest.raises(ArgumentError, match="repeats") as err:
        train_pipeline(str(tmp_path / "shards"), batch_size=2, crop=16, device="cpu", repeats=2)
    assert "folder" in str(err.value)


def test_the_scripts_repeat_flags_map_to_repeats(tmp_path, monkeypatch):
    """timm's --aug-repeats and torchvision's --ra-sampler --ra-reps (distributed runs, as torchvision does)."""
    import dalimix.compat as compat
    seen = []

    def fake_train(root, **kw):
        seen.append(kw.get("repeats", 1))
        raise StopIteration  # the builder's arguments are all this test needs

    monkeypatch.setattr("dalimix.pipelines.imagenet.train_pipeline", fake_train)
    tv = argparse.Namespace(data_path=str(tmp_path), batch_size=8, workers=1, device="cpu", mixup_alpha=0.0,
                            cutmix_alpha=0.0, random_erase=0.0, auto_augment=None, interpolation="bilinear",
                            ra_sampler=True, ra_reps=4, distributed=True, rank=0, world_size=2, gpu=None,
                            train_crop_size=16, weights=None, resume="", test_only=False)
    for distributed, want in ((True, 4), (False, 1)):
        tv.distributed = distributed
        with pytest.raises(StopIteration):
            compat.torchvision_loaders(tv)
        assert seen[-1] == want
    timm = argparse.Namespace(data_dir=str(tmp_path), dataset="", batch_size=8, workers=1, device="cpu",
                              aug_repeats=3, mixup=0.0, cutmix=0.0, cutmix_minmax=None, seed=0, aa=None,
                              color_jitter=None, train_interpolation="bilinear")
    with pytest.raises(StopIteration):
        compat.timm_loaders(timm, {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                   "crop_pct": 0.875, "interpolation": "bilinear"})
    assert seen[-1] == 3
