"""dalimix: fast, well-regularised ImageNet input.

DALI pipelines with mixup/CutMix inside the graph, a DataLoader replacement, and manifold mixup for
PyTorch models. Names are imported lazily so that `dalimix.ops` (DALI only) never pulls in torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MixConfig": "dalimix.config",
    "DaliLoader": "dalimix.loader",
    "ManifoldMixup": "dalimix.manifold",
    "resnet_mix_layers": "dalimix.manifold",
    "SoftTargetCrossEntropy": "dalimix.losses",
    "BinarySoftTargetCrossEntropy": "dalimix.losses",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dalimix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
