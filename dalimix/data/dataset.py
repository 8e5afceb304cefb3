"""Listing an image dataset and keeping bad files out of it, before any DALI graph sees them.

Two layouts are understood: a folder per class (ImageNet's `train/` and `val/`) and a file list of
`relative/path label` lines. Files that are empty, are not an image by their leading bytes, or are JPEGs
cut short are excluded up front with one warning naming them, so a run never dies late on them.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
                    ".jp2")

# Leading bytes of the formats DALI's decoders read.
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),
    (b"\xff\x4f\xff\x51", "jp2"),
)
_PNM = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
# How far from the end a JPEG's end-of-image marker may sit (some writers append padding or metadata).
_EOI_WINDOW = 4096


@dataclass
class Dataset:
    """A list of image files with integer labels and the class names the labels index."""

    files: list[str]
    labels: list[int]
    classes: list[str]
    root: str
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DecodeError(RuntimeError):
    """An image file that passed the up-front checks but could not be decoded."""

    def __init__(self, files: Sequence[str], cause: str = ""):
        self.files = list(files)
        names = ", ".join(self.files[:5]) + (f" and {len(self.files) - 5} more" if len(self.files) > 5 else "")
        msg = f"cannot decode image file(s): {names}"
        if cause:
            msg += f" (decoder said: {cause.strip().splitlines()[-1] if cause.strip() else cause})"
        super().__init__(msg)


def sniff_problem(path: str) -> str | None:
    """Why the file at `path` cannot be an image DALI decodes, or None if it looks fine."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            return sniff_stream(fh, 0, size)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def sniff_stream(fh: Any, offset: int, size: int) -> str | None:
    """`sniff_problem` for `size` bytes at `offset` of an open binary file (e.g. a member of a tar shard)."""
    if size == 0:
        return "empty file"
    fh.seek(offset)
    kind = _kind(fh.read(min(16, size)))
    if kind is None:
        return "not an image (unknown leading bytes)"
    if kind == "jpeg":
        if size < 4:
            return "JPEG cut short (no end-of-image marker)"
        start = max(size - _EOI_WINDOW, 2)
        fh.seek(offset + start)
        if b"\xff\xd9" not in fh.read(size - start):
            return "JPEG cut short (no end-of-image marker)"
    return None


def _kind(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] in _PNM and len(head) > 2 and head[2:3].isspace():
        return "pnm"
    return None


def check_files(files: Sequence[str], *, workers: int = 8, progress: bool | None = None) -> list[str | None]:
    """The problem with each file (None where it looks decodable): on the plugin's native threads where it
    is built, else in `workers` Python threads, each taking a contiguous share (no task per file)."""
    from dalimix.native.files import checker

    native = checker()
    if native is not None:
        return native.check(list(files), max(1, workers))
    show = progress if progress is not None else len(files) >= 20000
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=len(files), desc="checking files", unit="file")

    def run(share: Sequence[str]) -> list[str | None]:
        out = []
        for j, f in enumerate(share):
            out.append(sniff_problem(f))
            if bar is not None and j % 1024 == 1023:
                bar.update(1024)
        if bar is not None:
            bar.update(len(share) % 1024)
        return out
    results = in_shares(files, workers, run)
    if bar is not None:
        bar.close()
    return results


