"""Moved to `dalimix.pipelines.stages` (the profiler's truncated train graphs); this path works until dalimix 0.3."""
from dalimix.moved import warn_moved
from dalimix.pipelines.stages import *  # noqa: F401,F403
from dalimix.pipelines.stages import __all__  # noqa: F401

warn_moved("pipelines.profiling", "dalimix.pipelines.stages", stacklevel=2)
