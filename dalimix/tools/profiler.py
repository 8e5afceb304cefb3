"""The profiler's run (`dalimix-profile`): every contender side by side, the ratios, the stage breakdown, the
decoder, GPU memory and the verdict, printed, as JSON and as a chart; and `--tune`'s search on the user's data.

The command line (`scripts/profile_loader.py`) parses the flags into an `argparse.Namespace` and calls
`profile(a)` or `tune(a)`; measuring primitives live in `dalimix.tools.profiling`, the search in
`dalimix.tools.tuner`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from dalimix import native
from dalimix.config import MixConfig
from dalimix.data.class_names import is_imagenet_wnids, readable_names
from dalimix.data.dataset import Dataset, scan_folder
from dalimix.loader import DaliLoader
from dalimix.pipelines.imagenet import train_pipeline
from dalimix.pipelines.stages import stage_pipeline, stages
from dalimix.tools import tuner
from dalimix.tools.profiling import (Contender, ModelStep, TorchBatchMix, bound_by, dataloader_pids, decoder_path,
                                     model_step_rate, pipeline_gpu_memory, torch_threads, torchvision_loader,
                                     training_torch_threads)


def recipe(a: argparse.Namespace) -> dict:
    """The augmentation recipe the flags ask for, as `train_pipeline` arguments (empty: the plain loader)."""
    out: dict = {}
    if a.aa:
        out["auto_augment"] = a.aa
    if a.color_jitter:
        out["color_jitter"] = a.color_jitter
    if a.interpolation != "bilinear":
        out["interpolation"] = a.interpolation
    if a.re_prob > 0:
        out.update(re_prob=a.re_prob, re_mode=a.re_mode, re_order=a.re_order)
    return out


def contenders(a: argparse.Namespace, num_classes: int) -> list[Contender]:
    common = dict(batch_size=a.batch_size, crop=a.crop, device=a.device, num_threads=a.threads, seed=0, **recipe(a))
    mix = MixConfig(num_classes=num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    out = [
        Contender("decode_only", lambda: _RawPipe(stage_pipeline(a.data, "decode", dtype=a.dtype, **common)),
                  step=lambda b: b),
        Contender("mix_off", lambda: DaliLoader(train_pipeline(a.data, dtype=a.dtype, **common))),
        Contender("mix_on", lambda: DaliLoader(train_pipeline(a.data, dtype=a.dtype, mix=mix, **common))),
    ]
    if native.available(a.device) and not a.no_stock:
        # The stock-operator graph dalimix falls back to without a compiler, measured in the same run.
        def stock(**kw):
            def make():
                with native.stock_operators():
                    return DaliLoader(train_pipeline(a.data, dtype=a.dtype, **kw, **common))
            return make
        out += [Contender("mix_off_stock", stock()), Contender("mix_on_stock", stock(mix=mix))]
    if a.shards:
        # The same dataset as tar shards, read by DALI's webdataset reader: the loader and the read ceiling.
        read = dict(common, dtype=a.dtype)
        out += [Contender("mix_on_shards", lambda: DaliLoader(train_pipeline(a.shards, dtype=a.dtype, mix=mix,
                                                                                **common))),
                Contender("read_folder", lambda: _RawPipe(stage_pipeline(a.data, "read", **read)), step=lambda b: b),
                Contender("read_shards", lambda: _RawPipe(stage_pipeline(a.shards, "read", **read)),
                          step=lambda b: b)]
    if not a.no_torchvision:
        batch_mix = library_batch_mix(mix) if recipe(a) else TorchBatchMix(mix)
        gpu = a.device == "gpu"

        def tv_step(batch, mixing=False):
            x, y = batch
            if gpu:
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            if mixing:
                x, y = batch_mix(x, y)
            if gpu:
                torch.cuda.synchronize()
            return int(x.shape[0])

        transform = reference_transform(a)
        make = lambda: torchvision_loader(a.data, batch_size=a.batch_size, crop=a.crop, workers=a.threads,  # noqa
                                          pin_memory=gpu, transform=transform)
        out += [Contender("torchvision", make, step=tv_step, pids=dataloader_pids),
                Contender("torchvision_mix", make, step=lambda b: tv_step(b, True), pids=dataloader_pids)]
    return out


def library_batch_mix(mix: MixConfig) -> Any:
    """Batch mixing as the reference recipes run it in the training loop: timm's own `Mixup` where timm is
    installed, else the same rule written here."""
    try:
        from timm.data import Mixup
    except ImportError:
        return TorchBatchMix(mix)
    return Mixup(mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
                 switch_prob=mix.switch_prob, mode=mix.mode, label_smoothing=mix.label_smoothing,
                 num_classes=mix.num_classes)


def reference_transform(a: argparse.Namespace) -> Any:
    """The torchvision DataLoader's per-image transform for the recipe of the flags: timm's own
    `create_transform` for timm's policy strings (and colour jitter), torchvision's preset for its names;
    None for the plain recipe (RandomResizedCrop, flip, ToTensor, Normalize)."""
    rec = recipe(a)
    if not rec:
        return None
    policy = rec.get("auto_augment")
    interp = "bilinear" if a.interpolation == "random" and policy and not policy.startswith(("rand", "3a")) \
        else a.interpolation
    if policy is None or policy.startswith(("rand", "3a")):
        try:
            from timm.data import create_transform
        except ImportError:
            raise SystemExit("--aa: the reference contender runs timm's own transform; pip install timm, or pass "
                             "--no-torchvision") from None
        return _posterize_zero_bits_black(
            create_transform(a.crop, is_training=True, auto_augment=policy, interpolation=interp,
                             color_jitter=rec.get("color_jitter") or 0.0, re_prob=a.re_prob, re_mode=a.re_mode,
                             re_count=1))
    import torchvision.transforms as T

    from dalimix.ops.policy import parse_policy
    mode = T.InterpolationMode.BICUBIC if interp == "bicubic" else T.InterpolationMode.BILINEAR
    spec = parse_policy(policy)  # the same reading of the name as dalimix's own contenders
    aug = {"tv_ra": lambda: T.RandAugment(num_ops=spec.num_layers, magnitude=int(spec.magnitude),
                                          interpolation=mode),
           "tv_ta_wide": lambda: T.TrivialAugmentWide(interpolation=mode),
           "tv_imagenet": lambda: T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=mode)}[spec.kind]()
    steps = [T.RandomResizedCrop(a.crop, interpolation=mode), T.RandomHorizontalFlip(), aug, T.PILToTensor(),
             T.ConvertImageDtype(torch.float), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    if a.re_prob > 0:  # torchvision fills with 0 (dalimix's "const") or, with value="random", per-pixel noise
        steps.append(T.RandomErasing(p=a.re_prob, value="random" if a.re_mode == "pixel" else 0))
    return T.Compose(steps)


def reference_name(a: argparse.Namespace) -> str:
    """What the torchvision contenders run, in words."""
    rec = recipe(a)
    policy = rec.get("auto_augment")
    if not rec:
        return "torchvision's RandomResizedCrop + flip, batch mixing by timm's rule (written here)"
    if policy is None or policy.startswith(("rand", "3a")):
        return "timm's create_transform and timm's Mixup"
    return "torchvision's transforms (the policy as torchvision.transforms) and timm's Mixup"


def _posterize_zero_bits_black(transform: Any) -> Any:
    """timm's transform with its posterize ops giving a black image for 0 bits, as timm means and Pillow < 13
    did: Pillow 13 raises instead, which stops timm's own loader within an epoch of 'rand-...-inc1' (magnitude
    10 posterizes to 0 bits). Only this transform's op objects change."""
    from PIL import Image

    def posterize(fn):
        return lambda img, bits, **kw: Image.new(img.mode, img.size) if bits <= 0 else fn(img, bits, **kw)
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = posterize(op.aug_fn)
    return transform