def in_shares(items: Sequence, workers: int, fn: Any) -> list:
    """`fn` over `workers` contiguous shares of `items` on threads (one task per share, not per item), the
    results joined in order: where each item's work mostly waits on I/O, which releases the GIL."""
    k = max(1, min(workers, len(items)))
    shares = [items[len(items) * i // k:len(items) * (i + 1) // k] for i in range(k)]
    with ThreadPoolExecutor(max_workers=k) as pool:
        return [r for part in pool.map(fn, shares) for r in part]


def _cache_enabled() -> bool:
    return os.environ.get("DALIMIX_CHECK_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def _exclude_bad(files: list[str], labels: list[int], root: str, verify: bool,
                 problems: Any = None) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """`files` and `labels` without the bad files, and those with their problem (warned about once).
    `problems` where known already (the folder scan), else checked here (through the cache)."""
    if not verify:
        return files, labels, []
    if problems is None and _cache_enabled():
        from dalimix.data.check_cache import checked
        problems = checked(root, files, check_files)
    elif problems is None:
        problems = check_files(files)
    bad = [(f, p) for f, p in zip(files, problems) if p is not None]
    if not bad:
        return files, labels, []
    keep = [i for i, p in enumerate(problems) if p is None]
    shown = "\n".join(f"  {f}: {p}" for f, p in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    warnings.warn(f"dalimix: excluded {len(bad)} bad file(s) under {root}:\n{shown}{more}", stacklevel=3)
    return [files[i] for i in keep], [labels[i] for i in keep], bad


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a list of class names, got the string {classes!r}")
    names = list(classes)
    if not names:
        raise ValueError("classes must name at least one class, got an empty list")
    bad = [c for c in names if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"classes must hold non-empty strings, got {bad[0]!r}")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"classes lists {dupes} more than once")
    return names


def _names(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in list(items)[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scan_folder(data_dir: str | os.PathLike, *, verify: bool = True,
                classes: Sequence[str] | None = None) -> Dataset:
    """List a folder-per-class tree; labels follow sorted folder names, empty folders keep their index.

    With `classes`, label `i` is the folder named `classes[i]` (the order of the given list, not sorted):
    the tree must hold exactly one folder per given class (an empty folder is fine), else `ValueError`
    naming the missing and the extra folders, so a val/ never silently renumbers train's classes.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"data_dir {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data_dir {str(root)!r} is not a directory")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classes is not None:
        names = _check_classes(classes)
        missing = [c for c in names if c not in set(found)]
        extra = [c for c in found if c not in set(names)]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing folder(s) for {len(missing)} of the given classes: {_names(missing)} "
                             f"(create an empty folder for a class without images)")
            if extra:
                parts.append(f"{len(extra)} folder(s) not among the given classes: {_names(extra)}")
            raise ValueError(f"data_dir {str(root)!r} does not match classes= ({len(names)} names): "
                             + "; ".join(parts))
        found = names
    if not found:
        raise FileNotFoundError(f"data_dir {str(root)!r} has no class folders (expected one folder per class)")
    problems = None
    if verify and _cache_enabled():
        from dalimix.data.check_cache import scan_checked
        listing, problems = scan_checked(str(root), found, lambda: _walk(root, found, record_dirs=True),
                                         lambda fs: check_files(fs))
    else:
        listing = _walk(root, found, record_dirs=False)
    files, labels = listing.files, listing.labels
    if not files:
        raise FileNotFoundError(f"data_dir {str(root)!r} has class folders but no image files "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    files, labels, bad = _exclude_bad(files, labels, str(root), verify, problems=problems)
    if not files:
        raise ValueError(f"data_dir {str(root)!r}: every image file was excluded as bad")
    return Dataset(files, labels, list(found), str(root), bad)


def _walk(root: Path, classes: Sequence[str], record_dirs: bool) -> Any:
    """The image files under each class folder (sorted, links followed) as a `check_cache.Listing`; with
    `record_dirs`, every directory walked and its time, so that a restart can skip the walk."""
    import time

    from dalimix.data.check_cache import Listing, dir_mtimes
    start = time.time_ns()
    files: list[str] = []
    labels: list[int] = []
    dirs: list[str] = []
    for idx, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            dirs.append(dirpath)
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS) and not fname.startswith("."):
                    files.append(os.path.join(dirpath, fname))
                    labels.append(idx)
    return Listing(files, labels, list(classes), dirs if record_dirs else [],
                   dir_mtimes(dirs, start) if record_dirs else [])


def _inside(path: str, root: str) -> bool:
    """Whether `path` lies under `root`, judged on the normalised names (symlinks are not followed)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def read_file_list(file_list: str | os.PathLike, root: str | os.PathLike | None = None, *,
                   classes: Sequence[str] | None = None, verify: bool = True,
                   allow_outside_root: bool = False) -> Dataset:
    """Read `relative/path label` lines (paths relative to `root`, default the list's folder).

    Label `i` is `classes[i]` when `classes` is given. The list may start with a UTF-8 byte order mark.
    A path that leaves `root` (`../`, or an absolute path elsewhere) raises `ValueError` naming its line,
    unless `allow_outside_root=True`.
    """
    path = Path(file_list)
    if not path.exists():
        raise FileNotFoundError(f"file_list {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"file_list {str(path)!r} is not a file")
    base = Path(root) if root is not None else path.parent
    if not base.exists():
        raise FileNotFoundError(f"data_dir {str(base)!r} (root of file_list) does not exist")
    if not base.is_dir():
        raise NotADirectoryError(f"data_dir {str(base)!r} (root of file_list) is not a directory")
    names: list[str] | None = _check_classes(classes) if classes is not None else None
    base_abs = os.path.normpath(os.path.abspath(base))
    files: list[str] = []
    labels: list[int] = []
    missing: list[str] = []
    # utf-8-sig: a byte order mark (Windows Notepad) is not part of the first path.
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            rel, sep, label = line.rpartition(" ")
            rel = rel.strip()
            if not sep or not rel:
                raise ValueError(f"file_list {str(path)!r} line {lineno}: expected 'relative/path label', "
                                 f"got {line!r}")
            try:
                lab = int(label)
            except ValueError:
                raise ValueError(f"file_list {str(path)!r} line {lineno}: label {label!r} is not an integer") \
                    from None
            if lab < 0:
                raise ValueError(f"file_list {str(path)!r} line {lineno}: label {lab} is negative")
            if names is not None and lab >= len(names):
                raise ValueError(f"file_list {str(path)!r} line {lineno}: label {lab} but classes has "
                                 f"{len(names)} names")
            full = str(base / rel)
            if not allow_outside_root and not _inside(os.path.normpath(os.path.join(base_abs, rel)), base_abs):
                raise ValueError(f"file_list {str(path)!r} line {lineno}: path {rel!r} leaves the data root "
                                 f"{str(base)!r}; pass allow_outside_root=True to read files outside it")
            if not os.path.exists(full):
                missing.append(full)
                continue
            files.append(full)
            labels.append(lab)
    if missing:
        raise FileNotFoundError(f"file_list {str(path)!r} names {len(missing)} missing file(s), e.g. {missing[0]!r}")
    if not files:
        raise ValueError(f"file_list {str(path)!r} lists no files")
    if names is None:
        names = [str(i) for i in range(max(labels) + 1)]
    files, labels, bad = _exclude_bad(files, labels, str(base), verify)
    return Dataset(files, labels, names, str(base), bad)


def find_undecodable(files: Sequence[str], *, progress: bool = True, device: str = "cpu",
                     device_id: int | None = None, read: Any = None) -> list[str]:
    """The files among `files` that DALI's decoder rejects, tried one by one (to name the file behind a decode
    error). `device="gpu"` tries DALI's GPU (nvJPEG / hardware) decoder on GPU `device_id`, which can reject
    files the CPU decoder reads. `read(name)` gives the encoded bytes of a name (default: read the file)."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    read = read or (lambda f: np.fromfile(f, dtype=np.uint8))

    gpu = device == "gpu"

    @pipeline_def(batch_size=1, num_threads=1, device_id=(device_id or 0) if gpu else None, prefetch_queue_depth=1)
    def probe():
        data = fn.external_source(name="data", dtype=types.UINT8)
        return fn.decoders.image(data, device="mixed" if gpu else "cpu")

    bad: list[str] = []
    items: Iterable[str] = files
    if progress and len(files) > 64:
        from tqdm import tqdm
        items = tqdm(files, desc=f"finding undecodable files ({device})", unit="file")
    pipe = None
    for f in items:
        if pipe is None:
            pipe = probe()
            pipe.build()
        pipe.feed_input("data", [read(f)])
        try:
            pipe.run()
        except RuntimeError:
            bad.append(f)
            pipe = None  # a failed DALI pipeline cannot be reused
    return bad
