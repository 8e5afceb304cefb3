"""Tar-shard (WebDataset) datasets: finding the shards, indexing them for DALI, and their epoch arithmetic.

A sample is the group of members of a shard that share a key (the member name up to the first dot of its
base name): one image (by extension) and a `.cls` member holding the class index as text, as timm and
WebDataset write them. Class names come from `classes.json` beside the shards (`dalimix-make-shards` writes
it), else they are the indices.

DALI's `fn.readers.webdataset` reads the shards with index files (DALI's "v1.2" text format). dalimix writes
them itself with Python's `tarfile`, which reads PAX and GNU headers alike (DALI's own scan misses PAX long
names), checks each image member up front (the same checks as for folders: bad members are left out of the
index with one warning naming shard and member), and caches them beside the shards, or in the user cache when
the shard folder is read-only. No torch, no DALI here.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from dalimix import validation as V
from dalimix.data.dataset import IMAGE_EXTENSIONS, sniff_stream

CLASSES_FILE = "classes.json"
INDEX_VERSION = "v1.2"
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
LABEL_EXT = "cls"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` lists too."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if int(lo) > int(hi):
            raise V.ArgumentError("data_dir", f"shard pattern {pattern!r}: range {body!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    out: list[str] = []
    for c in choices:
        out += expand_braces(pattern[:m.start()] + c + pattern[m.end():])
    return out


def is_shard_spec(data: str | os.PathLike) -> bool:
    """Whether `data` names tar shards (a brace pattern, a .tar file, or a folder holding .tar files and no
    class folders) rather than a folder-per-class tree."""
    s = str(data)
    if _BRACE.search(s) or s.endswith(".tar"):
        return True
    if os.path.isdir(s):
        entries = list(os.scandir(s))
        has_tars = any(e.is_file() and e.name.endswith(".tar") for e in entries)
        has_dirs = any(e.is_dir() and not e.name.startswith(".") for e in entries)
        return has_tars and not has_dirs
    return False


def resolve_shards(data: str | os.PathLike) -> list[str]:
    """The shard files `data` names, in order; FileNotFoundError names any that is missing."""
    s = str(data)
    if os.path.isdir(s):
        paths = sorted(glob.glob(os.path.join(glob.escape(s), "*.tar")))
        if not paths:
            raise FileNotFoundError(f"data_dir {s!r} holds no .tar shards")
        return paths
    paths = expand_braces(s)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"data_dir {s!r}: {len(missing)} of {len(paths)} shard(s) do not exist, e.g. "
                                f"{', '.join(repr(m) for m in missing[:3])}{more}")
    return paths


def parse_label(cls: Any) -> Any:
    """A `.cls` member's bytes -> int32 class index (the graph's fallback where the native operator is not
    built); a ValueError quotes content that is not a class index."""
    import numpy as np
    text = bytes(np.asarray(cls, dtype=np.uint8)).decode("ascii", errors="replace").strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise ValueError(f"a .cls member holds {text[:32]!r}, not a class index")
    return np.array(int(text), dtype=np.int32)


def split_name(member: str) -> tuple[str, str]:
    """(key, extension) of a member name: the extension starts at the first dot of the base name."""
    base = member.rfind("/") + 1
    dot = member.find(".", base)
    return (member, "") if dot < 0 else (member[:dot], member[dot + 1:])


@dataclass
class ShardIndex:
    """One shard as indexed: DALI's index file, the label of each sample, what was left out and why."""

    shard: str
    index_path: str
    labels: list[int]
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (member, why)

    @property
    def samples(self) -> int:
        return len(self.labels)


def _index_location(shard: str, cache_dir: Optional[str]) -> str:
    """Beside the shard when its folder is writable, else in the user cache (keyed by the shard's path)."""
    beside = shard[:-4] + ".idx" if shard.endswith(".tar") else shard + ".idx"
    folder = os.path.dirname(os.path.abspath(shard))
    if cache_dir is None and os.access(folder, os.W_OK):
        return beside
    from dalimix.native.build import cache_root  # the same cache root as the native plugin
    root = cache_dir or str(cache_root() / "wds-index")
    os.makedirs(root, exist_ok=True)
    digest = hashlib.sha256(os.path.abspath(shard).encode()).hexdigest()[:16]
    return os.path.join(root, f"{os.path.basename(shard)[:-4]}-{digest}.idx")


def _stamp(shard: str, verify: bool) -> dict[str, Any]:
    st = os.stat(shard)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "verify": verify, "format": INDEX_VERSION}


