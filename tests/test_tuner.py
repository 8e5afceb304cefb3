"""The loader tuner: a search with fake loaders whose speed is known (fast, in process), its search space and
printing, and `dalimix-profile --tune` end to end on a tiny generated dataset (slow): it stays within its
budget and prints a `train_pipeline(...)` call that builds a working pipeline and flags `dalimix-train` has.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dalimix.tools import tuner
from dalimix.data.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]


class FakeLoader:
    """Batches of `batch_size` zeros, each after a sleep that shrinks with more threads (and a depth of 1 is
    slower): images/s are known up to the machine's noise, and the ratios between settings are large."""

    def __init__(self, settings: dict):
        self.settings = settings
        base = 0.012 * 2 / settings["num_threads"]
        self.sleep = base * (1.5 if settings.get("prefetch_queue_depth", 2) == 1 else 1.0)

    def __len__(self) -> int:
        return 4

    def __iter__(self):
        for _ in range(4):
            time.sleep(self.sleep)
            yield torch.zeros(self.settings["batch_size"], 1), torch.zeros(self.settings["batch_size"])


def fake_factory(*, batch_size: int, num_threads: int, prefetch_queue_depth: int = 2) -> dict:
    if batch_size > 32:
        raise ValueError(f"batch_size {batch_size} is larger than the 32 samples per shard")
    return {"batch_size": batch_size, "num_threads": num_threads, "prefetch_queue_depth": prefetch_queue_depth}


def fake_knobs(**kw) -> list[tuner.Knob]:
    return tuner.search_space("cpu", batch_size=8, num_threads=2, thread_counts=(1, 2, 4), prefetch_depths=(1, 2, 3),
                              batch_sizes=(8, 16, 64), **kw)


def test_the_search_finds_the_fastest_settings_within_its_budget():
    budget = 6.0
    t0 = time.perf_counter()
    # The designed differences are 1.5x and more; a 25% margin keeps a loaded machine's noise (sleeps that
    # overrun) from crowning depth 3, which sleeps exactly as long as depth 2.
    res = tuner.tune(fake_factory, fake_knobs(), seconds=budget, repeats=2, make_loader=FakeLoader, progress=False,
                     log=lambda _: None, margin=0.25)
    wall = time.perf_counter() - t0
    assert wall <= budget + 2.0 and res.seconds <= wall
    assert res.defaults == {"num_threads": 2, "prefetch_queue_depth": 2, "batch_size": 8}
    # 4 threads halve the sleep, batch 16 doubles the images per sleep; depth 3 is no faster than 2, so the
    # default stays (a value must win by more than the margin).
    assert res.best == {"num_threads": 4, "prefetch_queue_depth": 2, "batch_size": 16}
    assert res.changed == {"batch_size": 16, "num_threads": 4}
    assert res.side_by_side and len(res.final_runs["best"]) == 2
    assert 2.0 < res.gain < 8.0  # 4x expected
    too_big = [t for t in res.trials if t["knob"] == "batch_size" and t["label"] == "64"]
    assert len(too_big) == 1 and too_big[0]["images_per_sec"] is None
    assert too_big[0]["note"].startswith("not applicable") and "larger than the 32 samples" in too_big[0]["note"]
    measured = {(t["knob"], t["label"]) for t in res.trials if t["images_per_sec"] is not None}
    assert measured == {("num_threads", "1"), ("num_threads", "2"), ("num_threads", "4"),
                        ("prefetch_queue_depth", "1"), ("prefetch_queue_depth", "2"), ("prefetch_queue_depth", "3"),
                        ("batch_size", "8"), ("batch_size", "16")}
    json.dumps(res.to_dict())  # plain data


def test_a_pick_the_final_rounds_do_not_confirm_is_not_advised():
    said: list[str] = []

    class Fickle(FakeLoader):
        """4 threads are fast only until the first stage has been decided, then no faster than 2."""

        def __iter__(self):
            fast = self.settings["num_threads"] == 4 and not said
            for _ in range(4):
                time.sleep(self.sleep if fast else 0.012)  # 0.012: the sleep of 2 threads
                yield torch.zeros(self.settings["batch_size"], 1), torch.zeros(self.settings["batch_size"])

    knobs = tuner.search_space("cpu", batch_size=8, num_threads=2, thread_counts=(2, 4), prefetch_depths=(2,),
                               batch_sizes=(8,))
    res = tuner.tune(fake_factory, knobs, seconds=4.0, repeats=2, margin=0.2, make_loader=Fickle, progress=False,
                     log=said.append)
    assert res.unconfirmed == {"num_threads": 4, "prefetch_queue_depth": 2, "batch_size": 8}
    assert res.best == res.defaults and res.changed == {} and res.gain == 1.0
    assert res.chosen["num_threads"] == "2"
    text = tuner.format_report(res, "/d", {"device": "cpu"})
    assert "keep the defaults" in text and "num_threads=4" in text
    assert "train_pipeline('/d', batch_size=8, device='cpu', num_threads=2, prefetch_queue_depth=2)" in text


