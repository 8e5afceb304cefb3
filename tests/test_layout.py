"""The package's public import paths: the contract's names, the builders from `dalimix` itself, and the
module paths of dalimix 0.1 that moved (they import, as the same module objects, with a DeprecationWarning)."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from dalimix.moved import MOVED


def test_contract_imports_are_the_same_objects():
    import pipelines.imagenet as public
    from dalimix import DaliLoader, ManifoldMixup, MixConfig, SoftTargetCrossEntropy, train_pipeline, val_pipeline
    from dalimix.ops import mix
    from dalimix.pipelines import imagenet

    assert train_pipeline is public.train_pipeline is imagenet.train_pipeline
    assert val_pipeline is public.val_pipeline is imagenet.val_pipeline
    assert all(callable(x) for x in (DaliLoader, ManifoldMixup, MixConfig, SoftTargetCrossEntropy, mix))


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_module_paths_import_with_a_deprecation_warning(old, new):
    # A fresh interpreter: the old name must not be in sys.modules already.
    code = (f"import warnings, importlib\n"
            f"with warnings.catch_warnings(record=True) as w:\n"
            f"    warnings.simplefilter('always')\n"
            f"    old = importlib.import_module({old!r})\n"
            f"new = importlib.import_module({new!r})\n"
            f"assert old is new, (old, new)\n"
            f"assert new.__spec__.name == {new!r}, new.__spec__.name\n"
            f"msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]\n"
            f"assert any({old!r} in m and {new!r} in m for m in msgs), msgs\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_old_names_as_attributes_and_from_imports():
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import dalimix\n"
            "    engine = dalimix.engine\n"
            "    from dalimix.engine import convert_checkpoint\n"
            "    from dalimix import shards\n"
            "import dalimix.train, dalimix.data.shards\n"
            "assert engine is dalimix.train and convert_checkpoint is dalimix.train.convert_checkpoint\n"
            "assert shards is dalimix.data.shards\n"
            "msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]\n"
            "assert any('dalimix.engine has moved to dalimix.train' in m for m in msgs), msgs\n"
            "assert any('dalimix.shards has moved to dalimix.data.shards' in m for m in msgs), msgs\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_torch_below_the_graph_layer():
    """dalimix.ops, dalimix.native, dalimix.data and dalimix.pipelines never import torch."""
    code = ("import sys\n"
            "import dalimix.ops, dalimix.native, dalimix.data.dataset, dalimix.data.source, dalimix.data.shards\n"
            "import dalimix.pipelines.imagenet, dalimix.pipelines.stages, pipelines.imagenet\n"
            "from dalimix import train_pipeline, MixConfig\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_module_imports():
    import pkgutil

    import dalimix

    for info in pkgutil.walk_packages(dalimix.__path__, "dalimix."):
        if ".native.src" not in info.name:
            importlib.import_module(info.name)
