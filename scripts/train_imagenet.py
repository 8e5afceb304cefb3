#!/usr/bin/env python
"""Train a torchvision classifier on an ImageNet-layout folder with dalimix's DALI input pipeline.

Mixup / CutMix / label smoothing run inside the DALI graph, manifold mixup wraps the model, and the
engine (`dalimix.engine`) does the epoch loop, evaluation, checkpoints, metrics and curves.

One process:       python scripts/train_imagenet.py --data DIR --arch resnet50 --device gpu ...
Several GPUs:      torchrun --nproc_per_node=8 scripts/train_imagenet.py --data DIR ...
Several nodes:     scripts/train_multi_gpu.sh (NODES, GPUS_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT)
"""
from __future__ import annotations

import argparse
import difflib
import os
import random
import sys
import time
import warnings
from typing import Any, Optional


EPILOG = """\
distributed training:
  torchrun --nproc_per_node=N %(prog)s ... starts N ranks; each reads RANK / WORLD_SIZE / LOCAL_RANK, uses
  cuda:LOCAL_RANK (NCCL) or the CPU (gloo), reads a disjoint shard of train/ and val/ and trains a DDP model.
  --batch-size is per rank, so the global batch is N x --batch-size (scale --lr with it). Metrics are summed
  over ranks; only rank 0 prints progress and writes --output.
  Failures: when a worker process dies, torchrun tears the whole group down and exits non-zero. A rank that
  hangs (or a peer on another node that vanished) makes the other ranks' collectives fail after
  --dist-timeout minutes with an error, instead of waiting forever. The ranks whose collectives fail name the
  rank behind it: a rank that raised reports its error; one that died (kill -9, out of memory) is named, with
  its node, host and pid, as the rank that did not report within --dist-report-wait seconds.
  Several nodes: see scripts/train_multi_gpu.sh.

outputs (in --output): metrics.jsonl (one JSON line per epoch), summary.json, checkpoint.pt (latest),
best.pt (best val top-1), curves.png. --resume checkpoint.pt continues from the next epoch with the same
model, optimizer, schedule, AMP scaler, RNG and DALI augmentation state: a resumed run equals an
uninterrupted one (same flags, same number of ranks). With another --batch-size or number of ranks the LR
schedule is rescaled to the new steps per epoch. Each file is written to a tmp name and renamed, the
checkpoint first; resuming repairs whatever a crash between two writes left (resuming a checkpoint that
completed --epochs only does that). Checkpoints are plain data, loaded with torch.load(weights_only=True):
a file that needs more (code in its pickle) is refused unless --trust-checkpoint.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="DIR",
                   help="dataset root holding train/ and val/, each with one folder per class")
    g.add_argument("--crop", type=int, default=224, help="train and val crop size in pixels (default 224)")
    g.add_argument("--val-resize", type=int, default=None,
                   help="val: resize the shorter side to this before the centre crop (default crop/0.875)")
    g.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="where DALI decodes/augments and the model trains (default gpu)")
    g.add_argument("--threads", type=int, default=4, help="DALI CPU threads per rank (default 4)")
    g.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default on --device cpu: CPU cores minus --threads, at least 1, "
                        "unless OMP_NUM_THREADS is set; oversubscribed cores slow CPU training down many times)")
    g.add_argument("--batch-size", type=int, default=256, help="train batch size per rank (default 256)")
    g.add_argument("--val-batch-size", type=int, default=None, help="val batch size per rank (default --batch-size)")
    g.add_argument("--channels-last", action="store_true", help="NHWC images and model (faster with AMP on GPU)")
    g.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="batches DALI prepares ahead (prefetch_queue_depth, default 2)")
    g.add_argument("--hw-decoder-load", type=float, default=None, metavar="F",
                   help="--device gpu: share of each batch for the hardware JPEG decoder (default DALI's)")
    g.add_argument("--decoder-memory-padding", type=int, default=None, metavar="BYTES",
                   help="--device gpu: the decoder's device and host memory padding (default DALI's)")
    g.add_argument("--decoder-preallocate", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="--device gpu: preallocate decoder buffers for images of W x H")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N",
                   help="smoke runs: train only the first N batches of each epoch's shuffled order")
    g.add_argument("--max-val-steps", type=int, default=None, metavar="N",
                   help="smoke runs: evaluate only the first N val batches per rank")

    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", default="resnet50", help="any torchvision classification model name (default resnet50)")
    g.add_argument("--epochs", type=int, default=90, help="total epochs of the schedule (default 90)")
    g.add_argument("--lr", type=float, default=0.1,
                   help="peak learning rate (default 0.1, the usual value for a global batch of 256)")
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine (default 0)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4)")
    g.add_argument("--decay-norm-bias", action="store_true",
                   help="also decay biases and normalisation scales (default: no decay on 1-D parameters)")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warmup length in epochs (fractions allowed), then cosine decay per step")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast + gradient scaling on GPU, bfloat16 autocast on CPU")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (distributed runs)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed for data order, augmentation, init and mixing (default: random, recorded in summary)")
    g.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (slower)")

    g = p.add_argument_group("mixing (in the DALI graph, timm semantics: an alpha of 0 turns that mixing off)")
    g.add_argument("--mixup-alpha", type=float, default=0.0, help="mixup Beta(alpha, alpha) (default 0: off)")
    g.add_argument("--cutmix-alpha", type=float, default=0.0, help="CutMix Beta(alpha, alpha) (default 0: off)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="CutMix box side as a fraction of the image, drawn in [MIN, MAX] (turns CutMix on)")
    g.add_argument("--mix-prob", type=float, default=1.0, help="probability to mix a batch/pair/element (default 1)")
    g.add_argument("--switch-prob", type=float, default=0.5,
                   help="probability of CutMix rather than mixup when both are on (default 0.5)")
    g.add_argument("--mix-mode", choices=("batch", "pair", "elem"), default="batch",
                   help="what shares one mixing draw (default batch)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon (default 0)")
    g.add_argument("--mixup-off-epoch", type=int, default=None, metavar="E",
                   help="turn mixup, CutMix and manifold mixup off from epoch E (0-based) on")
    g.add_argument("--manifold-mixup-alpha", type=float, default=0.0,
                   help="manifold mixup Beta(alpha, alpha) at a random hidden layer per step (default 0: off)")
    g.add_argument("--manifold-layers", default=None, metavar="NAMES",
                   help="comma list of module names to mix at (default: the residual stages, e.g. layer1..layer4)")
    g.add_argument("--manifold-no-input", action="store_true", help="manifold mixup: never mix at the input")
    g.add_argument("--re-prob", type=float, default=0.0, help="random erasing probability (default 0)")
    g.add_argument("--re-mode", choices=("const", "rand", "pixel"), default="const", help="random erasing fill")
    g.add_argument("--re-count", type=int, default=1, help="random erasing: up to this many boxes")

    g = p.add_argument_group("run")
    g.add_argument("--output", default=None, metavar="DIR", help="where metrics, summary, checkpoints and curves go")
    g.add_argument("--resume", default=None, metavar="PATH", help="checkpoint.pt to continue from")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="--resume: also load a checkpoint that needs full unpickling (older or foreign files), which "
                        "runs any code it carries; only for files from a source you trust (default: refused)")
    g.add_argument("--discard-later-epochs", action="store_true",
                   help="--resume from an earlier checkpoint (e.g. best.pt) into an --output whose run went further: "
                        "drop the later epochs from metrics.jsonl and overwrite checkpoint.pt (default: refused)")
    g.add_argument("--stop-at-epoch", type=int, default=None, metavar="N",
                   help="exit after N epochs are done (the schedule still spans --epochs); continue with --resume")
    g.add_argument("--print-freq", type=int, default=10,
                   help="update the progress bar's loss every N steps (one host sync each; 0: never)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--dist-timeout", type=float, default=30.0, metavar="MIN",
                   help="minutes before a collective waiting on a dead or stuck rank fails (default 30)")
    g.add_argument("--dist-report-wait", type=float, default=30.0, metavar="SEC",
                   help="after a collective failed, seconds to wait for the other ranks to report before naming "
                        "those that did not (dead or hung; default 30)")
    g.add_argument("--dump-seen", default=None, metavar="DIR",
                   help="debug: write DIR/rank<R>_seen.json with the file indices and labels each rank read")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """argparse errors (exit code 2) naming the flag, before anything heavy happens."""
    def need(cond: bool, flag: str, msg: str) -> None:
        if not cond:
            p.error(f"{flag}: {msg}")

    need(a.epochs >= 1, "--epochs", f"must be >= 1, got {a.epochs}")
    need(a.batch_size >= 1, "--batch-size", f"must be >= 1, got {a.batch_size}")
    need(a.val_batch_size is None or a.val_batch_size >= 1, "--val-batch-size", f"must be >= 1, got {a.val_batch_size}")
    need(a.crop >= 8, "--crop", f"must be >= 8 pixels, got {a.crop}")
    if a.val_resize is None:
        a.val_resize = int(round(a.crop / 0.875))
    need(a.val_resize >= a.crop, "--val-resize", f"must be >= --crop ({a.crop}), got {a.val_resize}")
    need(a.threads >= 1, "--threads", f"must be >= 1, got {a.threads}")
    need(a.prefetch >= 1, "--prefetch", f"must be >= 1, got {a.prefetch}")
    a.decoder_options = {}
    if a.hw_decoder_load is not None:
        need(0 <= a.hw_decoder_load <= 1, "--hw-decoder-load", f"must be in [0, 1], got {a.hw_decoder_load}")
        a.decoder_options["hw_decoder_load"] = a.hw_decoder_load
    if a.decoder_memory_padding is not None:
        need(a.decoder_memory_padding >= 0, "--decoder-memory-padding", f"must be >= 0, got {a.decoder_memory_padding}")
        a.decoder_options.update(device_memory_padding=a.decoder_memory_padding,
                                 host_memory_padding=a.decoder_memory_padding)
    if a.decoder_preallocate is not None:
        need(min(a.decoder_preallocate) >= 1, "--decoder-preallocate", f"must be >= 1, got {a.decoder_preallocate}")
        a.decoder_options.update(preallocate_width_hint=a.decoder_preallocate[0],
                                 preallocate_height_hint=a.decoder_preallocate[1])
    need(not a.decoder_options or a.device == "gpu", "--hw-decoder-load/--decoder-memory-padding/--decoder-preallocate",
         "tune the GPU decoder; they need --device gpu")
    need(a.torch_threads is None or a.torch_threads >= 1, "--torch-threads", f"must be >= 1, got {a.torch_threads}")
    need(a.lr > 0, "--lr", f"must be > 0, got {a.lr}")
    need(0 <= a.min_lr <= a.lr, "--min-lr", f"must be in [0, --lr], got {a.min_lr}")
    need(0 <= a.momentum < 1, "--momentum", f"must be in [0, 1), got {a.momentum}")
    need(a.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {a.weight_decay}")
    need(a.warmup_epochs >= 0, "--warmup-epochs", f"must be >= 0, got {a.warmup_epochs}")
    need(a.warmup_epochs <= a.epochs, "--warmup-epochs", f"must not exceed --epochs ({a.epochs}), got {a.warmup_epochs}")
    need(a.clip_grad is None or a.clip_grad > 0, "--clip-grad", f"must be > 0, got {a.clip_grad}")
    need(a.seed is None or a.seed >= 0, "--seed", f"must be >= 0, got {a.seed}")
    from dalimix import MixConfig
    from dalimix.ops.erasing import ErasingConfig
    from dalimix.validation import ArgumentError
    try:  # the library checks these; its argument names map to our flags
        mix = MixConfig(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
                        cutmix_minmax=tuple(a.cutmix_minmax) if a.cutmix_minmax else None, prob=a.mix_prob,
                        switch_prob=a.switch_prob, mode=a.mix_mode, label_smoothing=a.label_smoothing,
                        num_classes=1)  # the real class count is set once the data is listed
        a.mix = mix if mix.mixing or mix.cutmix_on or mix.label_smoothing > 0 else None
        ErasingConfig(prob=a.re_prob, mode=a.re_mode, count=a.re_count)
    except ArgumentError as exc:
        p.error(f"{FLAGS.get(exc.argument, '--' + exc.argument.replace('_', '-'))}: {exc}")
    need(a.mixup_off_epoch is None or a.mixup_off_epoch >= 0, "--mixup-off-epoch",
         f"must be >= 0, got {a.mixup_off_epoch}")
    need(a.manifold_mixup_alpha >= 0, "--manifold-mixup-alpha", f"must be >= 0, got {a.manifold_mixup_alpha}")
    need(a.manifold_layers is None or a.manifold_mixup_alpha > 0, "--manifold-layers",
         "needs --manifold-mixup-alpha > 0")
    need(a.print_freq >= 0, "--print-freq", f"must be >= 0, got {a.print_freq}")
    need(a.dist_timeout > 0, "--dist-timeout", f"must be > 0 minutes, got {a.dist_timeout}")
    need(a.dist_report_wait >= 0, "--dist-report-wait", f"must be >= 0 seconds, got {a.dist_report_wait}")
    for flag, value in (("--max-steps-per-epoch", a.max_steps_per_epoch), ("--max-val-steps", a.max_val_steps)):
        need(value is None or value >= 1, flag, f"must be >= 1, got {value}")
    need(a.stop_at_epoch is None or 1 <= a.stop_at_epoch <= a.epochs, "--stop-at-epoch",
         f"must be in [1, --epochs], got {a.stop_at_epoch}")
    need(a.resume is None or os.path.isfile(a.resume), "--resume", f"checkpoint {a.resume!r} does not exist")

    import torchvision
    archs = torchvision.models.list_models(module=torchvision.models)
    if a.arch not in archs:
        close = difflib.get_close_matches(a.arch, archs, n=3)
        p.error(f"--arch: unknown model {a.arch!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                + " (any torchvision.models classification model)")
    if a.device == "gpu":
        import torch
        need(torch.cuda.is_available(), "--device", "gpu was asked for but torch sees no CUDA device (use --device cpu)")

    need(os.path.exists(a.data), "--data", f"dataset folder {a.data!r} does not exist")
    need(os.path.isdir(a.data), "--data", f"{a.data!r} is not a directory (expected a folder holding train/ and val/)")
    for split in ("train", "val"):
        path = os.path.join(a.data, split)
        need(os.path.exists(path), "--data", f"{path!r} does not exist (expected {split}/ with one folder per class)")
        need(os.path.isdir(path), "--data",
             f"{path!r} is not a directory (expected {split}/ with one folder per class)")
    from dalimix import shards
    train_dir, val_dir = os.path.join(a.data, "train"), os.path.join(a.data, "val")
    if shards.is_shard_spec(train_dir):  # tar shards (dalimix-make-shards): classes.json names the classes
        classes, val_classes = _shard_classes(train_dir), _shard_classes(val_dir)
        need(val_classes == classes, "--data", f"train/ and val/ shards name different classes (classes.json): "
                                               f"{sorted(set(classes) ^ set(val_classes))[:5]}")
    else:
        classes = _class_folders(train_dir)
        need(bool(classes), "--data", f"{train_dir!r} has no class folders")
        val_classes = _class_folders(val_dir)
        if val_classes != classes:
            missing = sorted(set(classes) ^ set(val_classes))[:5]
            p.error(f"--data: train/ and val/ must hold the same class folders (labels follow sorted names); "
                    f"they differ in {missing}")
    a.classes = classes
    a.data = os.path.abspath(a.data)  # recorded in checkpoints: the same folder however it was spelled


def _check_resume_output(p: argparse.ArgumentParser, a: argparse.Namespace, resume: Any) -> None:
    """Refuse (unless --discard-later-epochs) to resume into an --output whose run went past the checkpoint:
    that would silently drop the later epochs from metrics.jsonl and overwrite checkpoint.pt."""
    ahead = resume.later_work(a.output)
    if not ahead:
        return
    epoch = resume.start_epoch - 1
    msg = (f"{a.resume} is epoch {epoch + 1}, but --output {a.output} holds a run that went further "
           f"({', '.join(ahead)}): resuming there would drop epochs {epoch + 2}.. from metrics.jsonl and overwrite "
           f"checkpoint.pt")
    if not a.discard_later_epochs:
        latest = os.path.join(a.output, "checkpoint.pt")
        p.error(f"--resume: {msg}. Resume from {latest} to continue that run, write to another --output to branch "
                f"off, or pass --discard-later-epochs")
    warnings.warn(f"--resume: {msg} (--discard-later-epochs)", stacklevel=2)


def _shard_classes(path: str) -> list[str]:
    """The class names of the shards in `path`: their classes.json, else the label indices they use."""
    from dalimix import shards

    paths = shards.resolve_shards(path)
    return shards.read_classes(paths, [l for ix in shards.index_shards(paths) for l in ix.labels], None)


def _class_folders(path: str) -> list[str]:
    """Class names as dalimix's folder scan orders them (sorted, hidden folders skipped, empty ones kept)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


