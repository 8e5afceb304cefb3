"""DALI graph operators (no torch): mixup / CutMix, targets, random erasing."""
from dalimix.config import MixConfig
from dalimix.ops.mix import mix
from dalimix.ops.targets import smoothed_targets

__all__ = ["MixConfig", "mix", "smoothed_targets"]
