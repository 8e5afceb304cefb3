"""DALI graph operators (no torch): mixup / CutMix, targets, random erasing.

Importing this package loads dalimix's native DALI plugin (`dalimix.native`, built on first use), which
adds `fn.dalimix.resample_mix`, `fn.dalimix.mix_params` and `fn.dalimix.erase_params` to DALI.
"""
from dalimix import native
from dalimix.config import MixConfig
from dalimix.ops.mix import mix
from dalimix.ops.targets import smoothed_targets

native.load()

__all__ = ["MixConfig", "mix", "smoothed_targets"]