# The library's argument names (MixConfig fields, pipeline arguments) as this script's flags.
FLAGS = {"mixup_alpha": "--mixup-alpha", "cutmix_alpha": "--cutmix-alpha", "cutmix_minmax": "--cutmix-minmax",
         "prob": "--mix-prob", "switch_prob": "--switch-prob", "mode": "--mix-mode",
         "label_smoothing": "--label-smoothing", "num_classes": "--data", "re_prob": "--re-prob",
         "re_mode": "--re-mode", "re_count": "--re-count", "batch_size": "--batch-size", "crop": "--crop",
         "resize": "--val-resize", "num_threads": "--threads", "max_batches_per_epoch": "--max-steps-per-epoch",
         "mix_off_epoch": "--mixup-off-epoch", "seed": "--seed"}


def _train_loader(a: argparse.Namespace, ctx: Any, mix: Any, resume: Any) -> tuple[Any, int]:
    """The train DaliLoader at the run's next epoch and the first epoch its pipeline was built at."""
    from dalimix import DaliLoader
    from dalimix.resume import DATA_SETTINGS
    from pipelines.imagenet import train_pipeline

    def build(first_epoch: int, checkpoint: Optional[bytes]) -> Any:
        return train_pipeline(os.path.join(a.data, "train"), batch_size=a.batch_size, crop=a.crop, device=a.device,
                              num_threads=a.threads, mix=mix, shard_id=ctx.rank, num_shards=ctx.world_size,
                              seed=a.seed, device_id=ctx.local_rank if a.device == "gpu" else None,
                              channels_last=a.channels_last, re_prob=a.re_prob, re_mode=a.re_mode,
                              re_count=a.re_count, classes=a.classes, first_epoch=first_epoch, checkpoint=checkpoint,
                              max_batches_per_epoch=a.max_steps_per_epoch, prefetch_queue_depth=a.prefetch,
                              decoder_options=a.decoder_options or None)

    if resume is None:
        return DaliLoader(build(0, None)), 0
    return resume.train_loader(build, ctx=ctx, settings={k: getattr(a, k) for k in DATA_SETTINGS}, prefix="--resume")


