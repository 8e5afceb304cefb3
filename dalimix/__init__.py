"""dalimix: fast, well-regularised ImageNet input.

DALI pipelines with mixup/CutMix inside the graph, a DataLoader replacement, and manifold mixup for
PyTorch models. Names are imported lazily so that `dalimix.ops` (DALI only) never pulls in torch.

Where things live (docs/DESIGN.md): `dalimix.data` (files, sources, shards), `dalimix.ops` and
`dalimix.native` (graph operators), `dalimix.pipelines` (pipeline builders), the torch-side API here
(`DaliLoader`, `ManifoldMixup`, losses, `MixConfig`), `dalimix.train` (engine, resume, run builder),
`dalimix.tools` (profiler, tuner), `dalimix.reproduce` (the papers' comparison).
"""
from __future__ import annotations

import importlib
from typing import Any

from dalimix import moved as _moved

__version__ = "0.2.0"

_EXPORTS = {
    "MixConfig": "dalimix.config",
    "DaliLoader": "dalimix.loader",
    "ManifoldMixup": "dalimix.manifold",
    "resnet_mix_layers": "dalimix.manifold",
    "SoftTargetCrossEntropy": "dalimix.losses",
    "BinarySoftTargetCrossEntropy": "dalimix.losses",
    "PipelineSpec": "dalimix.spec",
    "train_pipeline": "dalimix.pipelines.imagenet",
    "val_pipeline": "dalimix.pipelines.imagenet",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

_moved.install()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        old = f"dalimix.{name}"
        if old in _moved.MOVED:  # `dalimix.engine` as an attribute of an imported dalimix
            return importlib.import_module(old)
        raise AttributeError(f"module 'dalimix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
