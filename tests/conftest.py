"""Shared fixtures: small JPEG trees drawn here (no ../shared needed), GPU skipping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# One solid colour per class, far apart so JPEG error never confuses them.
CLASS_COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (230, 20, 230), (20, 230, 230),
                 (128, 128, 128), (250, 250, 250), (10, 10, 10), (128, 40, 200)]


def write_solid(path: Path, colour, size=(48, 40), mode="RGB", fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, tuple(colour))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt, quality=95)
    return path


def make_class_tree(root: Path, counts, sizes=((48, 40), (64, 48), (40, 56))) -> Path:
    """root/<cls_i>/<j>.jpg, solid CLASS_COLOURS[i]; `counts` images per class (0 makes an empty folder)."""
    for c, n in enumerate(counts):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            write_solid(folder / f"img_{j:03d}.jpg", CLASS_COLOURS[c], size=sizes[j % len(sizes)])
    return root


def id_colour(i: int):
    return (10 + 5 * i, 128, 250 - 5 * i)


def make_id_tree(root: Path, n: int, classes: int = 3) -> Path:
    """n solid images whose red channel encodes a file id (10 + 5*id), spread over `classes` folders."""
    for i in range(n):
        write_solid(root / f"c{i % classes}" / f"f{i:03d}.jpg", id_colour(i), size=(40, 40))
    return root


def decode_ids(images) -> list[int]:
    """Invert id_colour from normalised NCHW val images."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    red = images[:, 0].float().mean(dim=(1, 2)).cpu().numpy() * std[0] + mean[0]
    return [int(round((r * 255 - 10) / 5)) for r in red]


@pytest.fixture
def class_tree(tmp_path):
    return make_class_tree(tmp_path / "data", [6, 5, 7, 0, 4])