def _val_loader(a: argparse.Namespace, ctx: Any) -> Any:
    from dalimix import DaliLoader
    from pipelines.imagenet import val_pipeline

    return DaliLoader(val_pipeline(os.path.join(a.data, "val"), batch_size=a.val_batch_size or a.batch_size,
                                   crop=a.crop, resize=a.val_resize, device=a.device, num_threads=a.threads,
                                   shard_id=ctx.rank, num_shards=ctx.world_size,
                                   device_id=ctx.local_rank if a.device == "gpu" else None,
                                   channels_last=a.channels_last, classes=a.classes,
                                   max_batches_per_epoch=a.max_val_steps, prefetch_queue_depth=a.prefetch))


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _network(p: argparse.ArgumentParser, a: argparse.Namespace, num_classes: int, ctx: Any) -> Any:
    """The bare network on the run's device (SyncBatchNorm, channels_last as asked)."""
    import torch
    import torchvision

    model_kwargs: dict[str, Any] = {"num_classes": num_classes}
    if a.arch.startswith("vit_"):
        model_kwargs["image_size"] = a.crop  # ViTs are built for one input size
    try:
        net = torchvision.models.get_model(a.arch, **model_kwargs)
    except (ValueError, TypeError) as exc:
        p.error(f"--arch: cannot build {a.arch} with {model_kwargs}: {exc}")
    if a.sync_bn and ctx.distributed:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(ctx.device)
    return net.to(memory_format=torch.channels_last) if a.channels_last else net


