"""The up-front file check done once per dataset: its results cached by each file's path, size and
modification time, so a restart only checks what changed.

The cache sits beside the data (`<root>/.dalimix-checks.npz`) where that folder is writable, else in the
user cache (`$DALIMIX_CACHE` or `~/.cache/dalimix/checks/`). Ranks that share it take a file lock around
check-and-write, so one rank (per node, or in all with a shared cache folder) checks and the others wait and
read its result. A cache that cannot be read, or was written for another root or format, is ignored with a
warning and rewritten, never trusted.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from dalimix.data.dataset import in_shares

FORMAT = 2
NAME = ".dalimix-checks.npz"


def cache_path(root: str) -> Path:
    """Where the results for `root` are kept: beside the data when writable, else the user cache."""
    beside = Path(root) / NAME
    if os.access(root, os.W_OK):
        return beside
    base = Path(os.environ.get("DALIMIX_CACHE") or Path.home() / ".cache" / "dalimix") / "checks"
    return base / (hashlib.sha1(os.path.abspath(root).encode("utf-8", "surrogateescape")).hexdigest() + ".npz")


def stat_files(files: Sequence[str], workers: int,
               packed: Optional[tuple[bytes, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes in ns) of `files`, -1 where stat fails: native threads where the plugin is built
    (`packed`: the names as `pack_paths` gives them, where the caller has them), else Python threads."""
    from dalimix.native.files import checker

    native = checker()
    if native is not None:
        sizes, mtimes, _ = native.stat(files, workers, packed)
        return sizes, mtimes

    def one(share: Sequence[str]) -> list[tuple[int, int]]:
        out = []
        for f in share:
            try:
                st = os.stat(f)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1))
        return out
    arr = np.array(in_shares(files, workers, one), np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(path: Path, root: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("format", "root", "paths", "sizes", "mtimes", "bad", "problems", "labels",
                                      "classes", "dirs", "dir_mtimes")}
        if int(data["format"]) != FORMAT or str(data["root"]) != os.path.abspath(root):
            raise ValueError(f"written for {str(data['root'])!r}, format {int(data['format'])}")
        if not len(data["sizes"]) == len(data["mtimes"]) == int((data["paths"] == 0).sum()):
            raise ValueError("its arrays disagree in length")
        return data
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is ignored, loudly
        warnings.warn(f"dalimix: ignoring the file-check cache {path} ({type(exc).__name__}: {exc}); checking "
                      f"the files again", stacklevel=4)
        return None


def _save(path: Path, root: str, blob: bytes, sizes: np.ndarray, mtimes: np.ndarray,
          problems: Sequence[Optional[str]], listing: Optional["Listing"]) -> None:
    bad = np.array([i for i, p in enumerate(problems) if p is not None], np.int64)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    listing = listing or Listing([], [], [], [])
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, format=np.int64(FORMAT), root=np.str_(os.path.abspath(root)),
                     paths=np.frombuffer(blob, np.uint8), sizes=sizes, mtimes=mtimes, bad=bad,
                     problems=np.array([problems[i] for i in bad], dtype=np.str_) if len(bad) else
                     np.array([], dtype=np.str_), labels=np.asarray(listing.labels, np.int32),
                     classes=np.array(listing.classes, dtype=np.str_),
                     dirs=np.array(listing.dirs, dtype=np.str_), dir_mtimes=np.asarray(listing.dir_mtimes, np.int64))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"dalimix: could not write the file-check cache {path} ({exc}); the next start checks "
                      f"again", stacklevel=4)


def checked(root: str, files: Sequence[str], check: Callable[[Sequence[str]], list[Optional[str]]],
            workers: int = 8, listing: Optional["Listing"] = None) -> list[Optional[str]]:
    """The problem with each of `files` (None where fine): from the cache where a file's path, size and
    modification time are unchanged, from `check` for the rest, and the cache brought up to date (under
    the lock). `listing` (how `files` were found) is kept, so that a restart can skip the walk."""
    path = cache_path(root)
    with _locked(path):
        return _checked(path, root, _load(path, root), files, check, workers, listing)


def _checked(path: Path, root: str, old: Optional[dict], files: Sequence[str],
             check: Callable[[Sequence[str]], list[Optional[str]]], workers: int,
             listing: Optional["Listing"]) -> list[Optional[str]]:
    """`checked` with the lock held and the cache (`old`) read. An unchanged cache is touched: peers of this
    job then take it as is."""
    from dalimix.native.files import pack_paths

    packed = pack_paths(files)
    sizes, mtimes = stat_files(files, workers, packed)
    problems, todo = _from_cache(old, packed[0], files, sizes, mtimes)
    if len(todo):
        for i, p in zip(todo, check([files[i] for i in todo])):
            problems[i] = p
    if old is None or len(todo) or len(old["sizes"]) != len(files) or \
            (listing is not None and listing.dirs and not len(old["dirs"])):
        _save(path, root, packed[0], sizes, mtimes, problems, listing)
    else:
        os.utime(path)
    _USED_HERE.add(str(path))
    return problems


