"""Readable class names: ImageNet category names by index for the 1000 WordNet IDs, folder names otherwise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dalimix.data.class_names import imagenet_categories, is_imagenet_wnids, readable_names

ROOT = Path(__file__).resolve().parents[1]
# Real ImageNet WordNet IDs at known sorted positions (the first three, a beagle, the last one).
KNOWN = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 2: ("n01484850", "great white shark"),
         162: ("n02088364", "beagle"), 999: ("n15075141", "toilet tissue")}


def wnids() -> list[str]:
    """1000 sorted WordNet-ID-shaped names with the known ones at their ImageNet positions (the others
    spread evenly between them)."""
    anchors = sorted((i, int(wnid[1:])) for i, (wnid, _) in KNOWN.items())
    ids = []
    for (i0, v0), (i1, v1) in zip(anchors, anchors[1:]):
        ids += [v0 + (v1 - v0) * (k - i0) // (i1 - i0) for k in range(i0, i1)]
    ids.append(anchors[-1][1])
    ids = [f"n{v:08d}" for v in ids]
    assert len(ids) == 1000 and ids == sorted(set(ids))
    assert all(ids[i] == wnid for i, (wnid, _) in KNOWN.items())
    return ids


def test_the_1000_wordnet_ids_map_by_index():
    ids = wnids()
    assert is_imagenet_wnids(ids)
    names = readable_names(ids)
    assert len(names) == 1000 and len(set(names)) == 1000
    for i, (_, name) in KNOWN.items():
        assert names[i] == name
    assert names == list(imagenet_categories())


@pytest.mark.parametrize("change", ["fewer", "unsorted", "not_a_wnid", "duplicate", "padded"])
def test_anything_else_keeps_its_folder_names(change):
    ids = wnids()
    if change == "fewer":
        ids = ids[:999]
    elif change == "unsorted":
        ids[0], ids[1] = ids[1], ids[0]
    elif change == "not_a_wnid":
        ids[500] = "cat"
    elif change == "duplicate":
        ids[1] = ids[0]
    else:
        ids[7] = ids[7] + "x"  # nine characters after the n: not a WordNet ID
    assert not is_imagenet_wnids(ids)
    assert readable_names(ids) == ids


def test_small_datasets_keep_their_names():
    assert readable_names(["disc", "square"]) == ["disc", "square"]
    assert readable_names(["n02088364"]) == ["n02088364"]  # one WordNet ID is not ImageNet-1k
    assert readable_names([]) == []


@pytest.mark.slow
def test_the_preview_captions_use_readable_names(tmp_path):
    """The preview grid of a dataset with the 1000 WordNet ID folders is captioned with category names."""
    from PIL import Image

    data = tmp_path / "imagenet"
    ids = wnids()
    for i, wnid in enumerate(ids):
        (data / wnid).mkdir(parents=True)
    for i in (162, 0):  # images only in two classes; empty folders keep the other labels in place
        for j in range(4):
            Image.new("RGB", (40 + j, 32), (40 * j, 100, 200)).save(data / ids[i] / f"{j}.JPEG", quality=90)
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/preview_mix.py"), "--data", str(data), "--out",
                           str(out), "--count", "4", "--crop", "32", "--print-captions"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "beagle" in proc.stdout and "tench" in proc.stdout and "n02088364" not in proc.stdout
    assert Image.open(out).size[0] > 100
