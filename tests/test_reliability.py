"""No silent wrong results (issue 15) and checkpoints that cannot run code (issue 17).

One test per case: class names map to the same indices everywhere, outputs agree after a crash between
any two writes (or resume repairs them), resuming with another batch size rescales the schedule, file
lists stay inside their root, ManifoldMixup decides by the wrapper's mode, a dead rank on another node is
named, resuming from best.pt does not silently drop later epochs, BOM file lists; and a checkpoint whose
pickle would run code is refused by the library and by `--resume`, without running it.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_class_tree
from dalimix import DaliLoader
from dalimix import train as engine
from dalimix.data.dataset import read_file_list, scan_folder
from dalimix.train.distributed import DistContext

ROOT = Path(__file__).resolve().parents[1]


# -- 1. classes= is honoured for folder datasets ---------------------------------------------------------------
def test_val_pipeline_labels_follow_the_given_classes_not_the_folders_found(tmp_path):
    from dalimix.pipelines.imagenet import val_pipeline

    val = make_class_tree(tmp_path / "val", [2, 0, 3])  # class_01 has an empty folder: fine
    classes = ["class_02", "class_01", "class_00"]        # the given order, not sorted
    loader = DaliLoader(val_pipeline(val, batch_size=8, crop=16, resize=16, device="cpu", num_threads=1,
                                     classes=classes))
    labels = torch.cat([t for _, t in loader]).tolist()
    assert loader.classes == classes
    folders = [Path(f).parent.name for f in loader.source.files]  # val order: the listing's
    assert list(zip(folders, labels)) == [("class_02", 0)] * 3 + [("class_00", 2)] * 2
    images = torch.cat([x for x, _ in loader])  # and the pixels are those folders' colours
    red = images[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485
    assert [round(v) for v in (red * 255 / 10).tolist()] == [2] * 3 + [23] * 2  # 20 (class_02), 230 (class_00)

    (val / "class_01").rmdir()  # a val/ without a folder for a given class is an error, never a renumbering
    (val / "extra").mkdir()
    with pytest.raises(ValueError) as err:
        val_pipeline(val, batch_size=8, crop=16, resize=16, device="cpu", classes=classes)
    msg = str(err.value)
    assert "missing folder(s) for 1 of the given classes: 'class_01'" in msg
    assert "1 folder(s) not among the given classes: 'extra'" in msg
    with pytest.raises(ValueError, match=r"classes lists \['a'\] more than once"):
        scan_folder(val, classes=["a", "a"])


# -- 4. file lists stay inside their data root -----------------------------------------------------------------
def test_file_list_paths_leaving_the_root_are_refused_unless_allowed(tmp_path):
    data = make_class_tree(tmp_path / "data" / "train", [2])
    other = make_class_tree(tmp_path / "data" / "val", [1])
    lst = tmp_path / "list.txt"
    lst.write_text("class_00/img_000.jpg 0\n../val/class_00/img_000.jpg 0\n")
    with pytest.raises(ValueError) as err:
        read_file_list(lst, data)
    assert str(err.value) == (f"file_list {str(lst)!r} line 2: path '../val/class_00/img_000.jpg' leaves the "
                              f"data root {str(data)!r}; pass allow_outside_root=True to read files outside it")
    outside = other / "class_00" / "img_000.jpg"
    lst.write_text(f"class_00/img_001.jpg 0\n{outside} 0\n")
    with pytest.raises(ValueError, match="line 2: path .* leaves the data root"):
        read_file_list(lst, data)
    lst.write_text(f"{data / 'class_00' / 'img_001.jpg'} 0\nclass_00/./img_000.jpg 0\n")  # absolute but inside
    assert len(read_file_list(lst, data)) == 2
    lst.write_text(f"class_00/img_001.jpg 0\n{outside} 0\n../val/class_00/img_000.jpg 0\n")
    ds = read_file_list(lst, data, allow_outside_root=True)
    assert ds.files[1:] == [str(outside), str(data / "../val/class_00/img_000.jpg")] and ds.labels == [0, 0, 0]
    # The pipelines take the same option (and refuse by default).
    from dalimix.pipelines.imagenet import val_pipeline
    with pytest.raises(ValueError, match="leaves the data root"):
        val_pipeline(data, file_list=str(lst), batch_size=2, device="cpu")
    assert val_pipeline(data, file_list=str(lst), batch_size=2, device="cpu", allow_outside_root=True) is not None


# -- 8. a file list with a byte order mark; --data naming a file -----------------------------------------------
def test_file_list_with_a_utf8_bom_and_classes(tmp_path):
    data = make_class_tree(tmp_path / "d", [2, 1])
    lst = tmp_path / "bom.txt"
    lst.write_bytes(b"\xef\xbb\xbfclass_00/img_000.jpg 1\r\nclass_01/img_000.jpg 0\r\n")
    ds = read_file_list(lst, data, classes=["b", "a"])
    assert ds.files == [str(data / "class_00/img_000.jpg"), str(data / "class_01/img_000.jpg")]
    assert ds.labels == [1, 0] and ds.classes == ["b", "a"]
    with pytest.raises(ValueError, match="line 1: label 1 but classes has 1 names"):
        read_file_list(lst, data, classes=["b"])
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        read_file_list(lst, lst)


# -- 2. outputs agree after a crash between any two writes, or the resumed run repairs them ----------------------
class _Crash(BaseException):
    """Stands for a kill -9: nothing after it runs (BaseException, so no `except Exception` swallows it)."""


def _toy_fit(out: Path, *, epochs: int, stop: int | None = None, resume: Path | None = None) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = engine.warmup_cosine(opt, total_steps=epochs * 2)
    state = None
    if resume is not None:
        ckpt = engine.load_checkpoint(str(resume))
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        engine.restore_schedule(sched, ckpt["scheduler"], epoch=ckpt["epoch"] + 1, steps_per_epoch=2)
        state = engine.TrainState.from_checkpoint(ckpt)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    cfg = engine.FitConfig(epochs=epochs, output=str(out), progress=False, stop_epoch=stop,
                           resumed_from=str(resume) if resume else None)
    return engine.fit(model, batches, batches, opt, ctx=DistContext(), cfg=cfg, scheduler=sched, state=state,
                      log=lambda *_: None)


def _assert_outputs_agree(out: Path, epochs_done: int) -> None:
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == epochs_done - 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ckpt["history"]] == list(range(epochs_done))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == epochs_done
    assert summary["best_epoch"] == ckpt["best_epoch"] == engine.checkpoint_epoch(str(out / "best.pt"))
    assert summary["best_val_top1"] == ckpt["best_top1"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == sorted(engine.OUTPUT_FILES)  # no stale tmp files


def test_outputs_agree_after_a_crash_between_any_two_writes(tmp_path, monkeypatch):
    # Every epoch improves val top-1, so every epoch also writes best.pt (the case that used to disagree).
    monkeypatch.setattr(engine, "evaluate", lambda model, loader, *, epoch=0, **kw: {
        "val_loss": 1.0, "val_top1": 10.0 * (epoch + 1), "val_top5": 50.0, "val_samples": 8})
    real_replace = os.replace
    crashed_at = []
    for k in range(1, 20):
        out = tmp_path / f"crash{k}"
        _toy_fit(out, epochs=2, stop=1)
        calls = []

        def replace(src, dst, _calls=calls, _k=k):
            _calls.append(os.path.basename(dst))
            if len(_calls) == _k:
                raise _Crash(f"killed before renaming {src}")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            _toy_fit(out, epochs=2, resume=out / "checkpoint.pt")  # the last epoch, crashing at rename k
        except _Crash:
            crashed_at.append(calls[-1])
            assert any(p.name.endswith((".tmp", ".tmp.png")) for p in out.iterdir())
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        if len(calls) < k:  # ran to the end without reaching rename k: every crash point was covered
            _assert_outputs_agree(out, 2)
            break
        # Whatever the crash left is readable (never a half-written file) ...
        engine.load_checkpoint(str(out / "checkpoint.pt"))
        json.loads((out / "summary.json").read_text())
        # ... and resuming from the checkpoint (even one that completed the last epoch) makes them agree.
        _toy_fit(out, epochs=2, resume=out / "checkpoint.pt")
        _assert_outputs_agree(out, 2)
    # The last epoch renames: the startup repair's curves + summary, then checkpoint, best, metrics, curves,
    # summary.
    assert crashed_at == ["curves.png", "summary.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "curves.png",
                          "summary.json"]


def test_resume_repairs_best_pt_from_a_checkpoint_that_claims_it(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "evaluate", lambda model, loader, *, epoch=0, **kw: {
        "val_loss": 1.0, "val_top1": 10.0 * (epoch + 1), "val_top5": 50.0, "val_samples": 8})
    out = tmp_path / "run"
    _toy_fit(out, epochs=3, stop=1)
    stale = (out / "best.pt").read_bytes()  # epoch 0
    _toy_fit(out, epochs=3, stop=2, resume=out / "checkpoint.pt")
    (out / "best.pt").write_bytes(stale)  # as a crash right after checkpoint.pt was committed leaves it
    (out / "best.pt.tmp").write_bytes(b"half a copy")
    summary = _toy_fit(out, epochs=3, stop=2, resume=out / "checkpoint.pt")  # nothing to train: repair only
    assert summary["epochs_completed"] == 2
    assert engine.checkpoint_epoch(str(out / "best.pt")) == 1
    assert (out / "best.pt").read_bytes() == (out / "checkpoint.pt").read_bytes()
    assert not (out / "best.pt.tmp").exists()


# -- 3. resuming with another batch size / number of ranks rescales the schedule -----------------------------------
def _schedule_lrs(steps_per_epoch: int, epochs: range, sched, opt) -> list[float]:
    lrs = []
    for _ in epochs:
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs


def test_restore_schedule_rescales_to_the_new_steps_per_epoch():
    def make(steps):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, engine.warmup_cosine(opt, total_steps=4 * steps, min_lr_ratio=0.002)

    opt, sched = make(10)
    _schedule_lrs(10, range(2), sched, opt)              # 2 of 4 epochs at 10 steps per epoch
    saved = sched.state_dict()
    opt2, sched2 = make(40)                                # resumed with a 4x smaller batch: 40 steps per epoch
    assert engine.restore_schedule(sched2, saved, epoch=2, steps_per_epoch=40) == 20
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * (0.002 + 0.998 * 0.5))  # half way down the cosine
    lrs = _schedule_lrs(40, range(2, 4), sched2, opt2)
    assert sched2.last_epoch == 160
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.002)  # the end of the cosine, reached exactly
    assert lrs[-1] == pytest.approx(0.1 * (0.002 + 0.998 * 0.5 * (1 + math.cos(math.pi * 159 / 160))))
    # Same steps per epoch: the position and lr are exactly the checkpoint's (bit-identical resume).
    opt3, sched3 = make(10)
    before = opt.param_groups[0]["lr"]
    engine.restore_schedule(sched3, saved, epoch=2, steps_per_epoch=10)
    assert sched3.last_epoch == 20 and opt3.param_groups[0]["lr"] == before


# -- 17. a checkpoint is data: loading one never runs code ------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"version": 1, "epoch": 0, "model": {}, "history": [], "payload": _Evil(str(marker))}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_by_the_loader(tmp_path):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(engine.CheckpointError) as err:
        engine.load_checkpoint(str(evil))
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {str(evil)!r} refused: loading it would unpickle code (Unsupported global: "
                          f"GLOBAL "), msg
    assert "exec)" in msg.split(", and loading")[0]  # the global it asked for
    assert "convert_checkpoint(" in msg and "--trust-checkpoint" in msg
    with pytest.raises(engine.CheckpointError, match="refused"):
        engine.convert_checkpoint(str(evil), str(tmp_path / "converted.pt"))
    assert engine.checkpoint_epoch(str(evil)) is None
    assert not marker.exists()  # nothing from the file ran


# -- 6. a dead rank on another node is named by the survivors --------------------------------------------------------
_WORKER = '''
import os, signal, sys
import torch
import torch.distributed as dist
from dalimix.train.distributed import init_distributed

ctx = init_distributed("cpu", timeout_minutes=2)
how = sys.argv[1]
try:
    t = torch.ones(1)
    ctx.all_reduce_sum(t)  # everybody is up
    if ctx.rank == 1:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # no Python runs after this: nothing can report
        raise ValueError("bad shard on rank 1")
    for _ in range(1000):
        ctx.all_reduce_sum(t)
    print("rank 0 finished?!", flush=True)
except Exception as exc:
    print(f"[rank {ctx.rank}] failed: {exc}\\n{ctx.failure_report(exc, wait_s=2)}", file=sys.stderr, flush=True)
    sys.exit(1)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_rank_dying_on_another_node_is_named(tmp_path, how):
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    port = str(_free_port())
    # Two "nodes" of one rank each, as scripts/train_multi_gpu.sh starts them (static rendezvous on node 0).
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}", str(worker),
                               how], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (0, 1)]
    outs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [1, 1], outs
    err0 = outs[0][1]
    assert "[rank 0] failed:" in err0, err0
    if how == "kill":
        assert "  rank 1 (node 1, host " in err0 and "did not report within 2 s: it died" in err0, err0
    else:
        assert "  rank 1 (node 1, host " in err0 and "failed first: ValueError: bad shard on rank 1" in err0, err0
        assert "rank 1 failed with an error of its own" in outs[1][1]


def test_trusted_old_checkpoints_convert_to_plain_data_and_version_1_rng_states_load(tmp_path):
    import random

    import numpy as np

    # Version 1 kept the python / numpy RNG states as tuples (numpy: an array): loads as data, no trust needed.
    random.seed(5)
    np.random.seed(5)
    old = {"version": 1, "epoch": 0, "model": {"w": torch.ones(2)}, "history": [],
           "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}
    torch.save(old, tmp_path / "v1.pt")
    ckpt = engine.load_checkpoint(str(tmp_path / "v1.pt"))
    engine.set_rng_state(ckpt["rng"][0])
    assert (random.random(), float(np.random.rand())) == (random.Random(5).random(), np.random.RandomState(5).rand())
    # A foreign object (here a numpy scalar) is refused unless trusted; trusted, it converts to plain data.
    torch.save({**old, "rng": [], "best_top1": np.float64(12.5)}, tmp_path / "foreign.pt")
    with pytest.raises(engine.CheckpointError, match="refused"):
        engine.load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.warns(UserWarning, match="trust=True"):
        engine.convert_checkpoint(str(tmp_path / "foreign.pt"), str(tmp_path / "plain.pt"), trust=True)
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert plain["best_top1"] == 12.5 and type(plain["best_top1"]) is float and plain["version"] == 2
    with pytest.raises(TypeError, match=r"checkpoint\['x'\] is a argparse.Namespace"):
        import argparse
        engine.save_checkpoint(str(tmp_path / "bad.pt"), {"x": argparse.Namespace()})
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.pt.tmp").exists()


# -- the training script ---------------------------------------------------------------------------------------
SCRIPT = ROOT / "scripts" / "train_imagenet.py"
BASE = ["--arch", "resnet18", "--device", "cpu", "--threads", "1", "--crop", "32", "--batch-size", "8",
        "--lr", "0.02", "--no-progress", "--seed", "3", "--epochs", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from dalimix.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("reliability") / "ds", train_per_class=12, val_per_class=2)


@pytest.fixture(scope="module")
def script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_imagenet_reliability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def test_resume_refuses_a_checkpoint_whose_pickle_runs_code(script, data, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(SystemExit) as exc:
        script.main(["--data", str(data), *BASE, "--resume", str(evil)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --resume: checkpoint {str(evil)!r} refused: loading it would unpickle code" in err
    assert not marker.exists()


def test_data_naming_a_file_says_it_is_not_a_directory(script, tmp_path, capsys):
    f = tmp_path / "data.txt"
    f.write_text("not a dataset\n")
    with pytest.raises(SystemExit) as exc:
        script.main(["--data", str(f), *BASE])
    assert exc.value.code == 2
    assert f"error: --data: {str(f)!r} is not a directory (expected a folder holding train/ and val/)" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_another_batch_size_rescales_the_schedule_to_its_end(data, tmp_path):
    first = tmp_path / "first"
    common = ["--data", str(data), *BASE, "--min-lr", "0.0002", "--max-val-steps", "1"]
    ok(run_script(*common, "--max-steps-per-epoch", "3", "--output", str(first), "--stop-at-epoch", "1"))
    assert torch.load(first / "checkpoint.pt", weights_only=True)["scheduler"]["last_epoch"] == 3
    out = tmp_path / "resumed"
    # Half the batch, twice the steps (capped to keep the test short; 120 images would give 30).
    proc = ok(run_script(*common, "--batch-size", "4", "--max-steps-per-epoch", "6", "--output", str(out),
                         "--resume", str(first / "checkpoint.pt")))
    assert "--resume: 3 -> 6 steps per epoch (--batch-size 4 x 1 rank(s)); the LR schedule is rescaled" in proc.stdout
    end = torch.load(out / "checkpoint.pt", weights_only=True)
    assert end["scheduler"]["last_epoch"] == 12  # 2 epochs of 6 steps: the whole cosine
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0002)  # its end, as asked by --min-lr
    # best.pt is data a plain torchvision model loads (weights_only=True)
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(out / "best.pt", weights_only=True)["model"])


@pytest.mark.slow
def test_resume_from_an_earlier_checkpoint_into_a_run_that_went_further(data, tmp_path):
    base = [*BASE, "--max-steps-per-epoch", "3", "--max-val-steps", "1"]  # short epochs: only the files matter here
    out = tmp_path / "run"
    ok(run_script("--data", str(data), *base, "--output", str(out), "--stop-at-epoch", "1"))
    early = tmp_path / "early.pt"
    early.write_bytes((out / "checkpoint.pt").read_bytes())  # like best.pt from an earlier epoch
    ok(run_script("--data", str(data), *base, "--output", str(out), "--resume", str(out / "checkpoint.pt")))
    before = (out / "checkpoint.pt").read_bytes()
    proc = run_script("--data", str(data), *base, "--output", str(out), "--resume", str(early))
    assert proc.returncode == 2
    assert (f"error: --resume: {early} is epoch 1, but --output {out} holds a run that went further (checkpoint.pt "
            f"is at epoch 2, metrics.jsonl logs epoch 2): resuming there would drop epochs 2.. from metrics.jsonl and "
            f"overwrite checkpoint.pt. Resume from {out / 'checkpoint.pt'} to continue that run, write to another "
            f"--output to branch off, or pass --discard-later-epochs") in proc.stderr
    assert (out / "checkpoint.pt").read_bytes() == before and len((out / "metrics.jsonl").read_text().splitlines()) == 2

    # A run killed after its last checkpoint: resuming it only repairs the outputs (it used to refuse).
    (out / "summary.json").unlink()
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    proc = ok(run_script("--data", str(data), *base, "--output", str(out), "--resume", str(out / "checkpoint.pt")))
    assert "already completed all 2 epoch(s) of --epochs 2; nothing to train" in proc.stdout
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 2
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]

    proc = ok(run_script("--data", str(data), *base, "--output", str(out), "--resume", str(early),
                         "--discard-later-epochs"))
    assert "--discard-later-epochs" in proc.stderr and "resumed from" in proc.stdout
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


@pytest.mark.slow
def test_multi_node_launcher_names_a_killed_rank_on_the_other_node(data, tmp_path):
    import threading

    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1", NODES="2",
               GPUS_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PYTHON=sys.executable)
    args = ["--data", str(data), *BASE, "--epochs", "50", "--dist-timeout", "3", "--dist-report-wait", "3"]
    nodes = [subprocess.Popen([str(ROOT / "scripts" / "train_multi_gpu.sh"), *args], cwd=ROOT,
                              env={**env, "NODE_RANK": str(n)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in (0, 1)]
    started = threading.Event()
    lines: list[str] = []

    def read_stdout() -> None:
        for line in nodes[0].stdout:
            lines.append(line)
            if "steps/epoch" in line:  # rank 0 logs the run just before the first epoch
                started.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert started.wait(240), "".join(lines) + nodes[0].stderr.read()
        # node 1's launcher exec'd torchrun; its only child is the worker of rank 1: kill -9 it.
        children = Path(f"/proc/{nodes[1].pid}/task/{nodes[1].pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        err0 = nodes[0].communicate(timeout=240)[1]
        nodes[1].communicate(timeout=60)
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert nodes[0].returncode != 0
    assert "[rank 0/2] training failed:" in err0, err0[-4000:]
    assert "  rank 1 (node 1, host " in err0 and "did not report within 3 s: it died" in err0, err0[-4000:]