def stage_contenders(a: argparse.Namespace, num_classes: int) -> list[Contender]:
    rec = recipe(a)
    common = dict(batch_size=a.batch_size, crop=a.crop, device=a.device, num_threads=a.threads, seed=0,
                  dtype=a.dtype, mix=MixConfig(num_classes=num_classes), **rec)

    def make(stage):
        return lambda: _RawPipe(stage_pipeline(a.data, stage, **common))
    augmenting = "auto_augment" in rec or "color_jitter" in rec
    return [Contender(f"stage_{s}", make(s), step=lambda b: b) for s in stages(a.device, augmenting=augmenting)]


class _RawPipe:
    """A pipeline run without the torch copy: yields batch sizes (for the stage breakdown)."""

    def __init__(self, spec):
        self.pipe = spec.pipeline
        self.pipe.build()
        self.source = spec.source

    def __iter__(self):
        for _ in range(self.source.batches_per_epoch):
            out = self.pipe.run()
            yield len(out[0])
        self.pipe.reset()


def measure(group: list[Contender], a: argparse.Namespace, total_images: int, label: str) -> None:
    per = dict(seconds=a.seconds or 8.0) if a.epochs is None else \
        dict(batches=max(1, int(a.epochs * total_images / a.batch_size)))
    for c in tqdm(group, desc=f"warm-up {label}", leave=False):
        c.run(seconds=a.warmup, record=False)
    bar = tqdm(total=a.repeats * len(group), desc=f"measuring {label}")
    for r in range(a.repeats):
        order = group if r % 2 == 0 else group[::-1]  # alternate so drift hits everyone alike
        for c in order:
            c.run(**per)
            bar.update()
    bar.close()