def test_a_candidate_failing_while_measured_is_reported_and_passed_over():
    class Breaks(FakeLoader):
        """4 threads fail in their second epoch (after the warm-up), as a GPU out of memory would."""
        epochs = 0

        def __iter__(self):
            self.epochs += 1
            if self.settings["num_threads"] == 4 and self.epochs > 1:
                raise RuntimeError("CUDA out of memory")
            return super().__iter__()

    knobs = tuner.search_space("cpu", batch_size=8, num_threads=2, thread_counts=(1, 2, 4), prefetch_depths=(2,),
                               batch_sizes=(8,))
    res = tuner.tune(fake_factory, knobs, seconds=3.0, repeats=2, make_loader=Breaks, progress=False,
                     log=lambda _: None)
    broken = [t for t in res.trials if t["label"] == "4"]
    assert len(broken) == 1 and broken[0]["note"] == "failed: RuntimeError: CUDA out of memory"
    assert res.best["num_threads"] == 2  # 1 thread is slower, 4 did not run
    assert {t["label"] for t in res.trials if t["images_per_sec"] is not None} == {"1", "2"}


def test_knobs_the_factory_does_not_take_are_skipped_and_said():
    knobs = tuner.search_space("gpu", batch_size=8, num_threads=2, thread_counts=(2, 4), prefetch_depths=(2,),
                               batch_sizes=(8,), max_image=(640, 480))
    res = tuner.tune(fake_factory, knobs, seconds=2.0, repeats=1, make_loader=FakeLoader, progress=False,
                     log=lambda _: None)
    assert set(res.skipped) == {"hw_decoder_load", "decoder_memory"}
    assert all("takes no decoder_options argument" in why for why in res.skipped.values())
    assert res.best["num_threads"] == 4
    text = tuner.format_report(res, "/data/train", {"crop": 224, "device": "gpu"})
    assert "hw_decoder_load" in text and "not searched" in text


def test_gpu_decoder_settings_reach_the_factory_as_decoder_options():
    seen = []

    def factory(*, batch_size: int, num_threads: int, prefetch_queue_depth: int = 2, decoder_options=None):
        seen.append(decoder_options)
        return {"batch_size": batch_size, "num_threads": num_threads, "prefetch_queue_depth": prefetch_queue_depth,
                "decoder_options": decoder_options or {}}

    class DecoderLoader(FakeLoader):
        def __init__(self, settings):  # the hardware decoder's share 0.8 is the fast one here
            super().__init__(settings)
            self.sleep *= 0.4 if settings["decoder_options"].get("hw_decoder_load") == 0.8 else 1.0

    knobs = tuner.search_space("gpu", batch_size=8, num_threads=2, thread_counts=(2,), prefetch_depths=(2,),
                               batch_sizes=(8,), hw_decoder_loads=(0.0, 0.8), max_image=(1000, 800))
    res = tuner.tune(factory, knobs, seconds=6.0, repeats=2, make_loader=DecoderLoader, progress=False,
                     log=lambda _: None)
    assert not res.skipped
    assert None in seen and {"hw_decoder_load": 0.8} in seen and {"hw_decoder_load": 0.0} in seen
    padded = {"hw_decoder_load": 0.8, "device_memory_padding": 16 * 2 ** 20, "host_memory_padding": 16 * 2 ** 20,
              "preallocate_width_hint": 1000, "preallocate_height_hint": 800}
    assert padded in seen  # the decoder-memory stage runs on top of the best share so far
    assert res.best["hw_decoder_load"] == 0.8 and res.gain > 1.5
    call = tuner.pipeline_call("/d", res.best, {"device": "gpu"})
    assert "decoder_options={'hw_decoder_load': 0.8" in call
    flags, _ = tuner.train_flags(res.best)
    assert "--hw-decoder-load 0.8" in flags


