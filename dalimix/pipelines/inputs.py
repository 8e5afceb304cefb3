"""Where a pipeline's samples come from: dalimix's file source over a folder tree or file list, or DALI's
webdataset reader over tar shards; and reading them inside a graph."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from nvidia.dali import fn, types

from dalimix import native
from dalimix import validation as V
from dalimix.data import shards
from dalimix.data.dataset import Dataset, read_file_list, scan_folder
from dalimix.data.source import FileSource

READER = "Reader"  # the name of the webdataset reader of shard pipelines (DaliLoader asks it for the epoch)

def _load(data_dir: str | os.PathLike, file_list: Optional[str], verify: bool,
          classes: Optional[Sequence[str]], allow_outside_root: bool = False) -> Dataset:
    if file_list is not None:
        return read_file_list(file_list, data_dir, classes=classes, verify=verify,
                              allow_outside_root=allow_outside_root)
    return scan_folder(data_dir, verify=verify, classes=classes)


def make_source(data_dir: str | os.PathLike, *, file_list: Optional[str], verify: bool,
            classes: Optional[Sequence[str]], allow_outside_root: bool, batch_size: int, shard_id: int,
            num_shards: int, train: bool, seed: int, first_epoch: int, max_batches: Optional[int],
            repeats: int = 1, reads_in_flight: Optional[int] = None) -> Any:
    """The file source of a pipeline: a `FileSource` over a folder tree or file list, or a `ShardSource`
    over tar shards (a brace pattern, a folder of .tar files or one .tar)."""
    if file_list is None and shards.is_shard_spec(data_dir):
        if repeats != 1:
            raise V.ArgumentError("repeats", "repeats: repeated augmentation needs the folder source; DALI's "
                                             "webdataset reader of tar shards reads each sample once per epoch in "
                                             "contiguous ranges and cannot deal copies to other ranks")
        if max_batches is not None:
            raise V.ArgumentError("max_batches_per_epoch", "max_batches_per_epoch works with folder datasets only: "
                                  "the webdataset reader of tar shards decides where an epoch ends")
        indexes = shards.index_shards(shards.resolve_shards(data_dir), verify=verify)
        names = shards.read_classes([ix.shard for ix in indexes], [l for ix in indexes for l in ix.labels], classes)
        return shards.ShardSource(indexes, names, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards,
                                  drop_last=train, start_epoch=first_epoch)
    dataset = _load(data_dir, file_list, verify, classes, allow_outside_root)
    source = FileSource(dataset.files, dataset.labels, batch_size=batch_size, shard_id=shard_id,
                        num_shards=num_shards, shuffle=train, seed=seed, drop_last=train, start_epoch=first_epoch,
                        max_batches=max_batches, classes=dataset.classes, repeats=repeats,
                        **({"reads_in_flight": reads_in_flight} if reads_in_flight is not None else {}))
    return source


def read_samples(source: Any, *, train: bool, seed: int) -> tuple[Any, Any]:
    """(encoded images, int labels) inside a graph: from the file source, or DALI's webdataset reader."""
    if not isinstance(source, shards.ShardSource):
        return fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                  dtype=[types.UINT8, types.INT32])
    jpegs, cls = fn.readers.webdataset(
        paths=source.paths, index_paths=source.index_paths, ext=[";".join(shards.IMAGE_EXTS), shards.LABEL_EXT],
        case_sensitive_extensions=False, missing_component_behavior="error", shard_id=source.shard_id,
        num_shards=source.num_shards, pad_last_batch=True, random_shuffle=train,
        initial_fill=max(1, min(4096, source.samples_per_shard)), seed=seed, name=READER)
    if native.available("cpu"):
        return jpegs, fn.dalimix.parse_label(cls)
    return jpegs, fn.python_function(cls, function=shards.parse_label, batch_processing=False)
