"""Dataset listing, file hygiene and the sharded file source (pure Python, no decoding)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import make_class_tree, write_solid
from dalimix.data.dataset import read_file_list, scan_folder, sniff_problem
from dalimix.data.source import FileSource


def test_scan_keeps_empty_folders_in_the_class_index(tmp_path):
    root = make_class_tree(tmp_path / "d", [2, 0, 3])
    ds = scan_folder(root)
    assert ds.classes == ["class_00", "class_01", "class_02"]
    assert sorted(set(ds.labels)) == [0, 2] and len(ds) == 5


def test_sniff_problem_cases(tmp_path):
    ok = write_solid(tmp_path / "ok.jpg", (1, 2, 3))
    png = write_solid(tmp_path / "p.JPEG", (1, 2, 3), fmt="PNG")
    assert sniff_problem(str(ok)) is None and sniff_problem(str(png)) is None
    (tmp_path / "e.jpg").write_bytes(b"")
    (tmp_path / "t.jpg").write_bytes(b"GIF89a not for us")
    (tmp_path / "c.jpg").write_bytes(ok.read_bytes()[:-300])
    assert sniff_problem(str(tmp_path / "e.jpg")) == "empty file"
    assert "not an image" in sniff_problem(str(tmp_path / "t.jpg"))
    assert "cut short" in sniff_problem(str(tmp_path / "c.jpg"))


def test_file_list_errors_name_the_file_and_line(tmp_path):
    root = make_class_tree(tmp_path / "d", [2])
    lst = tmp_path / "l.txt"
    lst.write_text("class_00/img_000.jpg 0\nclass_00/img_001.jpg x\n")
    with pytest.raises(ValueError, match="line 2"):
        read_file_list(lst, root)
    lst.write_text("class_00/missing.jpg 0\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_file_list(lst, root)
    lst.write_text("justonefield\n")
    with pytest.raises(ValueError, match="line 1"):
        read_file_list(lst, root)
    with pytest.raises(FileNotFoundError, match="file_list"):
        read_file_list(tmp_path / "nope.txt", root)
    lst.write_text("class_00/img_000.jpg 4\n# comment\n\nclass_00/img_001.jpg 1\n")
    ds = read_file_list(lst, root)
    assert ds.labels == [4, 1] and ds.num_classes == 5


@pytest.mark.parametrize("n,shards,batch", list(itertools.product([1, 7, 23, 64, 100], [1, 2, 3, 8], [1, 4, 9])))
def test_file_source_shards(n, shards, batch):
    files = [f"f{i}" for i in range(n)]
    labels = list(range(n))
    # val: contiguous, exact cover, equal padded length
    vals = [FileSource(files, labels, batch_size=batch, shard_id=s, num_shards=shards, shuffle=False,
                       drop_last=False) for s in range(shards)]
    assert len({v.batches_per_epoch for v in vals}) == 1
    seen = np.concatenate([v.epoch_indices(0) for v in vals])
    assert sorted(seen.tolist()) == list(range(n))
    # train: equal full batches, same order on every shard, disjoint up to padding
    if -(-n // shards) < batch:
        with pytest.raises(ValueError, match="batch_size"):
            FileSource(files, labels, batch_size=batch, num_shards=shards, seed=3)
        return
    trains = [FileSource(files, labels, batch_size=batch, shard_id=s, num_shards=shards, seed=3)
              for s in range(shards)]
    assert len({t.batches_per_epoch for t in trains}) == 1
    for epoch in (0, 1):
        parts = [t.epoch_indices(epoch) for t in trains]
        allidx = np.concatenate(parts)
        assert set(allidx.tolist()) == set(range(n))
        assert len(allidx) - n == (-n) % shards  # padding only
    assert not np.array_equal(trains[0].epoch_indices(0), trains[0].epoch_indices(1)) or n <= shards


def test_file_source_is_a_function_of_seed_and_epoch():
    files = [f"f{i}" for i in range(50)]
    a = FileSource(files, [0] * 50, batch_size=5, seed=1)
    b = FileSource(files, [0] * 50, batch_size=5, seed=1, start_epoch=3)
    assert np.array_equal(a.epoch_indices(3), b.epoch_indices(3))
    assert not np.array_equal(a.epoch_indices(3), FileSource(files, [0] * 50, batch_size=5,
                                                             seed=2).epoch_indices(3))