def test_the_current_settings_must_run():
    knobs = tuner.search_space("cpu", batch_size=64, num_threads=2, thread_counts=(2,), prefetch_depths=(1, 2),
                               batch_sizes=(64,))
    with pytest.raises(RuntimeError, match="current settings .* do not run: batch_size 64"):
        tuner.tune(fake_factory, knobs, seconds=2.0, make_loader=FakeLoader, progress=False, log=lambda _: None)


def test_search_space():
    cpu = tuner.search_space("cpu", batch_size=64, num_threads=3, prefetch_queue_depth=2)
    assert [k.name for k in cpu] == ["num_threads", "prefetch_queue_depth", "batch_size"]
    threads = [c["num_threads"] for c in cpu[0].candidates]
    assert 3 in threads and threads == sorted(set(threads)) and min(threads) >= 1
    assert [c["prefetch_queue_depth"] for c in cpu[1].candidates] == [1, 2, 3, 4]
    assert [c["batch_size"] for c in cpu[2].candidates] == [32, 64, 128]
    assert all(dict(k.default) in [dict(c) for c in k.candidates] for k in cpu)
    gpu = tuner.search_space("gpu", batch_size=256, num_threads=4, max_image=(4000, 3000))
    names = [k.name for k in gpu]
    assert names == ["num_threads", "prefetch_queue_depth", "batch_size", "hw_decoder_load", "decoder_memory"]
    hw = gpu[3]
    assert dict(hw.default) == {} and hw.label({}).startswith("0.65")
    assert [c.get("hw_decoder_load") for c in hw.candidates] == [None, 0.0, 0.3, 0.8, 0.95]
    padded = gpu[4].candidates[1]
    assert padded["preallocate_width_hint"] == 4000 and padded["preallocate_height_hint"] == 3000
    # Room for the largest image decoded (RGB), in whole MiB, on device and host alike.
    assert padded["device_memory_padding"] == padded["host_memory_padding"] == 35 * 2 ** 20
    with pytest.raises(ValueError, match="batch_size"):
        tuner.search_space("cpu", batch_size=0, num_threads=2)
    with pytest.raises(ValueError, match="device"):
        tuner.search_space("tpu", batch_size=8, num_threads=2)
    with pytest.raises(ValueError, match="hw_decoder_loads"):
        tuner.search_space("gpu", batch_size=8, num_threads=2, hw_decoder_loads=(1.5,))


def test_printing_the_settings():
    call = tuner.pipeline_call("/d/train", {"num_threads": 2, "batch_size": 64, "prefetch_queue_depth": 3},
                               {"crop": 224, "device": "cpu"})
    assert call == "train_pipeline('/d/train', batch_size=64, crop=224, device='cpu', num_threads=2, " \
                   "prefetch_queue_depth=3)"
    flags, unflagged = tuner.train_flags({"num_threads": 2, "batch_size": 64, "prefetch_queue_depth": 3})
    assert flags == "--batch-size 64 --threads 2 --prefetch 3" and unflagged == []
    gpu = {"batch_size": 64, "hw_decoder_load": 0.8, "device_memory_padding": 2 ** 24,
           "host_memory_padding": 2 ** 24, "preallocate_width_hint": 640, "preallocate_height_hint": 480}
    assert tuner.pipeline_call("/d", gpu, {"device": "gpu"}) == (
        "train_pipeline('/d', batch_size=64, device='gpu', decoder_options={'hw_decoder_load': 0.8, "
        "'device_memory_padding': 16777216, 'host_memory_padding': 16777216, 'preallocate_width_hint': 640, "
        "'preallocate_height_hint': 480})")
    flags, unflagged = tuner.train_flags(gpu)
    assert flags == ("--batch-size 64 --hw-decoder-load 0.8 --decoder-memory-padding 16777216 "
                     "--decoder-preallocate 640 480") and unflagged == []
    _, unflagged = tuner.train_flags({"device_memory_padding": 1, "host_memory_padding": 2})
    assert unflagged == ["device_memory_padding=1", "host_memory_padding=2"]  # one flag sets both
    assert tuner.accepts(fake_factory, "num_threads") and not tuner.accepts(fake_factory, "hw_decoder_load")
    assert tuner.accepts(lambda *, decoder_options=None: None, "preallocate_width_hint")
    assert tuner.accepts(lambda **kw: kw, "anything")


