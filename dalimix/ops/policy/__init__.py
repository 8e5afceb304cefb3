"""Per-sample augmentation policies in the DALI graph: timm's RandAugment strings and 3-Augment, torchvision's
RandAugment, TrivialAugmentWide and AutoAugment(IMAGENET), and colour jitter, with their libraries' meaning.

`spec` parses the names, `program` turns each sample's random draws into the ops and arguments its policy
applies (the NumPy twin of the native parameter step), `apply` runs a program on an image with PIL's
semantics (the reference, and the fallback where no compiler is found), and `graph` puts it all in a
pipeline. No torch here.
"""
from dalimix.ops.policy.spec import JitterSpec, PolicySpec, parse_color_jitter, parse_policy

__all__ = ["PolicySpec", "JitterSpec", "parse_policy", "parse_color_jitter"]
