"""Input wait in the training engine: the share of training time spent waiting for the next batch.

Fake loaders on the CPU through the public `engine.train_one_epoch` and `engine.fit`: an instant loader
feeding a model whose step takes a few milliseconds waits ~0% of the time; a loader that sleeps before each
batch feeding a near-free model waits ~100%. Margins are wide (< 0.3, > 0.7): machines here are shared.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dalimix import train as engine
from dalimix.train.distributed import DistContext

BATCHES, BATCH = 12, 4


class SlowStep(nn.Module):
    """A linear classifier whose forward takes at least `seconds` (a stand-in for a real model's step)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seconds:
            time.sleep(self.seconds)
        return self.fc(x)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 6, generator=g), torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(BATCHES)]


class SleepyLoader:
    """Yields the same batches as `batches()`, sleeping `seconds` before each one; has a length like a loader."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.data = batches()

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        for batch in self.data:
            time.sleep(self.seconds)
            yield batch


def train(model: nn.Module, loader, **kw) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    kw.setdefault("progress", False)
    return engine.train_one_epoch(model, loader, opt, ctx=DistContext(), **kw)


@pytest.fixture(autouse=True, scope="module")
def quiet_torch():
    """One torch thread: on a busy shared machine, tiny ops split over intra-op threads wait for descheduled
    threads (milliseconds per step), a model-side cost that would blur "near 1". And the first backward and
    optimizer step of a process pay torch's lazy initialisation (a few hundred ms): pay it before the tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(SlowStep(0.0), batches()[:3])
    yield
    torch.set_num_threads(threads)


def test_an_instant_loader_waits_near_zero():
    res = train(SlowStep(0.02), batches())
    assert res["input_wait_method"] == "host"
    assert 0.0 <= res["input_wait"] < 0.3
    assert res["input_wait_max"] == res["input_wait"] and res["input_wait_rank"] == 0
    assert 0.0 <= res["input_wait_host"] < 0.3 and res["first_batch_wait"] >= 0.0
    assert res["train_images"] == BATCHES * BATCH


def test_a_sleeping_loader_waits_near_one():
    res = train(SlowStep(0.0), SleepyLoader(0.03), print_freq=2)
    assert 0.7 < res["input_wait"] <= 1.0
    assert 0.7 < res["input_wait_host"] <= 1.0
    assert res["first_batch_wait"] >= 0.03  # the first batch is kept apart, and it slept too


def test_the_progress_bar_shows_the_wait(capsys):
    train(SlowStep(0.0), SleepyLoader(0.01), print_freq=3, progress=True)
    err = capsys.readouterr().err
    assert "wait=" in err and "%" in err.split("wait=")[-1][:5]


def test_one_batch_has_no_steady_state():
    res = train(SlowStep(0.0), batches()[:1])
    assert math.isnan(res["input_wait"]) and res["first_batch_wait"] >= 0.0


def test_advice_names_the_tuner_only_over_the_threshold():
    assert engine.input_wait_advice(0.05) is None
    assert engine.input_wait_advice(float("nan")) is None
    line = engine.input_wait_advice(0.25, where=" of epoch 2", command="dalimix-profile --tune --data d")
    assert line is not None and "25%" in line and "10%" in line and "`dalimix-profile --tune --data d`" in line
    assert "\n" not in line
    assert engine.input_wait_advice(0.25, threshold=0.3) is None


@pytest.mark.parametrize("sleep, waits", [(0.03, True), (0.0, False)])
def test_fit_writes_the_wait_everywhere_and_says_so_once(tmp_path: Path, sleep: float, waits: bool):
    model = SlowStep(0.0 if waits else 0.02)
    loader = SleepyLoader(sleep)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lines: list[str] = []
    cfg = engine.FitConfig(epochs=2, output=str(tmp_path), progress=False, tune_command="dalimix-profile --tune X")
    summary = engine.fit(model, loader, batches()[:2], opt, ctx=DistContext(), cfg=cfg, log=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert (0.7 < row["input_wait"] <= 1.0) if waits else (0.0 <= row["input_wait"] < 0.3), rows
        assert row["input_wait_method"] == "host" and row["input_wait_max"] == row["input_wait"]
    assert (0.7 < summary["input_wait"] <= 1.0) if waits else (0.0 <= summary["input_wait"] < 0.3)
    assert summary["input_wait_method"] == "host"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["input_wait"] == pytest.approx(summary["input_wait"])
    assert on_disk["input_wait_max"] == pytest.approx(max(r["input_wait_max"] for r in rows))
    assert all("input wait" in line for line in lines if line.startswith("epoch "))
    advice = [line for line in lines if "dalimix-profile --tune X" in line]
    assert len(advice) == (1 if waits else 0)  # one line per run, not one per epoch
    if waits:
        assert "of epoch 1's training time" in advice[0]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_makes_the_tuning_command_from_a_loader_that_tells_its_settings(tmp_path: Path):
    class Told(SleepyLoader):
        batch_size = BATCH

        class source:  # noqa: N801 - what DaliLoader exposes: the file source with the files it reads
            files = [str(tmp_path / "data" / "train" / "n01440764" / "a.JPEG")]

        class pipeline:  # noqa: N801
            num_threads = 3
            prefetch_queue_depth = 4

    model = SlowStep(0.0)
    lines: list[str] = []
    cfg = engine.FitConfig(epochs=1, progress=False)
    engine.fit(model, Told(0.03), batches()[:1], torch.optim.SGD(model.parameters(), lr=0.01), ctx=DistContext(),
               cfg=cfg, log=lines.append)
    advice = [line for line in lines if "dalimix-profile --tune" in line]
    assert len(advice) == 1
    assert f"--data {tmp_path / 'data' / 'train'} --device cpu --threads 3 --batch-size {BATCH} --prefetch 4" \
        in advice[0]


def test_curves_have_an_input_wait_panel(tmp_path: Path):
    from PIL import Image

    from dalimix.train.curves import plot_curves

    rows = [{"epoch": e, "train_loss": 2.0 - e * 0.1, "val_loss": 2.1, "val_top1": 10.0 + e, "val_top5": 30.0,
             "input_wait": w, "input_wait_max": w * 1.5} for e, w in enumerate((0.4, 0.2, 0.05))]
    path = plot_curves(rows, tmp_path / "c.png", title="t")
    with_wait = Image.open(path)
    assert with_wait.size[0] >= 3 * with_wait.size[1]  # three panels side by side
    old = [{k: v for k, v in r.items() if not k.startswith("input_wait")} for r in rows]  # older runs' rows
    assert Image.open(plot_curves(old, tmp_path / "old.png")).size == with_wait.size
