"""DALI pipeline builders: the ImageNet train and val pipelines (`imagenet`) and the profiler's truncated
train graphs (`stages`). They compose dalimix's data sources (`dalimix.data`) and graph operators
(`dalimix.ops`, `dalimix.native`) into a `dalimix.spec.PipelineSpec`. No torch here.

`train_pipeline` and `val_pipeline` are also `from dalimix import train_pipeline, val_pipeline` and, as
before, `from pipelines.imagenet import train_pipeline, val_pipeline`.
"""