def test_max_image_size_reads_headers(tmp_path):
    from PIL import Image

    for i, size in enumerate([(40, 30), (20, 50), (33, 33)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    files = sorted(str(p) for p in tmp_path.iterdir())
    assert tuner.max_image_size(files) == (40, 50)
    assert tuner.max_image_size([]) is None


# -- end to end ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tune"), train_per_class=8, val_per_class=1,
                        classes=("disc", "square", "stripes", "checks"))


def _train_parser():
    spec = importlib.util.spec_from_file_location("train_imagenet_for_tuner", ROOT / "scripts" / "train_imagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.slow
def test_tune_end_to_end_prints_runnable_settings(tiny, tmp_path):
    budget = 20.0
    out_json, out_png = tmp_path / "tune.json", tmp_path / "tune.png"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--tune", "--data",
                           str(tiny / "train"), "--device", "cpu", "--batch-size", "8", "--crop", "32",
                           "--threads", "2",
                           "--seconds", str(budget), "--repeats", "2", "--thread-counts", "1,2", "--prefetch-depths",
                           "1,2", "--batch-sizes", "4,8", "--json", str(out_json), "--plot", str(out_png)],
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["tune"]["seconds"] <= budget + 5.0  # the search itself; imports and the scan come on top
    assert wall < budget + 120.0
    assert report["tune"]["gain"] > 0 and report["tune"]["defaults"] == {"num_threads": 2, "prefetch_queue_depth": 2,
                                                                          "batch_size": 8}
    lines = proc.stdout.splitlines()
    call = [line for line in lines if line.startswith("train_pipeline(")]
    assert len(call) == 1 and call[0] == report["pipeline_call"]
    # The printed call builds a pipeline that delivers batches of the printed size.
    from dalimix import DaliLoader
    from dalimix.spec import PipelineSpec
    from dalimix.pipelines.imagenet import train_pipeline

    spec = eval(call[0], {"train_pipeline": train_pipeline})  # noqa: S307 - our own output, checked above
    assert isinstance(spec, PipelineSpec)
    best = report["tune"]["best"]
    assert spec.pipeline.num_threads == best["num_threads"] and spec.pipeline.max_batch_size == best["batch_size"]
    images, _ = next(iter(DaliLoader(spec)))
    assert tuple(images.shape) == (best["batch_size"], 3, 32, 32)
    # The printed dalimix-train flags exist and take the printed values.
    flag_line = [line for line in lines if line.startswith("dalimix-train ")]
    assert len(flag_line) == 1
    flags = flag_line[0].split("#")[0].split()[1:]
    args = _train_parser().parse_args(["--data", str(tiny), *flags])
    assert args.threads == best["num_threads"] and args.batch_size == best["batch_size"]
    assert args.prefetch == best["prefetch_queue_depth"]
    assert re.search(r"gain \d+\.\d\dx", proc.stdout)
    from PIL import Image
    assert Image.open(out_png).size[0] > 300


def test_tune_flag_errors(tiny):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--tune", "--data",
                           str(tiny / "train"), "--thread-counts", "0,2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--thread-counts" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/profile_loader.py"), "--tune", "--data",
                           str(tiny / "train"), "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--epochs" in proc.stderr


# -- what the profiler's report ends with (dalimix.tools.profiling) -----------------------------------------------------
def test_the_verdict_says_which_side_binds_and_by_how_much():
    from dalimix.tools.profiling import bound_by

    slow_input = bound_by(300.0, 1200.0, arch="resnet50", device="gpu")
    assert slow_input.startswith("Input-bound") and "4.00x fewer" in slow_input and "~75% of the time" in slow_input
    assert "--tune" in slow_input and slow_input.count(".") >= 1 and "\n" not in slow_input
    slow_model = bound_by(1500.0, 90.0, arch="resnet18", device="cpu")
    assert slow_model.startswith("Model-bound") and "16.67x" in slow_model and "share the cores" in slow_model
    with pytest.raises(ValueError, match="rates"):
        bound_by(0.0, 10.0, arch="resnet18", device="cpu")


def test_cpu_decoder_path_and_model_step_rate():
    from dalimix.tools.profiling import decoder_path, model_step_rate

    assert decoder_path("cpu").startswith("cpu: libjpeg-turbo via nvImageCodec ")
    with pytest.raises(ValueError, match="device"):
        decoder_path("tpu")
    rate = model_step_rate("resnet18", batch_size=2, crop=32, steps=1, warmup=0, device="cpu", threads=1)
    assert rate > 0
    with pytest.raises(ValueError, match="arch"):
        model_step_rate("resnet_nope", batch_size=2, crop=32, steps=1, warmup=0, device="cpu")