def _read_label(fh: Any, offset: int, size: int) -> Optional[int]:
    fh.seek(offset)
    text = fh.read(min(size, 64)).decode("ascii", errors="replace").strip()
    return int(text) if re.fullmatch(r"\d+", text) else None


def build_index(shard: str, index_path: str, *, verify: bool = True) -> ShardIndex:
    """Index one shard (PAX and GNU tar alike) into DALI's format at `index_path`, leaving out samples
    without an image or a label, and (with `verify`) those whose image is bad."""
    samples: list[tuple[str, list[tuple[str, int, int, str]]]] = []
    excluded: list[tuple[str, str]] = []
    try:
        with tarfile.open(shard, "r:") as tar, open(shard, "rb") as raw:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = split_name(member.name)
                if not ext or key.endswith("/"):
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append((ext, member.offset_data, member.size, member.name))
            kept: list[list[tuple[str, int, int, str]]] = []
            labels: list[int] = []
            for key, parts in samples:
                image = next((p for p in parts if p[0].lower() in IMAGE_EXTS), None)
                label = next((p for p in parts if p[0] == LABEL_EXT), None)
                if image is None or label is None:
                    excluded.append((key, "no image member" if image is None else f"no .{LABEL_EXT} label member"))
                    continue
                value = _read_label(raw, label[1], label[2])
                if value is None:
                    excluded.append((label[3], "label is not a non-negative integer"))
                    continue
                if verify:
                    problem = sniff_stream(raw, image[1], image[2])
                    if problem is not None:
                        excluded.append((image[3], problem))
                        continue
                kept.append([p for p in parts if p is image or p is label])
                labels.append(value)
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"shard {shard!r} cannot be read as a tar archive: {exc}") from None
    if not kept:
        raise ValueError(f"shard {shard!r} holds no usable sample (image + .{LABEL_EXT} label)")
    tmp = f"{index_path}.tmp{os.getpid()}"
    with open(tmp, "w") as out:
        out.write(f"{INDEX_VERSION} {len(kept)}\n")
        for parts in kept:
            out.write(" ".join(f"{e} {o} {s} {n}" for e, o, s, n in parts) + "\n")
    meta = dict(_stamp(shard, verify), labels=labels, excluded=excluded)
    with open(tmp + ".json", "w") as out:
        json.dump(meta, out)
    os.replace(tmp + ".json", index_path + ".json")
    os.replace(tmp, index_path)
    return ShardIndex(shard, index_path, labels, excluded)