def ratio(results, num, den):
    return round(results[num]["images_per_sec"] / results[den]["images_per_sec"], 3) \
        if num in results and den in results else None


def describe_classes(classes: list[str]) -> str:
    """The dataset's classes in a few words, by readable name ("beagle", not "n02088364") where they are ImageNet's."""
    names = readable_names(classes)
    kind = "ImageNet classes" if is_imagenet_wnids(classes) else "classes"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} {kind} ({shown})"


def machine(a: argparse.Namespace) -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if a.device == "gpu" else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "dali": __import__("nvidia.dali").dali.__version__}


def command(argv) -> str:
    return " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))


def tune(a: argparse.Namespace, argv: Optional[list[str]] = None, dataset: Optional[Dataset] = None) -> dict:
    """--tune: search the loader settings on this data and device; print and return the report."""
    dataset = dataset if dataset is not None else scan_folder(a.data)
    seconds = a.seconds if a.seconds is not None else 120.0
    fixed = {"crop": a.crop, "device": a.device} | ({"dtype": a.dtype} if a.dtype != "float32" else {})
    # Each candidate lists the dataset again; it was verified once above, so the builds skip that.
    factory = functools.partial(train_pipeline, a.data, seed=0, verify_files=False, **fixed)
    knobs = tuner.search_space(a.device, batch_size=a.batch_size, num_threads=a.threads,
                               prefetch_queue_depth=a.prefetch, thread_counts=a.thread_counts,
                               prefetch_depths=a.prefetch_depths, batch_sizes=a.batch_sizes,
                               hw_decoder_loads=a.hw_decoder_loads,
                               max_image=tuner.max_image_size(dataset.files) if a.device == "gpu" else None)
    step = setup = None
    consumer = "loader only"
    if a.tune_with_model:
        step = ModelStep(a.arch, device=a.device, num_classes=max(1000, dataset.num_classes))
        consumer = f"loader + {a.arch} training step"
        if a.device == "cpu":
            def setup(settings):  # the cores a CPU training run leaves the model beside these DALI threads
                torch.set_num_threads(training_torch_threads(settings["num_threads"]))
    print(f"tuning the train loader on {len(dataset)} images, {describe_classes(dataset.classes)}, device "
          f"{a.device}, crop {a.crop}, within {seconds:g}s ({consumer})")
    with torch_threads(None):  # whatever the setups change is put back afterwards
        result = tuner.tune(factory, knobs, seconds=seconds, repeats=a.repeats, step=step, setup=setup,
                            consumer=consumer)
    text = tuner.format_report(result, a.data, fixed)
    print("\n" + text)
    flags, _ = tuner.train_flags(result.best)
    report = {"command": command(argv), "machine": machine(a),
              "settings": {k: v for k, v in vars(a).items() if k not in ("json", "plot")},
              "images": len(dataset), "tune": result.to_dict(),
              "pipeline_call": tuner.pipeline_call(a.data, result.best, fixed), "train_flags": flags,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if a.plot:
        tuner.plot_tuning(result, a.plot)
    return report


RATIOS = (("mix_on", "torchvision"), ("mix_off", "torchvision"), ("mix_on", "torchvision_mix"),
          ("mix_on", "decode_only"), ("mix_off", "decode_only"), ("mix_on", "mix_off"),
          ("torchvision_mix", "torchvision"), ("mix_on", "model_step"), ("mix_on", "mix_on_stock"),
          ("mix_on_shards", "mix_on"), ("read_shards", "read_folder"), ("mix_off", "mix_off_stock"),
          ("mix_on_stock", "mix_off_stock"))


def profile(a: argparse.Namespace, argv: Optional[list[str]] = None, dataset: Optional[Dataset] = None) -> dict:
    """Measure every contender side by side on `a.data`; print, write (`a.json`, `a.plot`) and return the report."""
    dataset = dataset if dataset is not None else scan_folder(a.data)
    mix = MixConfig(num_classes=dataset.num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    memory = None
    if a.device == "gpu" and a.memory_epochs > 0:
        # First, before any other pipeline fills DALI's memory pool: what the mix_on loader holds.
        memory = pipeline_gpu_memory(lambda: DaliLoader(train_pipeline(
            a.data, batch_size=a.batch_size, crop=a.crop, device="gpu", num_threads=a.threads, seed=0, mix=mix,
            dtype=a.dtype)), epochs=a.memory_epochs)
    group = contenders(a, dataset.num_classes)
    measure(group, a, len(dataset), "loaders")
    results = {c.name: c.median() for c in group}
    stages = {} if a.no_stages else stage_breakdown(a, dataset, results["mix_on"]["images_per_sec"])
    if a.device == "gpu" or a.model_step:
        cpu = a.device == "cpu"  # a few steps: ResNet-18 at 224 px takes seconds per step on a few cores
        rate = model_step_rate(a.arch, batch_size=a.batch_size, crop=a.crop, device=a.device,
                               steps=3 if cpu else 20, warmup=1 if cpu else 5,
                               threads=training_torch_threads(a.threads) if cpu else None)
        results["model_step"] = {"images_per_sec": rate, "cpu_cores": None, "rss_mb": None, "runs": [],
                                 "arch": a.arch}
    ratios = {f"{num}_vs_{den}": ratio(results, num, den) for num, den in RATIOS}
    verdict = None
    if "model_step" in results:
        verdict = bound_by(results["mix_on"]["images_per_sec"], results["model_step"]["images_per_sec"],
                           arch=a.arch, device=a.device)
    report = {
        "command": command(argv), "machine": machine(a),
        "settings": {k: v for k, v in vars(a).items() if k not in ("json", "plot")},
        "images": len(dataset), "classes": describe_classes(dataset.classes),
        "decoder": decoder_path(a.device, sample=dataset.files[0] if len(dataset) else None),
        "gpu_memory": memory, "results": results, "ratios": {k: v for k, v in ratios.items() if v is not None},
        "stages": stages, "verdict": verdict, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "recipe": recipe(a), "reference": reference_name(a),
    }
    print_report(report)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if a.plot:
        plot(report, a.plot)
    return report


def stage_breakdown(a: argparse.Namespace, dataset: Dataset, loader_rate: float) -> dict:
    """Each stage's cost: time per image of the graph up to it minus the graph before it (the last stage is
    the copy to torch, from the mix_on loader's rate)."""
    sgroup = stage_contenders(a, dataset.num_classes)
    measure(sgroup, a, len(dataset), "stages")
    rates = {c.name[len("stage_"):]: c.median()["images_per_sec"] for c in sgroup}
    rates["copy_to_torch"] = loader_rate
    ms = {k: 1000.0 / v for k, v in rates.items()}
    order = [c.name[len("stage_"):] for c in sgroup] + ["copy_to_torch"]
    costs = {k: ms[k] - (ms[order[i - 1]] if i else 0.0) for i, k in enumerate(order)}
    return {"path": "native" if native.available(a.device) else "stock",
            "images_per_sec": {k: round(rates[k], 1) for k in order},
            "ms_per_image": {k: round(v, 4) for k, v in costs.items()}}


def print_report(r: dict) -> None:
    print(f"\n{r['images']} images, {r['classes']}, device {r['settings']['device']}, batch "
          f"{r['settings']['batch_size']}, crop {r['settings']['crop']}, threads {r['settings']['threads']}")
    print(f"decoder: {r['decoder']}")
    if r.get("recipe"):
        print("recipe: " + ", ".join(f"{k}={v!r}" for k, v in r["recipe"].items())
              + f"; the torchvision contenders run {r['reference']}")
    mem = r["gpu_memory"]
    if mem is not None:
        print(f"GPU memory held by the pipeline (mix_on): {mem['after_warmup_mib']:.0f} MiB after "
              f"{mem['warmup_batches']} batches, {mem['after_epochs_mib']:.0f} MiB after {mem['epochs']} epoch(s) "
              f"({mem['growth_mib']:+.0f} MiB)")
    elif r["settings"]["device"] == "cpu":
        print("GPU memory: n/a (device cpu)")
    tv = r["results"].get("torchvision", {}).get("images_per_sec")
    dec = r["results"]["decode_only"]["images_per_sec"]
    print(f"{'loader':<18}{'img/s':>9}{'vs torchvision':>16}{'vs decode-only':>16}{'CPU cores':>11}{'RSS MiB':>9}")
    for name, v in r["results"].items():
        ips = v["images_per_sec"]
        cores = f"{v['cpu_cores']:.2f}" if v.get("cpu_cores") is not None else "-"
        rss = f"{v['rss_mb']:.0f}" if v.get("rss_mb") is not None else "-"
        print(f"{name:<18}{ips:>9.1f}{(ips / tv if tv else float('nan')):>16.2f}{ips / dec:>16.2f}"
              f"{cores:>11}{rss:>9}")
    if r["stages"]:
        print("\nstage breakdown (ms per image, graph up to the stage minus the graph before it):")
        for k, v in r["stages"]["ms_per_image"].items():
            print(f"  {k:<15}{v:>8.3f}")
    print("\nratios:")
    for k, v in r["ratios"].items():
        print(f"  {k:<32}{v:>7.3f}")
    if r["verdict"]:
        print("\n" + r["verdict"])


def plot(r: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(r["results"])
    values = [r["results"][n]["images_per_sec"] for n in names]
    fig, axes = plt.subplots(1, 2 if r["stages"] else 1, figsize=(12 if r["stages"] else 7, 4.2))
    axes = np.atleast_1d(axes)
    colours = ["#8c8c8c" if n.endswith("_stock") else "#4c72b0" if n.startswith(("mix", "decode"))
               else "#dd8452" if n.startswith("torch") else "#55a868" for n in names]
    bars = axes[0].bar(names, values, color=colours)
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].set_ylabel("images / s")
    axes[0].set_title(f"loader throughput ({r['settings']['device']}, {r['settings']['threads']} threads)")
    axes[0].tick_params(axis="x", rotation=30)
    if r["stages"]:
        st = r["stages"]["ms_per_image"]
        axes[1].barh(list(st), list(st.values()), color="#8172b3")
        axes[1].invert_yaxis()
        axes[1].set_xlabel("ms per image")
        axes[1].set_title("where the time goes (dalimix, mix on)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
