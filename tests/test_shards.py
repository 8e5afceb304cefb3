"""Tar-shard datasets: the converter, DALI's webdataset reader behind the same pipelines, and their contract."""
from __future__ import annotations

import io
import os
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASS_COLOURS, decode_ids, make_class_tree, make_id_tree
from dalimix import DaliLoader, MixConfig
from dalimix.data import shards
from dalimix.data.dataset import DecodeError
from dalimix.data.shard_writer import balanced_order, write_shards
from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _jpeg(colour, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar(path, members, fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _colour_class(images: torch.Tensor) -> list[int]:
    """Class of solid CLASS_COLOURS images (normalised NCHW) by nearest colour."""
    rgb = images.float().mean(dim=(2, 3)).numpy() * STD + MEAN
    palette = np.array(CLASS_COLOURS, np.float64) / 255
    return [int(np.argmin(((palette - c) ** 2).sum(1))) for c in rgb]


def test_expand_braces_and_resolve(tmp_path):
    assert shards.expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert shards.expand_braces("{x,y}-{1..2}.tar") == ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar"]
    _tar(tmp_path / "s-0.tar", [("k.cls", b"0")])
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shard\(s\) do not exist.*s-1.tar"):
        shards.resolve_shards(str(tmp_path / "s-{0..1}.tar"))
    assert shards.resolve_shards(tmp_path) == [str(tmp_path / "s-0.tar")]
    assert shards.is_shard_spec(tmp_path) and not shards.is_shard_spec(make_class_tree(tmp_path / "tree", [1]))


def test_converter_keeps_labels_and_balances_classes(tmp_path):
    tree = make_class_tree(tmp_path / "tree", [9, 6, 12, 0, 3])
    meta = write_shards(tree, tmp_path / "sh", shard_size=6, progress=False)
    assert meta["samples"] == 30 and meta["shards"] == 5 and meta["counts"]["class_03"] == 0
    assert sorted(os.listdir(tmp_path / "sh"))[:2] == [".make-shards-plan.json", "classes.json"]
    per_shard = []
    for path in meta["paths"]:
        with tarfile.open(path) as tar:
            labels = [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
        per_shard.append(np.bincount(labels, minlength=5))
    share = np.array([9, 6, 12, 0, 3]) / 30
    for counts in per_shard:  # every shard holds the classes in about their proportion
        assert np.all(np.abs(counts - 6 * share) <= 1.5), counts
    # Labels survive the round trip: every image's colour is its label's.
    loader = DaliLoader(val_pipeline(tmp_path / "sh", batch_size=4, crop=16, resize=16, device="cpu", num_threads=1))
    assert loader.classes == [f"class_{i:02d}" for i in range(5)]
    seen = 0
    for images, labels in loader:
        assert _colour_class(images) == labels.tolist()
        seen += len(labels)
    assert seen == 30


def test_balanced_order_is_a_seeded_permutation():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    a, b, c = balanced_order(labels, 1), balanced_order(labels, 1), balanced_order(labels, 2)
    assert sorted(a.tolist()) == list(range(100)) and a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_converter_resumes_after_an_interruption(tmp_path, monkeypatch):
    tree = make_class_tree(tmp_path / "tree", [7, 7])
    whole = write_shards(tree, tmp_path / "whole", shard_size=4, progress=False)
    import dalimix.data.shard_writer as sw
    real, calls = sw._add, {"n": 0}

    def dying(tar, name, payload):
        calls["n"] += 1
        if calls["n"] == 19:  # in the middle of the third shard (8 members a shard)
            raise KeyboardInterrupt
        real(tar, name, payload)

    monkeypatch.setattr(sw, "_add", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tree, tmp_path / "resumed", shard_size=4, progress=False)
    assert (tmp_path / "resumed" / "shard-000002.tar.tmp").exists()
    monkeypatch.setattr(sw, "_add", real)
    done = write_shards(tree, tmp_path / "resumed", shard_size=4, progress=False)
    for a, b in zip(whole["paths"], done["paths"]):
        assert open(a, "rb").read() == open(b, "rb").read()


def test_bad_members_are_left_out_and_named(tmp_path):
    good = _jpeg(CLASS_COLOURS[1])
    cut = good[: len(good) // 2]
    _tar(tmp_path / "bad.tar", [
        ("a.jpg", good), ("a.cls", b"1"),
        ("b.jpg", b""), ("b.cls", b"1"),
        ("c.jpg", b"hello, not an image"), ("c.cls", b"1"),
        ("d.jpg", cut), ("d.cls", b"1"),
        ("e.jpg", good),                       # no label
        ("f.jpg", good), ("f.cls", b"one"),    # a label that is not a number
        ("g.jpeg", good), ("g.cls", b" 1\n"),
    ])
    with pytest.warns(UserWarning) as record:
        spec = val_pipeline(tmp_path / "bad.tar", batch_size=2, crop=16, resize=16, device="cpu", num_threads=1)
    msg = "\n".join(str(w.message) for w in record)
    for name, why in (("b.jpg", "empty file"), ("c.jpg", "not an image"), ("d.jpg", "JPEG cut short"),
                      ("e", "no .cls label member"), ("f.cls", "label is not a non-negative integer")):
        assert f"bad.tar:{name}: {why}" in msg, msg
    labels = torch.cat([y for _, y in DaliLoader(spec)])
    assert labels.tolist() == [1, 1]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_pax_and_gnu_long_names_are_indexed(tmp_path, fmt):
    long_dir = "x" * 120 + "/"
    members = []
    for i in range(5):
        members += [(f"{long_dir}s{i}.jpg", _jpeg(CLASS_COLOURS[i % 3])), (f"{long_dir}s{i}.cls", str(i % 3).encode())]
    _tar(tmp_path / "long.tar", members, fmt)
    loader = DaliLoader(val_pipeline(tmp_path / "long.tar", batch_size=5, crop=16, resize=16, device="cpu",
                                     num_threads=1))
    images, labels = next(iter(loader))
    assert labels.tolist() == [0, 1, 2, 0, 1] and _colour_class(images) == [0, 1, 2, 0, 1]


@pytest.fixture(scope="module")
def id_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    make_id_tree(root / "tree", 23)
    write_shards(root / "tree", root / "sh", shard_size=5, progress=False)
    return root / "sh"


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_val_over_ranks_covers_each_sample_once_with_equal_lengths(id_shards, ranks):
    seen, lengths = [], []
    for r in range(ranks):
        loader = DaliLoader(val_pipeline(id_shards, batch_size=4, crop=16, resize=16, device="cpu", num_threads=1,
                                         shard_id=r, num_shards=ranks))
        batches = [x for x, _ in loader]
        lengths.append((len(loader), len(batches)))
        seen += [i for x in batches if len(x) for i in decode_ids(x)]
    assert sorted(seen) == list(range(23))
    assert len({n for pair in lengths for n in pair}) == 1  # same len() and batch count on every rank


@pytest.mark.parametrize("ranks", [2, 3])
def test_train_ranks_yield_equal_full_batches_and_see_every_sample(id_shards, ranks):
    counts, ids = [], []
    for r in range(ranks):
        loader = DaliLoader(train_pipeline(id_shards, batch_size=3, crop=16, device="cpu", num_threads=1, seed=4,
                                           shard_id=r, num_shards=ranks, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                           flip_prob=0.0))
        batches = [x for x, _ in loader]
        assert all(len(x) == 3 for x in batches)
        counts.append((len(loader), len(batches)))
        ids += [i for x in batches for i in decode_ids(x)]
    assert len(set(counts)) == 1
    assert len(set(ids)) >= 23 - ranks * 3  # only the dropped partial batches' samples may be missing


def test_resume_from_a_dali_checkpoint_equals_an_uninterrupted_run(id_shards):
    kw = dict(batch_size=4, crop=16, device="cpu", num_threads=1, seed=7, mix=MixConfig(num_classes=3))
    straight = DaliLoader(train_pipeline(id_shards, **kw))
    expect = [[(x.clone(), t.clone()) for x, t in straight] for _ in range(2)]
    first = DaliLoader(train_pipeline(id_shards, **kw))
    for _ in first:
        pass
    state = first.checkpoint()
    resumed = DaliLoader(train_pipeline(id_shards, first_epoch=0, checkpoint=state, **kw))
    resumed.epoch = 1
    got = [(x, t) for x, t in resumed]
    assert len(got) == len(expect[1])
    for (a, at), (b, bt) in zip(expect[1], got):
        assert torch.equal(a, b) and torch.equal(at, bt)


def test_mixing_and_the_fused_operator_run_on_shards(id_shards):
    loader = DaliLoader(train_pipeline(id_shards, batch_size=4, crop=16, device="cpu", num_threads=1, seed=1,
                                       mix=MixConfig(num_classes=3, mode="elem"), re_prob=0.5))
    targets = torch.cat([t for _, t in loader])
    assert targets.shape[1] == 3 and torch.allclose(targets.sum(1), torch.ones(len(targets)), atol=1e-5)


def test_a_decode_error_inside_a_shard_names_the_shard_and_the_member(tmp_path):
    good = _jpeg(CLASS_COLOURS[0])
    broken = good[:2] + b"\xff\xdb" + os.urandom(200) + good[-2:]  # SOI ... EOI: passes the checks, fails decode
    _tar(tmp_path / "s.tar", [("a.jpg", good), ("a.cls", b"0"), ("b.jpg", broken), ("b.cls", b"0"),
                              ("c.jpg", good), ("c.cls", b"0")])
    loader = DaliLoader(val_pipeline(tmp_path / "s.tar", batch_size=3, crop=16, resize=16, device="cpu",
                                     num_threads=1))
    with pytest.raises(DecodeError) as err:
        for _ in loader:
            pass
    assert f"{tmp_path / 's.tar'}:b.jpg" in str(err.value)


def test_index_goes_to_the_user_cache_when_the_shard_folder_is_read_only(tmp_path, monkeypatch, id_shards):
    monkeypatch.setenv("DALIMIX_CACHE", str(tmp_path / "cache"))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(id_shards) and m == os.W_OK else real(p, m))
    ix = shards.index_shards(shards.resolve_shards(id_shards), progress=False)
    assert all(str(i.index_path).startswith(str(tmp_path / "cache" / "wds-index")) for i in ix)
    assert sum(i.samples for i in ix) == 23


def test_train_script_reads_shards(tmp_path):
    import subprocess
    import sys
    tree = make_class_tree(tmp_path / "tree", [6, 6])
    for split in ("train", "val"):
        write_shards(tree, tmp_path / "data" / split, shard_size=5, progress=False)
    with warnings.catch_warnings():
        proc = subprocess.run([sys.executable, "-m", "dalimix_scripts.train_imagenet", "--data", str(tmp_path / "data"),
                               "--device", "cpu", "--arch", "resnet18", "--epochs", "1", "--batch-size", "4",
                               "--crop", "32", "--threads", "1", "--no-progress"],
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 train / 12 val images" in proc.stdout