def index_shards(paths: Sequence[str], *, verify: bool = True, cache_dir: Optional[str] = None,
                 progress: Optional[bool] = None) -> list[ShardIndex]:
    """Index files for `paths`, made when missing or older than their shard (tqdm bar while making them);
    one warning names every member left out."""
    out: list[ShardIndex] = []
    todo = []
    for shard in paths:
        where = _index_location(shard, cache_dir)
        try:
            with open(where + ".json") as fh:
                meta = json.load(fh)
            if {k: meta.get(k) for k in ("size", "mtime_ns", "verify", "format")} == _stamp(shard, verify) \
                    and os.path.isfile(where):
                out.append(ShardIndex(shard, where, list(meta["labels"]), [tuple(e) for e in meta["excluded"]]))
                continue
        except (OSError, ValueError, KeyError):
            pass
        todo.append((len(out), shard, where))
        out.append(None)  # type: ignore[arg-type]
    items: Any = todo
    if todo and (progress if progress is not None else len(todo) > 1):
        from tqdm import tqdm
        items = tqdm(todo, desc="indexing shards", unit="shard")
    for pos, shard, where in items:
        out[pos] = build_index(shard, where, verify=verify)
    bad = [(f"{ix.shard}:{member}", why) for ix in out for member, why in ix.excluded]
    if bad:
        shown = "\n".join(f"  {m}: {why}" for m, why in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        warnings.warn(f"dalimix: excluded {len(bad)} bad sample(s) from the shards:\n{shown}{more}", stacklevel=2)
    return out


def read_classes(paths: Sequence[str], labels: Sequence[int], classes: Optional[Sequence[str]]) -> list[str]:
    """Class names: the `classes` given, else `classes.json` beside the first shard, else "0", "1", ...;
    an error names a label outside them."""
    names: Optional[list[str]] = list(classes) if classes is not None else None
    if names is None:
        path = os.path.join(os.path.dirname(os.path.abspath(paths[0])), CLASSES_FILE)
        if os.path.isfile(path):
            with open(path) as fh:
                names = list(json.load(fh)["classes"])
    top = max(labels) if labels else -1
    if names is None:
        return [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise V.ArgumentError("classes", f"the shards use label {top} but only {len(names)} class names are known")
    return names


@dataclass
class ShardSource:
    """A set of indexed shards as one rank of a run sees them: what `DaliLoader` asks a source (epoch length,
    the epoch of a DALI batch) and what the webdataset reader needs (paths, index paths)."""

    indexes: list[ShardIndex]
    classes: list[str]
    batch_size: int
    shard_id: int = 0
    num_shards: int = 1
    drop_last: bool = True
    start_epoch: int = 0
    max_batches: Optional[int] = None

    def __post_init__(self) -> None:
        n = self.num_samples
        self.samples_per_shard = math.ceil(n / self.num_shards)  # DALI pads every shard to this with pad_last_batch
        if self.drop_last:
            # DALI's iterator keeps ranks in step by the smallest shard: full batches of real samples only.
            self.batches_per_epoch = (n // self.num_shards) // self.batch_size
            if self.batches_per_epoch == 0:
                raise V.ArgumentError("batch_size", f"batch_size {self.batch_size} is larger than the "
                                      f"{n // self.num_shards} samples per shard ({n} samples over "
                                      f"{self.num_shards} shard(s)); no full batch can be made")
            self.own_batches = self.batches_per_epoch
        else:
            lo, hi = n * self.shard_id // self.num_shards, n * (self.shard_id + 1) // self.num_shards
            self.batches_per_epoch = math.ceil(self.samples_per_shard / self.batch_size)
            self.own_batches = math.ceil((hi - lo) / self.batch_size)
        if self.max_batches is not None:
            V.positive_int("max_batches_per_epoch", self.max_batches)
            self.batches_per_epoch = min(self.batches_per_epoch, self.max_batches)
            self.own_batches = min(self.own_batches, self.max_batches)

    @property
    def paths(self) -> list[str]:
        return [ix.shard for ix in self.indexes]

    @property
    def index_paths(self) -> list[str]:
        return [ix.index_path for ix in self.indexes]

    @property
    def num_samples(self) -> int:
        return sum(ix.samples for ix in self.indexes)

    @property
    def files(self) -> list[str]:
        """One entry per sample (`shard:sample number`), for counts and messages."""
        return [f"{ix.shard}:{i}" for ix in self.indexes for i in range(ix.samples)]

    def epoch_of(self, info: Any) -> int:
        """The dataset epoch of a DALI `BatchInfo`."""
        return self.start_epoch + int(info.epoch_idx)

    def epoch_members(self, epoch: int) -> list[tuple[str, str, int, int]]:
        """(shard, image member, offset, size) of the samples this rank reads in `epoch` (DALI's reader takes
        a contiguous range of the samples, moving on to the next range every epoch unless sticking to one)."""
        n, s = self.num_samples, self.num_shards
        part = (self.shard_id + (epoch - self.start_epoch if self.drop_last else 0)) % s
        lo, hi = n * part // s, n * (part + 1) // s
        out: list[tuple[str, str, int, int]] = []
        seen = 0
        for ix in self.indexes:
            if seen + ix.samples > lo and seen < hi:
                with open(ix.index_path) as fh:
                    lines = fh.read().splitlines()[1:]
                for k, line in enumerate(lines):
                    if lo <= seen + k < hi:
                        fields = line.split(" ")
                        for j in range(0, len(fields), 4):
                            if fields[j].lower() in IMAGE_EXTS:
                                out.append((ix.shard, fields[j + 3], int(fields[j + 1]), int(fields[j + 2])))
            seen += ix.samples
        return out

    def find_undecodable(self, epoch: int, *, device: str = "cpu", device_id: Optional[int] = None) -> list[str]:
        """`shard:member` of the images this rank reads in `epoch` that DALI's decoder rejects (slow: every
        member of the rank's range is decoded once; only run after a decode failure)."""
        import numpy as np

        from dalimix.data.dataset import find_undecodable
        members = {f"{shard}:{name}": (shard, offset, size) for shard, name, offset, size in self.epoch_members(epoch)}

        def read(key: str) -> Any:
            shard, offset, size = members[key]
            with open(shard, "rb") as fh:
                fh.seek(offset)
                return np.frombuffer(fh.read(size), dtype=np.uint8)
        return find_undecodable(list(members), device=device, device_id=device_id, read=read)
