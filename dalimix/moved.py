"""Old module paths that moved in dalimix 0.2, kept importing for one release with a DeprecationWarning.

dalimix 0.1 kept every module directly in `dalimix/`; 0.2 puts them in subpackages that name the layers
(`dalimix.data`, `dalimix.pipelines`, `dalimix.train`, `dalimix.tools`, `dalimix.reproduce`). Code that
still says `from dalimix import engine` or `import dalimix.dataset` gets the module at its new place, the
same module object, and one warning naming the new path. `install()` puts the finder on `sys.meta_path`
(importing `dalimix` does it); it uses only importlib's public finder and loader protocol.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

# old path -> new path
MOVED = {
    "dalimix.engine": "dalimix.train",
    "dalimix.resume": "dalimix.train.resume",
    "dalimix.distributed": "dalimix.train.distributed",
    "dalimix.curves": "dalimix.train.curves",
    "dalimix.dataset": "dalimix.data.dataset",
    "dalimix.source": "dalimix.data.source",
    "dalimix.shards": "dalimix.data.shards",
    "dalimix.shard_writer": "dalimix.data.shard_writer",
    "dalimix.synthetic": "dalimix.data.synthetic",
    "dalimix.class_names": "dalimix.data.class_names",
    "dalimix.profiling": "dalimix.tools.profiling",
    "dalimix.tuner": "dalimix.tools.tuner",
    "dalimix.preact_resnet": "dalimix.reproduce.preact_resnet",
}
REMOVAL = "dalimix 0.3"


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} has moved to {new}; the old path keeps working until {REMOVAL}", DeprecationWarning,
                  stacklevel=stacklevel)


class _AliasLoader(importlib.abc.Loader):
    """Hands out the module at its new path under the old name."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new
        self._spec = None

    def create_module(self, spec) -> ModuleType:
        warn_moved(self.old, self.new, stacklevel=8)
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # importlib stamped the old name's spec on the shared module object; give it back its own.
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, new))


def install() -> None:
    """Put the finder for the old paths on `sys.meta_path` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
