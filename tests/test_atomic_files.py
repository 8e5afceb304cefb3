"""Atomic output files: complete or absent, strict JSON."""
import json
import math
import os

import pytest

from dalimix.atomic_files import json_safe, save_figure, write_text


def test_write_text_replaces_whole_file_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "log.txt"
    write_text(str(path), "old\n" * 100)
    write_text(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["log.txt"]


def test_json_safe_turns_non_finite_numbers_into_null():
    value = {"a": [1.0, math.nan, (math.inf, -math.inf)], "b": {"c": 2, "d": "x"}}
    out = json_safe(value)
    assert out == {"a": [1.0, None, [None, None]], "b": {"c": 2, "d": "x"}}
    json.loads(json.dumps(out, allow_nan=False))


def test_save_figure_writes_the_format_of_the_suffix(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, str(tmp_path / "c.png"))
    svg = save_figure(fig, str(tmp_path / "c.svg"))
    plt.close(fig)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in open(svg, "rb").read(400)
    assert sorted(os.listdir(tmp_path)) == ["c.png", "c.svg"]