# When this process began using the cache: a cache written or confirmed since was made by a rank of the
# same job (it listed, stat'ed and checked the files seconds ago), and is taken without doing that again.
_STARTED_NS = time.time_ns()
_USED_HERE: set[str] = set()  # caches this process took, wrote or confirmed: a later scan here checks again


def _fresh(path: Path, root: str, classes: Sequence[str]) -> Optional[tuple["Listing", list[Optional[str]]]]:
    if str(path) in _USED_HERE:
        return None
    try:
        if path.stat().st_mtime_ns < _STARTED_NS:
            return None
    except OSError:
        return None
    old = _load_quietly(path, root)
    listing = _listing_from(old, classes)
    if listing is None:
        return None
    problems: list[Optional[str]] = [None] * len(listing.files)
    for i, p in _cached_problems(old).items():
        problems[i] = p
    _USED_HERE.add(str(path))
    return listing, problems


def scan_checked(root: str, classes: Sequence[str], walk: Callable[[], "Listing"],
                 check: Callable[[Sequence[str]], list[Optional[str]]],
                 workers: int = 8) -> tuple["Listing", list[Optional[str]]]:
    """A folder tree's listing and each file's problem, once per job: a cache that a peer of this job made
    or confirmed is taken as is (no lock, no walk, no stat); otherwise the lock is taken, the cache asked
    again (a peer may have just finished), and the holder lists (from the cache where no directory changed,
    else `walk()`), stats and checks what changed, and writes or confirms the cache."""
    path = cache_path(root)
    got = _fresh(path, root, classes)
    if got is not None:
        return got
    with _locked(path):
        got = _fresh(path, root, classes)
        if got is not None:
            return got
        old = _load(path, root)
        listing = _listing_from(old, classes) or walk()
        return listing, _checked(path, root, old, listing.files, check, workers, listing)


def _from_cache(old: Optional[dict], blob: bytes, files: Sequence[str], sizes: np.ndarray,
                mtimes: np.ndarray) -> tuple[list[Optional[str]], np.ndarray]:
    """(problems known from the cache, indices still to check)."""
    problems: list[Optional[str]] = [None] * len(files)
    if old is None:
        return problems, np.arange(len(files))
    known = _known(old, blob, files)
    same = (known >= 0) & (sizes >= 0)
    same[same] &= (old["sizes"][known[same]] == sizes[same]) & (old["mtimes"][known[same]] == mtimes[same])
    where = np.full(len(old["sizes"]), -1, np.int64)  # cache index -> file index
    where[known[known >= 0]] = np.flatnonzero(known >= 0)
    for j, problem in _cached_problems(old).items():
        i = where[j] if 0 <= j < len(where) else -1
        if i >= 0 and same[i]:
            problems[i] = problem
    return problems, np.flatnonzero(~same)


@dataclass
class Listing:
    """How a folder tree's files were found: the files and labels, the class names, and every directory
    walked with its modification time then (-1 where it changed during the walk)."""

    files: list[str]
    labels: list[int]
    classes: list[str]
    dirs: list[str]
    dir_mtimes: list[int] = field(default_factory=list)


def dir_mtimes(dirs: Sequence[str], since_ns: int) -> list[int]:
    """Each directory's modification time, -1 where it is newer than `since_ns` (changed while walked)."""
    out = []
    for d in dirs:
        try:
            m = os.stat(d).st_mtime_ns
        except OSError:
            m = -1
        out.append(-1 if m >= since_ns else m)
    return out


def _load_quietly(path: Path, root: str) -> Optional[dict]:
    """`_load` without its warning (a bad cache is said once, by the holder of the lock)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load(path, root)


def _listing_from(old: Optional[dict], classes: Sequence[str]) -> Optional[Listing]:
    """The files and labels of the cached listing, when it listed the same classes and no directory it
    walked has changed since (adding, removing or renaming a file changes its directory's time); None when
    the tree must be walked again."""
    if old is None or not len(old["dirs"]) or list(old["classes"]) != list(classes):
        return None
    dirs = [str(d) for d in old["dirs"]]
    stored = old["dir_mtimes"]
    if (stored < 0).any() or dir_mtimes(dirs, np.iinfo(np.int64).max) != stored.tolist():
        return None
    files = old["paths"].tobytes().decode("utf-8", "surrogateescape").split("\0")[:-1]
    if len(files) != len(old["labels"]):
        return None
    return Listing(files, old["labels"].tolist(), list(classes), dirs, stored.tolist())


def _cached_problems(old: dict) -> dict[int, str]:
    """The cached problems by cache index."""
    return {int(i): str(p) for i, p in zip(old["bad"], old["problems"])}


def _known(old: dict, blob: bytes, files: Sequence[str]) -> np.ndarray:
    """For each file, its index in the cache (-1 where new)."""
    if old["paths"].tobytes() == blob:
        return np.arange(len(files))
    names = old["paths"].tobytes().decode("utf-8", "surrogateescape").split("\0")[:-1]
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(f, -1) for f in files], np.int64)
