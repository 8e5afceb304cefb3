"""No silent wrong results (issue 15) and checkpoints that cannot run code (issue 17).

One test per case: class names map to the same indices everywhere, outputs agree after a crash between
any two writes (or resume repairs them), resuming with another batch size rescales the schedule, file
lists stay inside their root, ManifoldMixup decides by the wrapper's mode, a dead rank on another node is
named, resuming from best.pt does not silently drop later epochs, BOM file lists; and a checkpoint whose
pickle would run code is refused by the library and by `--resume`, without running it.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_class_tree
from dalimix import DaliLoader, ManifoldMixup
from dalimix import engine
from dalimix.dataset import read_file_list, scan_folder
from dalimix.distributed import DistContext

ROOT = Path(__file__).resolve().parents[1]


# -- 1. classes= is honoured for folder datasets ---------------------------------------------------------------
def test_val_pipeline_labels_follow_the_given_classes_not_the_folders_found(tmp_path):
    from pipelines.imagenet import val_pipeline

    val = make_class_tree(tmp_path / "val", [2, 0, 3])  # class_01 has an empty folder: fine
    classes = ["class_02", "class_01", "class_00"]        # the given order, not sorted
    loader = DaliLoader(val_pipeline(val, batch_size=8, crop=16, resize=16, device="cpu", num_threads=1,
                                     classes=classes))
    labels = torch.cat([t for _, t in loader]).tolist()
    assert loader.classes == classes
    folders = [Path(f).parent.name for f in loader.source.files]  # val order: the listing's
    assert list(zip(folders, labels)) == [("class_02", 0)] * 3 + [("class_00", 2)] * 2
    images = torch.cat([x for x, _ in loader])  # and the pixels are those folders' colours
    red = images[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485
    assert [round(v) for v in (red * 255 / 10).tolist()] == [2] * 3 + [23] * 2  # 20 (class_02), 230 (class_00)

    (val / "class_01").rmdir()  # a val/ without a folder for a given class is an error, never a renumbering
    (val / "extra").mkdir()
    with pytest.raises(ValueError) as err:
        val_pipeline(val, batch_size=8, crop=16, resize=16, device="cpu", classes=classes)
    msg = str(err.value)
    assert "missing folder(s) for 1 of the given classes: 'class_01'" in msg
    assert "1 folder(s) not among the given classes: 'extra'" in msg
    with pytest.raises(ValueError, match=r"classes lists \['a'\] more than once"):
        scan_folder(val, classes=["a", "a"])


# -- 4. file lists stay inside their data root -----------------------------------------------------------------
def test_file_list_paths_leaving_the_root_are_refused_unless_allowed(tmp_path):
    data = make_class_tree(tmp_path / "data" / "train", [2])
    other = make_class_tree(tmp_path / "data" / "val", [1])
    lst = tmp_path / "list.txt"
    lst.write_text("class_00/img_000.jpg 0\n../val/class_00/img_000.jpg 0\n")
    with pytest.raises(ValueError) as err:
        read_file_list(lst, data)
    assert str(err.value) == (f"file_list {str(lst)!r} line 2: path '../val/class_00/img_000.jpg' leaves the "
                              f"data root {str(data)!r}; pass allow_outside_root=True to read files outside it")
    outside = other / "class_00" / "img_000.jpg"
    lst.write_text(f"class_00/img_001.jpg 0\n{outside} 0\n")
    with pytest.raises(ValueError, match="line 2: path .* leaves the data root"):
        read_file_list(lst, data)
    lst.write_text(f"{data / 'class_00' / 'img_001.jpg'} 0\nclass_00/./img_000.jpg 0\n")  # absolute but inside
    assert len(read_file_list(lst, data)) == 2
    lst.write_text(f"class_00/img_001.jpg 0\n{outside} 0\n../val/class_00/img_000.jpg 0\n")
    ds = read_file_list(lst, data, allow_outside_root=True)
    assert ds.files[1:] == [str(outside), str(data / "../val/class_00/img_000.jpg")] and ds.labels == [0, 0, 0]


# -- 8. a file list with a byte order mark; --data naming a file -----------------------------------------------
def test_file_list_with_a_utf8_bom_and_classes(tmp_path):
    data = make_class_tree(tmp_path / "d", [2, 1])
    lst = tmp_path / "bom.txt"
    lst.write_bytes(b"\xef\xbb\xbfclass_00/img_000.jpg 1\r\nclass_01/img_000.jpg 0\r\n")
    ds = read_file_list(lst, data, classes=["b", "a"])
    assert ds.files == [str(data / "class_00/img_000.jpg"), str(data / "class_01/img_000.jpg")]
    assert ds.labels == [1, 0] and ds.classes == ["b", "a"]
    with pytest.raises(ValueError, match="line 1: label 1 but classes has 1 names"):
        read_file_list(lst, data, classes=["b"])
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        read_file_list(lst, lst)
