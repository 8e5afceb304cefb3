"""The up-front file check at scale: native and Python verdicts agree, results are cached by path, size and
modification time, a bad cache is never trusted, concurrent ranks leave one valid cache."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import make_class_tree
from dalimix.data import check_cache, dataset
from dalimix.data.dataset import scan_folder, sniff_problem
from dalimix.native.files import checker

CASES = {"ok.jpg": b"\xff\xd8\xff\xe0" + b"x" * 100 + b"\xff\xd9", "cut.jpg": b"\xff\xd8\xff\xe0" + b"x" * 100,
         "empty.jpg": b"", "text.jpg": b"hello world", "png.png": b"\x89PNG\r\n\x1a\n" + b"0" * 20,
         "webp.webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ", "pnm.ppm": b"P6\n3 3\n255\n", "pnmbad.ppm": b"P6x",
         "tiny.jpg": b"\xff\xd8\xff", "eoi_far.jpg": b"\xff\xd8\xff\xff\xd9" + b"y" * 5000,
         "eoi_near.jpg": b"\xff\xd8\xff" + b"y" * 5000 + b"\xff\xd9" + b"z" * 100}


def _files(tmp_path: Path) -> list[str]:
    out = []
    for name, data in CASES.items():
        (tmp_path / name).write_bytes(data)
        out.append(str(tmp_path / name))
    os.symlink("/nonexistent/file", tmp_path / "dangling.jpg")
    return out + [str(tmp_path / "dangling.jpg"), str(tmp_path / "missing.jpg")]


def test_native_and_python_checks_give_sniff_problems_verdicts(tmp_path, monkeypatch):
    files = _files(tmp_path)
    want = [sniff_problem(f) for f in files]
    assert want.count(None) == 5  # ok, png, webp, pnm, eoi_near
    native = checker()
    if native is not None:
        assert native.check(files, 3) == want
        sizes, mtimes, errs = native.stat(files, 2)
        assert sizes[0] == len(CASES["ok.jpg"]) and mtimes[0] == os.stat(files[0]).st_mtime_ns
        assert sizes[-1] == -1 and errs[-1] != 0
    monkeypatch.setattr("dalimix.native.files.checker", lambda: None)
    assert dataset.check_files(files, workers=3) == want
    sizes, mtimes = check_cache.stat_files(files, 2)
    assert sizes[0] == len(CASES["ok.jpg"]) and sizes[-1] == -1


@pytest.fixture
def counted(monkeypatch):
    """Counts the files that are actually checked (not answered from the cache)."""
    seen: list[str] = []
    real = dataset.check_files

    def check(files, **kw):
        seen.extend(files)
        return real(files, **kw)
    monkeypatch.setattr(dataset, "check_files", check)
    return seen


def _tree(tmp_path: Path) -> Path:
    root = make_class_tree(tmp_path / "data", [5, 5, 5])
    (root / "class_01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 no end marker")
    return root


def test_a_restart_checks_only_what_changed(tmp_path, counted):
    root = _tree(tmp_path)
    with pytest.warns(UserWarning, match="excluded 1 bad file"):
        first = scan_folder(root)
    assert len(counted) == 16 and (root / check_cache.NAME).is_file()
    counted.clear()
    with pytest.warns(UserWarning, match="excluded 1 bad file") as record:
        again = scan_folder(root)
    assert counted == [] and again.files == first.files and again.excluded == first.excluded
    assert "broken.jpg: JPEG cut short" in str(record[0].message)  # the same warning as the first start
    # a changed file (size and time), a new one, a removed one, and the bad file repaired
    changed = root / "class_00" / "img_000.jpg"
    changed.write_bytes(b"not a jpeg any more")
    (root / "class_02" / "new.jpg").write_bytes(CASES["ok.jpg"])
    (root / "class_02" / "img_004.jpg").unlink()
    broken = root / "class_01" / "broken.jpg"
    broken.write_bytes(CASES["ok.jpg"])
    os.utime(broken, ns=(os.stat(broken).st_atime_ns, os.stat(broken).st_mtime_ns + 10 ** 9))
    counted.clear()
    with pytest.warns(UserWarning, match="excluded 1 bad file") as record:
        third = scan_folder(root)
    assert sorted(map(os.path.basename, counted)) == ["broken.jpg", "img_000.jpg", "new.jpg"]
    assert "img_000.jpg: not an image" in str(record[0].message)
    assert str(broken) in third.files and str(changed) not in third.files
    counted.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="excluded 1"):
            scan_folder(root)
    assert counted == []


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated_arrays"])
def test_a_bad_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, counted, damage):
    root = _tree(tmp_path)
    with pytest.warns(UserWarning):
        first = scan_folder(root)
    cache = root / check_cache.NAME
    if damage == "garbage":
        cache.write_bytes(b"\x00garbage" * 10)
    elif damage == "foreign":
        other = _tree(tmp_path / "other")
        with pytest.warns(UserWarning):
            scan_folder(other)
        cache.write_bytes((other / check_cache.NAME).read_bytes())
    else:
        with np.load(cache) as z:
            data = dict(z)
        data["sizes"] = data["sizes"][:3]
        np.savez(open(cache, "wb"), **data)
    counted.clear()
    with pytest.warns(UserWarning) as record:
        again = scan_folder(root)
    messages = [str(w.message) for w in record]
    assert any("ignoring the file-check cache" in m for m in messages), messages
    assert len(counted) == 16 and again.files == first.files and again.excluded == first.excluded
    counted.clear()
    with pytest.warns(UserWarning, match="excluded 1"):
        scan_folder(root)
    assert counted == []  # rewritten, and trusted again


def test_a_read_only_data_folder_keeps_its_cache_in_the_user_cache(tmp_path, monkeypatch, counted):
    root = _tree(tmp_path)
    monkeypatch.setenv("DALIMIX_CACHE", str(tmp_path / "usercache"))
    monkeypatch.setattr(check_cache.os, "access", lambda path, mode: False)
    with pytest.warns(UserWarning):
        scan_folder(root)
    assert not (root / check_cache.NAME).exists()
    assert len(list((tmp_path / "usercache" / "checks").glob("*.npz"))) == 1
    counted.clear()
    with pytest.warns(UserWarning):
        scan_folder(root)
    assert counted == []


def test_concurrent_ranks_leave_one_valid_cache(tmp_path):
    root = make_class_tree(tmp_path / "data", [40, 40, 40, 40])
    code = ("import sys, json; from dalimix.data.dataset import scan_folder; "
            "d = scan_folder(sys.argv[1]); print(json.dumps(d.files))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    assert [p.name for p in root.iterdir() if p.name.startswith(check_cache.NAME)] in (
        [check_cache.NAME, check_cache.NAME + ".lock"], [check_cache.NAME + ".lock", check_cache.NAME])
    data = check_cache._load(root / check_cache.NAME, str(root))
    assert data is not None and len(data["sizes"]) == 160


@pytest.mark.parametrize("shards", [1, 3])
def test_reads_in_flight_keep_batches_identical(tmp_path, shards):
    """Every setting yields the same files, bytes, order and labels, across epochs and after a resume."""
    from dalimix.data.source import FileSource
    root = make_class_tree(tmp_path / "data", [9, 7, 11])
    ds = scan_folder(root, verify=False)

    def batches(k, shard, start_epoch=0, epochs=(0, 1)):
        src = FileSource(ds.files, ds.labels, batch_size=4, shard_id=shard, num_shards=shards, seed=1,
                         reads_in_flight=k, start_epoch=start_epoch)
        out = []
        for e in epochs:
            for it in range(src.batches_per_epoch):
                data, labels = src._read(e, it), src.labels[src.batch_indices(e, it)]
                out.append(([d.tobytes() for d in data], labels.tolist(), src.batch_files(e, it)))
        return out
    for shard in range(shards):
        one = batches(1, shard)
        for k in (2, 4, 16):
            assert batches(k, shard) == one
        assert batches(12, shard, start_epoch=1, epochs=(1,)) == one[len(one) // 2:]
    from dalimix.validation import ArgumentError
    with pytest.raises(ArgumentError, match="reads_in_flight"):
        FileSource(ds.files, ds.labels, batch_size=4, reads_in_flight=0)


def test_auto_reads_in_flight_follow_the_storage(tmp_path, monkeypatch):
    """By default a batch is read one file at a time while files read fast, and several at once when each
    read is slow (simulated latency); the batches are the same either way."""
    import time as _time

    from dalimix.data import source as source_mod
    from dalimix.data.source import FileSource
    root = make_class_tree(tmp_path / "data", [12, 12])
    ds = scan_folder(root, verify=False)
    fast = FileSource(ds.files, ds.labels, batch_size=8, seed=2)
    want = [[d.tobytes() for d in fast._read(0, it)] for it in range(3)]
    assert fast._file_pool is None  # local files: no threads
    real = np.fromfile

    def slow(*args, **kw):
        _time.sleep(0.002)
        return real(*args, **kw)
    monkeypatch.setattr(source_mod.np, "fromfile", slow)
    slow_source = FileSource(ds.files, ds.labels, batch_size=8, seed=2)
    got = [[d.tobytes() for d in slow_source._read(0, it)] for it in range(3)]
    assert got == want and slow_source._file_pool is not None


def test_a_restart_of_an_unchanged_tree_skips_the_walk_and_sees_every_change(tmp_path, monkeypatch):
    root = make_class_tree(tmp_path / "data", [4, 4, 4])
    walks = []
    real = dataset._walk
    monkeypatch.setattr(dataset, "_walk", lambda *a, **k: walks.append(1) or real(*a, **k))
    first = scan_folder(root)
    assert len(walks) == 1
    again = scan_folder(root)
    assert len(walks) == 1 and (again.files, again.labels, again.classes) == (first.files, first.labels,
                                                                               first.classes)
    (root / "class_01" / "deeper").mkdir()
    (root / "class_01" / "deeper" / "x.jpg").write_bytes((root / "class_00" / "img_000.jpg").read_bytes())
    third = scan_folder(root)
    assert len(walks) == 2 and str(root / "class_01" / "deeper" / "x.jpg") in third.files
    (root / "class_01" / "deeper" / "y.jpg").write_bytes((root / "class_00" / "img_000.jpg").read_bytes())
    fourth = scan_folder(root)  # a change in a nested folder is seen too
    assert len(walks) == 3 and str(root / "class_01" / "deeper" / "y.jpg") in fourth.files
    scan_folder(root, classes=["class_02", "class_01", "class_00"])  # other labels: walked again
    assert len(walks) == 4
    assert scan_folder(root, verify=False).files == fourth.files


def test_peers_of_one_job_take_a_fresh_cache_and_a_later_scan_here_still_sees_changes(tmp_path, counted):
    root = make_class_tree(tmp_path / "data", [6, 6])
    code = "import sys; from dalimix.data.dataset import scan_folder; scan_folder(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)  # a peer made the cache just now
    first = scan_folder(root)
    assert counted == []  # taken as is: this process started before the peer wrote it
    inplace = root / "class_01" / "img_002.jpg"
    inplace.write_bytes(b"\xff\xd8\xff\xe0 cut short")  # same folder: its time does not change
    with pytest.warns(UserWarning, match="img_002.jpg: JPEG cut short"):
        again = scan_folder(root)  # the cache is not this process's: validated, the change seen
    assert counted == [str(inplace)] and len(again.files) == len(first.files) - 1
    counted.clear()
    inplace.write_bytes((root / "class_00" / "img_000.jpg").read_bytes())
    third = scan_folder(root)  # confirmed by this process before: checked again, not taken as fresh
    assert counted == [str(inplace)] and len(third.files) == len(first.files)
