"""The public path of the ImageNet pipeline builders: `from pipelines.imagenet import train_pipeline, val_pipeline`.

They live in `dalimix.pipelines.imagenet` (also `from dalimix import train_pipeline, val_pipeline`, which no
`pipelines` package of your own on the path can shadow); this module hands out the same objects.
"""
from dalimix.pipelines.imagenet import *  # noqa: F401,F403
from dalimix.pipelines.imagenet import __all__  # noqa: F401
