"""Human-readable class names: "beagle" rather than "n02088364" where a dataset's folders are ImageNet's.

ImageNet-1k folders are WordNet IDs (`n` and eight digits). torchvision ships the 1000 category names, in
the order of the sorted WordNet IDs (the class index every ImageNet model uses), in its weights metadata;
nothing is downloaded. torchvision carries no WordNet ID list, so names are mapped by index, and only when
the folder names are exactly 1000 distinct, sorted WordNet IDs; any other dataset keeps its folder names.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

__all__ = ["is_imagenet_wnids", "imagenet_categories", "readable_names"]

_WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000


def is_imagenet_wnids(classes: Sequence[str]) -> bool:
    """Whether `classes` (folder names, index = label) are 1000 distinct WordNet IDs in sorted order."""
    names = list(classes)
    return (len(names) == IMAGENET_CLASSES and all(isinstance(c, str) and _WNID.fullmatch(c) for c in names)
            and all(a < b for a, b in zip(names, names[1:])))


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """torchvision's 1000 ImageNet category names, index = class index of the sorted WordNet IDs."""
    from torchvision.models import ResNet50_Weights

    names = tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    if len(names) != IMAGENET_CLASSES:
        raise RuntimeError(f"torchvision's ImageNet categories hold {len(names)} names, expected {IMAGENET_CLASSES}")
    return names


def readable_names(classes: Sequence[str]) -> list[str]:
    """Names to show for `classes` (index = label): ImageNet's category names when `classes` are the 1000
    sorted WordNet IDs, else the class names as given."""
    if is_imagenet_wnids(classes):
        return list(imagenet_categories())
    return [str(c) for c in classes]
