"""The plugin's file checks for `dalimix.data.dataset` (stat and sniff many files on native threads, no Python
per file), through ctypes. `checker()` is None where the plugin is unavailable; the dataset then checks in
Python, with the same verdicts."""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Sequence

import numpy as np

# Verdicts of dalimix_check_files, as `dalimix.data.dataset.sniff_problem` words them.
MESSAGES = {1: "empty file", 2: "not an image (unknown leading bytes)", 3: "JPEG cut short (no end-of-image marker)"}
UNREADABLE = 4


class FileChecker:
    """`stat(paths)` and `check(paths)` over the plugin's native threads."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        i64p, i32p = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32)
        self._stat = lib.dalimix_stat_files
        self._stat.argtypes = [ctypes.c_char_p, i64p, ctypes.c_int64, ctypes.c_int, i64p, i64p, i32p]
        self._check = lib.dalimix_check_files
        self._check.argtypes = [ctypes.c_char_p, i64p, ctypes.c_int64, ctypes.c_int, i32p, i32p]

    def stat(self, paths: Sequence[str], threads: int,
             packed: Optional[tuple[bytes, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sizes, mtimes in ns, errnos) of `paths` (`packed`: `pack_paths(paths)` where the caller has it);
        -1 and the errno where stat fails."""
        n = len(paths)
        sizes, mtimes, errs = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int32)
        if n:
            blob, offsets = packed or pack_paths(paths)
            self._stat(blob, _ptr(offsets, ctypes.c_int64), n, threads, _ptr(sizes, ctypes.c_int64),
                       _ptr(mtimes, ctypes.c_int64), _ptr(errs, ctypes.c_int32))
        return sizes, mtimes, errs

    def check(self, paths: Sequence[str], threads: int) -> list[Optional[str]]:
        """The problem with each file, in `sniff_problem`'s words (None where it looks decodable)."""
        n = len(paths)
        verdicts, errs = np.zeros(n, np.int32), np.zeros(n, np.int32)
        if n:
            blob, offsets = pack_paths(paths)
            self._check(blob, _ptr(offsets, ctypes.c_int64), n, threads, _ptr(verdicts, ctypes.c_int32),
                        _ptr(errs, ctypes.c_int32))
        out: list[Optional[str]] = [None] * n
        for i in np.flatnonzero(verdicts):
            v = int(verdicts[i])
            out[i] = f"unreadable ({os.strerror(int(errs[i]))})" if v == UNREADABLE else MESSAGES[v]
        return out


def pack_paths(paths: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """`paths` as the native calls take them: one buffer of NUL-terminated UTF-8 names (undecodable bytes
    kept, as `os.fsencode` keeps them) and the offset of each name."""
    blob = ("\0".join(paths) + "\0").encode("utf-8", "surrogateescape")
    ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
    if len(ends) != len(paths):
        raise ValueError("a file name holds a NUL character")
    return blob, np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)


def _ptr(a: np.ndarray, kind: type) -> object:
    return a.ctypes.data_as(ctypes.POINTER(kind))


_checker: dict = {}


def checker() -> Optional[FileChecker]:
    """The native file checker, or None (no compiler, `DALIMIX_NATIVE=0`, or an older build without it)."""
    if "value" not in _checker:
        from dalimix import native

        value = None
        path = native.library_path()
        if path:
            try:
                value = FileChecker(path)
            except (OSError, AttributeError):
                value = None
        _checker["value"] = value
    return _checker["value"]