def _with_manifold(p: argparse.ArgumentParser, a: argparse.Namespace, net: Any, num_classes: int) -> Any:
    """The model the training step calls: `net`, or `net` in ManifoldMixup when asked."""
    from dalimix import ManifoldMixup

    if a.manifold_mixup_alpha <= 0:
        return net
    layers = [s.strip() for s in a.manifold_layers.split(",") if s.strip()] if a.manifold_layers else None
    try:
        return ManifoldMixup(net, alpha=a.manifold_mixup_alpha, layers=layers, include_input=not a.manifold_no_input,
                             num_classes=num_classes)
    except (ValueError, TypeError) as exc:
        if layers is None:
            names = [n for n, _ in net.named_modules() if n and n.count(".") <= 1][:12]
            p.error(f"--manifold-mixup-alpha: {a.arch} has no default mixing layers (residual "
                    f"stages); name some with --manifold-layers, e.g. from {names}")
        p.error(f"--manifold-layers: {exc}")


def _seed_everything(a: argparse.Namespace, ctx: Any) -> None:
    import numpy as np
    import torch

    if a.seed is None:
        a.seed = ctx.broadcast_object(random.SystemRandom().randrange(2 ** 31))
    random.seed(a.seed + ctx.rank)
    np.random.seed(a.seed + ctx.rank)
    torch.manual_seed(a.seed + ctx.rank)
    if a.torch_threads is not None:
        torch.set_num_threads(a.torch_threads)
    elif a.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // ctx.world_size - a.threads))
    if a.device == "gpu":
        torch.backends.cudnn.benchmark = not a.deterministic
        torch.backends.cudnn.deterministic = a.deterministic


def _load_resume(p: argparse.ArgumentParser, a: argparse.Namespace) -> Any:
    """The checkpoint to continue from (None without --resume), checked against the flags."""
    if not a.resume:
        return None
    from dalimix import engine
    from dalimix.resume import Resume

    try:
        resume = Resume.load(a.resume, trust=a.trust_checkpoint)
    except (engine.CheckpointError, FileNotFoundError) as exc:
        p.error(f"--resume: {exc}")
    if resume.args.get("arch") not in (None, a.arch):
        p.error(f"--arch: the checkpoint was trained with --arch {resume.args['arch']}, not {a.arch}")
    if a.seed is None and resume.args.get("seed") is not None:
        a.seed = int(resume.args["seed"])
    if resume.start_epoch > a.epochs:
        p.error(f"--epochs: the checkpoint already completed {resume.start_epoch} epoch(s); "
                f"ask for more than {resume.start_epoch} to continue")
    _check_resume_output(p, a, resume)
    return resume


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _check_args(parser, a)

    import dataclasses

    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dalimix import engine
    from dalimix.distributed import init_distributed
    from dalimix.validation import ArgumentError

    resume = _load_resume(parser, a)
    ctx = init_distributed(a.device, a.dist_timeout)
    log = print if ctx.is_main else (lambda *_, **__: None)
    try:
        _seed_everything(a, ctx)
        num_classes = len(a.classes)
        mix = dataclasses.replace(a.mix, num_classes=num_classes) if a.mix is not None else None
        start_epoch = resume.start_epoch if resume is not None else 0
        plot_title = f"{a.arch} on {os.path.join(*os.path.abspath(a.data).split(os.sep)[-2:])}"
        if resume is not None and start_epoch == a.epochs:
            # A finished run (or one killed after its last checkpoint): only make the outputs agree with it.
            if a.output and ctx.is_main:
                cfg = engine.FitConfig(epochs=a.epochs, output=a.output,
                                       run_info=dict(resume.checkpoint.get("run_info") or {}), plot_title=plot_title,
                                       resumed_from=a.resume)
                engine.repair_outputs(a.output, engine.TrainState.from_checkpoint(resume.checkpoint), cfg, ctx,
                                      log=log)
            log(f"--resume: {a.resume} already completed all {a.epochs} epoch(s) of --epochs {a.epochs}; nothing to "
                f"train" + (f" (the outputs in {a.output} agree with it)" if a.output else "")
                + "; pass a larger --epochs to train on")
            return 0

        net = _network(parser, a, num_classes, ctx)
        model = _with_manifold(parser, a, net, num_classes)
        try:
            train_loader, first_epoch = _train_loader(a, ctx, mix, resume)
            if train_loader.classes != a.classes:
                raise RuntimeError(f"class folders changed while listing {a.data}/train")
            if a.mixup_off_epoch is not None and train_loader.schedule is not None:
                train_loader.set_mix(False, from_epoch=a.mixup_off_epoch)  # the pipeline is not rebuilt
            val_loader = _val_loader(a, ctx)
        except ArgumentError as exc:
            parser.error(f"{FLAGS.get(exc.argument, '--data')}: {exc}")
        except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
            parser.error(f"--data: {exc}")  # dataset problems: missing, empty or bad folders and files

        mix_layers = list(getattr(model, "eligible_layers", []))
        if ctx.distributed:
            model = DDP(model, device_ids=[ctx.local_rank] if a.device == "gpu" else None)
        steps = len(train_loader)
        optimizer = torch.optim.SGD(engine.param_groups(net, a.weight_decay, a.decay_norm_bias), lr=a.lr,
                                    momentum=a.momentum, nesterov=not a.no_nesterov and a.momentum > 0)
        scheduler = engine.warmup_cosine(optimizer, total_steps=a.epochs * steps,
                                         warmup_steps=int(round(a.warmup_epochs * steps)),
                                         min_lr_ratio=a.min_lr / a.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=a.amp) if a.device == "gpu" else None
        amp_dtype = (torch.float16 if a.device == "gpu" else torch.bfloat16) if a.amp else None
        state = engine.TrainState()
        if resume is not None:
            try:
                state = resume.restore(model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ctx=ctx,
                                       steps_per_epoch=steps, log=log, prefix="--resume",
                                       steps_note=f"(--batch-size {a.batch_size} x {ctx.world_size} rank(s))")
            except ValueError as exc:
                parser.error(f"--resume: {exc} (--arch {a.arch} with {num_classes} classes)")
            log(f"resumed from {a.resume}: epoch {start_epoch + 1} of {a.epochs}")

        n_train, n_val = len(train_loader.source.files), len(val_loader.source.files)
        manifold = a.manifold_mixup_alpha > 0
        log(f"{a.arch}: {num_classes} classes, {n_train} train / {n_val} val images, {ctx.world_size} rank(s) on "
            f"{a.device}, {steps} steps/epoch of {a.batch_size} per rank; mixing: "
            f"{'in-loader ' + repr(mix) if mix else 'none in the loader'}"
            f"{f', manifold mixup alpha={a.manifold_mixup_alpha} at {mix_layers}' if manifold else ''}")
        args_record = {k: _jsonable(v) for k, v in vars(a).items() if k not in ("classes", "mix", "decoder_options")}
        run_info = {"arch": a.arch, "num_classes": num_classes, "train_images": n_train, "val_images": n_val,
                    "steps_per_epoch": steps, "global_batch_size": a.batch_size * ctx.world_size,
                    "num_params": sum(p.numel() for p in net.parameters()), "args": args_record}
        cfg = engine.FitConfig(
            epochs=a.epochs, output=a.output, amp_dtype=amp_dtype, manifold=manifold, mix_off_epoch=a.mixup_off_epoch,
            max_grad_norm=a.clip_grad, progress=not a.no_progress, print_freq=a.print_freq, run_info=run_info,
            first_epoch=first_epoch, plot_title=plot_title, recorder=engine.SeenRecorder() if a.dump_seen else None,
            recorder_path=os.path.join(a.dump_seen, f"rank{ctx.rank}_seen.json") if a.dump_seen else None,
            stop_epoch=a.stop_at_epoch, resumed_from=a.resume,
            tune_command=(f"dalimix-profile --tune --data {os.path.join(a.data, 'train')} --device {a.device} "
                          f"--threads {a.threads} --batch-size {a.batch_size} --prefetch {a.prefetch} --crop {a.crop}"))
        t0 = time.perf_counter()
        summary = engine.fit(model, train_loader, val_loader, optimizer, ctx=ctx, cfg=cfg, scheduler=scheduler,
                             scaler=scaler, state=state, log=log)
        log(f"done in {time.perf_counter() - t0:.1f}s: val top-1 {_pct(summary.get('final_val_top1'))} "
            f"(best {_pct(summary.get('best_val_top1'))}), top-5 {_pct(summary.get('final_val_top5'))}, "
            f"{_num(summary.get('images_per_sec'))} img/s" + (f"; outputs in {a.output}" if a.output else ""))
        return 0
    except Exception as exc:
        if ctx.distributed:
            # Name the rank behind the failure: a peer that raised reports itself; one that died (or a whole
            # node) is named as the rank that did not answer within --dist-report-wait seconds.
            report = ctx.failure_report(exc, wait_s=a.dist_report_wait)
            print(f"[rank {ctx.rank}/{ctx.world_size}] training failed: {type(exc).__name__}: {exc}\n{report}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        ctx.close()


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def cli() -> int:
    """Console entry point (`dalimix-train`): exit status 0 on success."""
    return main()


if __name__ == "__main__":
    sys.exit(cli())
