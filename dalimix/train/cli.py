"""The command line of `dalimix-train` (`scripts/train_imagenet.py`): train a torchvision classifier on an
ImageNet-layout folder with dalimix's DALI input pipeline.

Mixup / CutMix / label smoothing run inside the DALI graph, manifold mixup wraps the model, and the
run builder (`dalimix.train.run`) composes loaders, model, optimiser and
schedule; the engine (`dalimix.train`) does the epoch loop, evaluation, checkpoints, metrics and curves.

One process:       python scripts/train_imagenet.py --data DIR --arch resnet50 --device gpu ...
Several GPUs:      torchrun --nproc_per_node=8 scripts/train_imagenet.py --data DIR ...
Several nodes:     scripts/train_multi_gpu.sh (NODES, GPUS_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT)
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import warnings
from typing import Any, Optional

from dalimix.augment_flags import add_augmentation_flags, augmentation_kwargs


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
    from dalimix.train.recipes import RECIPES

    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a published recipe's every setting (policy, mixing, erasing and its order, smoothing or BCE, "
                        "repeats, EMA, optimiser, schedule, warmup, lr per global batch, resolutions, interpolation, "
                        "model); each flag given on the command line overrides its setting")
    _data_flags(p)
    _model_flags(p)
    _mixing_flags(p)
    g = p.add_argument_group("per-sample augmentation (in the DALI graph, with the meaning of its library)")
    add_augmentation_flags(g)
    _run_flags(p)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    """The data, its split and the loader's settings."""
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="DIR",
                   help="dataset root holding train/ and val/, each with one folder per class")
    g.add_argument("--crop", "--train-crop", dest="crop", type=int, default=224,
                   help="train crop size in pixels, and the val crop unless --val-crop (default 224)")
    g.add_argument("--val-crop", type=int, default=None,
                   help="val centre crop in pixels, when it differs from the train crop (ResNet Strikes Back A3: "
                        "--crop 160 --val-crop 224)")
    g.add_argument("--val-resize", type=int, default=None,
                   help="val: resize the shorter side to this before the centre crop (default val crop / 0.875)")
    g.add_argument("--crop-pct", type=float, default=None,
                   help="timm's meaning instead of --val-resize: resize to floor(val crop / crop_pct)")
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
    g.add_argument("--aug-repeats", type=int, default=1, metavar="R",
                   help="repeated augmentation (DeiT, torchvision's --ra-sampler): each epoch holds about 1/R of the "
                        "images, R times each, the copies on different ranks where there are R (default 1: off)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N",
                   help="smoke runs: train only the first N batches of each epoch's shuffled order")
    g.add_argument("--max-val-steps", type=int, default=None, metavar="N",
                   help="smoke runs: evaluate only the first N val batches per rank")


def _model_flags(p: argparse.ArgumentParser) -> None:
    """The network, the optimiser and the schedule."""
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", default="resnet50",
                   help="any torchvision classification model name, or timm/NAME for a timm model (pip install "
                        "'dalimix[timm]'), randomly initialised (default resnet50)")
    g.add_argument("--drop-path", type=float, default=0.0, metavar="P",
                   help="stochastic depth: timm's drop_path_rate, torchvision's stochastic_depth_prob (default 0)")
    g.add_argument("--opt", choices=("sgd", "adamw", "lamb"), default="sgd",
                   help="SGD with (Nesterov) momentum, torch's AdamW, or timm's LAMB (default sgd)")
    g.add_argument("--bce-loss", action="store_true",
                   help="per-class binary cross-entropy on the (mixed, smoothed) targets, as ResNet Strikes Back")
    g.add_argument("--bce-target-thresh", type=float, default=None, metavar="T",
                   help="with --bce-loss: binarise the targets at T (t > T -> 1), as timm's train.py")
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
    g.add_argument("--model-ema", type=float, default=None, metavar="DECAY",
                   help="keep a moving average of the weights (decay per update, timm's meaning, e.g. 0.9998), "
                        "evaluated beside the model each epoch (ema_top1), saved in checkpoints, best_ema.pt")
    g.add_argument("--model-ema-steps", type=int, default=1, metavar="K",
                   help="update the moving average every K optimizer steps (default 1)")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast + gradient scaling on GPU, bfloat16 autocast on CPU")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (distributed runs)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed for data order, augmentation, init and mixing (default: random, recorded in summary)")
    g.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (slower)")


def _mixing_flags(p: argparse.ArgumentParser) -> None:
    """Mixing, smoothing and erasing, as timm's train.py names them."""
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
    g.add_argument("--manifold-mode", choices=("mixup", "cutmix"), default="mixup",
                   help="at the drawn layer: interpolate the whole map (mixup, default) or paste a box of the "
                        "partner's map, targets by its area (cutmix: Feature CutMix, Yun et al. 2019)")
    g.add_argument("--re-prob", type=float, default=0.0, help="random erasing probability (default 0)")
    g.add_argument("--re-mode", choices=("const", "rand", "pixel"), default="const", help="random erasing fill")
    g.add_argument("--re-count", type=int, default=1, help="random erasing: up to this many boxes")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Outputs, resuming, the device and distributed settings."""
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


# The library's argument names (MixConfig fields, pipeline and RunConfig arguments) as this script's flags.
FLAGS = {"mixup_alpha": "--mixup-alpha", "cutmix_alpha": "--cutmix-alpha", "cutmix_minmax": "--cutmix-minmax",
         "prob": "--mix-prob", "switch_prob": "--switch-prob", "mode": "--mix-mode",
         "label_smoothing": "--label-smoothing", "num_classes": "--data", "re_prob": "--re-prob",
         "re_mode": "--re-mode", "re_count": "--re-count", "batch_size": "--batch-size", "crop": "--crop",
         "resize": "--val-resize", "num_threads": "--threads", "max_batches_per_epoch": "--max-steps-per-epoch",
         "mix_off_epoch": "--mixup-off-epoch", "seed": "--seed", "arch": "--arch", "resume": "--resume",
         "auto_augment": "--aa", "color_jitter": "--color-jitter", "interpolation": "--interpolation",
         "re_order": "--re-order", "repeats": "--aug-repeats", "drop_path": "--drop-path", "opt": "--opt",
         "model_ema": "--model-ema", "model_ema_steps": "--model-ema-steps",
         "manifold_alpha": "--manifold-mixup-alpha", "manifold_layers": "--manifold-layers", "data": "--data"}


def _flag_error(p: argparse.ArgumentParser, exc: Any, default: str = "--data") -> None:
    """argparse's error for a library `ArgumentError`, naming the flag behind the argument."""
    flag = FLAGS.get(exc.argument, default)
    p.error(f"{flag}: {str(exc).removeprefix(exc.argument + ': ')}")


def _check_ranges(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """argparse errors (exit code 2) naming the flag, for values out of range."""
    def need(cond: bool, flag: str, msg: str) -> None:
        if not cond:
            p.error(f"{flag}: {msg}")

    need(a.epochs >= 1, "--epochs", f"must be >= 1, got {a.epochs}")
    need(a.batch_size >= 1, "--batch-size", f"must be >= 1, got {a.batch_size}")
    need(a.val_batch_size is None or a.val_batch_size >= 1, "--val-batch-size", f"must be >= 1, got {a.val_batch_size}")
    need(a.crop >= 8, "--crop", f"must be >= 8 pixels, got {a.crop}")
    a.val_crop = a.crop if a.val_crop is None else a.val_crop
    need(a.val_crop >= 8, "--val-crop", f"must be >= 8 pixels, got {a.val_crop}")
    need(a.crop_pct is None or a.val_resize is None, "--crop-pct", "give --crop-pct or --val-resize, not both")
    need(a.crop_pct is None or 0.0 < a.crop_pct <= 1.0, "--crop-pct", f"must lie in (0, 1], got {a.crop_pct}")
    if a.val_resize is None:
        a.val_resize = int(math.floor(a.val_crop / a.crop_pct)) if a.crop_pct else int(round(a.val_crop / 0.875))
    need(a.val_resize >= a.val_crop, "--val-resize", f"must be >= the val crop ({a.val_crop}), got {a.val_resize}")
    need(a.threads >= 1, "--threads", f"must be >= 1, got {a.threads}")
    need(a.prefetch >= 1, "--prefetch", f"must be >= 1, got {a.prefetch}")
    need(a.torch_threads is None or a.torch_threads >= 1, "--torch-threads", f"must be >= 1, got {a.torch_threads}")
    need(a.lr > 0, "--lr", f"must be > 0, got {a.lr}")
    need(0 <= a.min_lr <= a.lr, "--min-lr", f"must be in [0, --lr], got {a.min_lr}")
    need(0 <= a.momentum < 1, "--momentum", f"must be in [0, 1), got {a.momentum}")
    need(a.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {a.weight_decay}")
    need(a.warmup_epochs >= 0, "--warmup-epochs", f"must be >= 0, got {a.warmup_epochs}")
    need(a.warmup_epochs <= a.epochs, "--warmup-epochs",
         f"must not exceed --epochs ({a.epochs}), got {a.warmup_epochs}")
    need(a.clip_grad is None or a.clip_grad > 0, "--clip-grad", f"must be > 0, got {a.clip_grad}")
    need(a.seed is None or a.seed >= 0, "--seed", f"must be >= 0, got {a.seed}")
    need(a.mixup_off_epoch is None or a.mixup_off_epoch >= 0, "--mixup-off-epoch",
         f"must be >= 0, got {a.mixup_off_epoch}")
    need(a.manifold_mixup_alpha >= 0, "--manifold-mixup-alpha", f"must be >= 0, got {a.manifold_mixup_alpha}")
    need(a.manifold_mode == "mixup" or a.manifold_mixup_alpha > 0, "--manifold-mode",
         "cutmix needs --manifold-mixup-alpha > 0 (the Beta concentration of the pasted area)")
    need(a.manifold_layers is None or a.manifold_mixup_alpha > 0, "--manifold-layers",
         "needs --manifold-mixup-alpha > 0")
    need(a.print_freq >= 0, "--print-freq", f"must be >= 0, got {a.print_freq}")
    need(a.aug_repeats >= 1, "--aug-repeats", f"must be >= 1, got {a.aug_repeats}")
    need(a.model_ema is None or 0.0 < a.model_ema < 1.0, "--model-ema", f"must lie in (0, 1), got {a.model_ema}")
    need(a.model_ema_steps >= 1, "--model-ema-steps", f"must be >= 1, got {a.model_ema_steps}")
    need(0.0 <= a.drop_path < 1.0, "--drop-path", f"must lie in [0, 1), got {a.drop_path}")
    need(a.bce_target_thresh is None or (a.bce_loss and 0.0 <= a.bce_target_thresh < 1.0), "--bce-target-thresh",
         f"needs --bce-loss and a value in [0, 1), got {a.bce_target_thresh}")
    need(a.dist_timeout > 0, "--dist-timeout", f"must be > 0 minutes, got {a.dist_timeout}")
    need(a.dist_report_wait >= 0, "--dist-report-wait", f"must be >= 0 seconds, got {a.dist_report_wait}")
    for flag, value in (("--max-steps-per-epoch", a.max_steps_per_epoch), ("--max-val-steps", a.max_val_steps)):
        need(value is None or value >= 1, flag, f"must be >= 1, got {value}")
    need(a.stop_at_epoch is None or 1 <= a.stop_at_epoch <= a.epochs, "--stop-at-epoch",
         f"must be in [1, --epochs], got {a.stop_at_epoch}")
    need(a.resume is None or os.path.isfile(a.resume), "--resume", f"checkpoint {a.resume!r} does not exist")


def _decoder_options(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict:
    """The GPU decoder's options from their flags."""
    options: dict = {}
    if a.hw_decoder_load is not None:
        if not 0 <= a.hw_decoder_load <= 1:
            p.error(f"--hw-decoder-load: must be in [0, 1], got {a.hw_decoder_load}")
        options["hw_decoder_load"] = a.hw_decoder_load
    if a.decoder_memory_padding is not None:
        if a.decoder_memory_padding < 0:
            p.error(f"--decoder-memory-padding: must be >= 0, got {a.decoder_memory_padding}")
        options.update(device_memory_padding=a.decoder_memory_padding, host_memory_padding=a.decoder_memory_padding)
    if a.decoder_preallocate is not None:
        if min(a.decoder_preallocate) < 1:
            p.error(f"--decoder-preallocate: must be >= 1, got {a.decoder_preallocate}")
        options.update(preallocate_width_hint=a.decoder_preallocate[0],
                       preallocate_height_hint=a.decoder_preallocate[1])
    if options and a.device != "gpu":
        p.error("--hw-decoder-load/--decoder-memory-padding/--decoder-preallocate: tune the GPU decoder; they need "
                "--device gpu")
    return options


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every flag checked before anything heavy happens; the library's own checks named by their flags."""
    _check_ranges(p, a)
    a.decoder_options = _decoder_options(p, a)
    augmentation_kwargs(p, a)
    from dalimix import MixConfig
    from dalimix.data.splits import split_classes
    from dalimix.ops.erasing import ErasingConfig
    from dalimix.train.models import check_arch
    from dalimix.validation import ArgumentError

    try:
        mix = MixConfig(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
                        cutmix_minmax=tuple(a.cutmix_minmax) if a.cutmix_minmax else None, prob=a.mix_prob,
                        switch_prob=a.switch_prob, mode=a.mix_mode, label_smoothing=a.label_smoothing,
                        num_classes=1)  # the real class count is set once the data is listed
        a.mix = mix if mix.mixing or mix.cutmix_on or mix.label_smoothing > 0 else None
        ErasingConfig(prob=a.re_prob, mode=a.re_mode, count=a.re_count)
        check_arch(a.arch)
        a.classes = split_classes(a.data)
    except ArgumentError as exc:
        _flag_error(p, exc)
    if a.device == "gpu":
        import torch
        if not torch.cuda.is_available():
            p.error("--device: gpu was asked for but torch sees no CUDA device (use --device cpu)")
    a.data = os.path.abspath(a.data)  # recorded in checkpoints: the same folder however it was spelled


def _load_resume(p: argparse.ArgumentParser, a: argparse.Namespace) -> Any:
    """The checkpoint to continue from (None without --resume), checked against the flags."""
    if not a.resume:
        return None
    from dalimix.train import CheckpointError
    from dalimix.train.resume import Resume

    try:
        resume = Resume.load(a.resume, trust=a.trust_checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        p.error(f"--resume: {exc}")
    if resume.args.get("arch") not in (None, a.arch):
        p.error(f"--arch: the checkpoint was trained with --arch {resume.args['arch']}, not {a.arch}")
    if resume.args.get("opt", "sgd") != a.opt:
        p.error(f"--opt: the checkpoint was trained with --opt {resume.args.get('opt', 'sgd')}, not {a.opt} (its "
                f"optimiser state cannot continue another optimiser)")
    if a.seed is None and resume.args.get("seed") is not None:
        a.seed = int(resume.args["seed"])
    if resume.start_epoch > a.epochs:
        p.error(f"--epochs: the checkpoint already completed {resume.start_epoch} epoch(s); "
                f"ask for more than {resume.start_epoch} to continue")
    ahead = resume.later_work(a.output)
    if ahead:
        # Resuming there would silently drop the later epochs from metrics.jsonl and overwrite checkpoint.pt.
        epoch = resume.start_epoch - 1
        msg = (f"{a.resume} is epoch {epoch + 1}, but --output {a.output} holds a run that went further "
               f"({', '.join(ahead)}): resuming there would drop epochs {epoch + 2}.. from metrics.jsonl and "
               f"overwrite checkpoint.pt")
        if not a.discard_later_epochs:
            p.error(f"--resume: {msg}. Resume from {os.path.join(a.output, 'checkpoint.pt')} to continue that run, "
                    f"write to another --output to branch off, or pass --discard-later-epochs")
        warnings.warn(f"--resume: {msg} (--discard-later-epochs)", stacklevel=2)
    return resume


def _run_config(a: argparse.Namespace) -> Any:
    """The flags as the run builder's `RunConfig`."""
    import dataclasses

    from dalimix.train.run import RunConfig

    num_classes = len(a.classes)
    return RunConfig(
        train_data=os.path.join(a.data, "train"), val_data=os.path.join(a.data, "val"), classes=a.classes,
        epochs=a.epochs, batch_size=a.batch_size, val_batch_size=a.val_batch_size, crop=a.crop, val_crop=a.val_crop,
        val_resize=a.val_resize, device=a.device, threads=a.threads, prefetch=a.prefetch,
        channels_last=a.channels_last, decoder_options=a.decoder_options or None,
        max_steps_per_epoch=a.max_steps_per_epoch, max_val_steps=a.max_val_steps, seed=a.seed,
        mix=dataclasses.replace(a.mix, num_classes=num_classes) if a.mix is not None else None,
        mix_off_epoch=a.mixup_off_epoch, re_prob=a.re_prob, re_mode=a.re_mode, re_count=a.re_count,
        repeats=a.aug_repeats,
        re_order=a.re_order, auto_augment=a.aa, color_jitter=a.color_jitter, interpolation=a.interpolation,
        manifold_alpha=a.manifold_mixup_alpha, model_ema=a.model_ema, model_ema_steps=a.model_ema_steps,
        opt=a.opt, bce_loss=a.bce_loss, bce_target_thresh=a.bce_target_thresh, drop_path=a.drop_path,
        manifold_layers=[s.strip() for s in a.manifold_layers.split(",") if s.strip()] if a.manifold_layers else None,
        manifold_input=not a.manifold_no_input, manifold_mode=a.manifold_mode,
        arch=a.arch, sync_bn=a.sync_bn, lr=a.lr, min_lr=a.min_lr,
        momentum=a.momentum, nesterov=not a.no_nesterov, weight_decay=a.weight_decay,
        decay_norm_bias=a.decay_norm_bias, warmup_epochs=a.warmup_epochs, clip_grad=a.clip_grad, amp=a.amp,
        torch_threads=a.torch_threads, deterministic=a.deterministic, output=a.output,
        progress=not a.no_progress, print_freq=a.print_freq, stop_epoch=a.stop_at_epoch, dump_seen=a.dump_seen,
        plot_title=f"{a.arch} on {os.path.join(*os.path.abspath(a.data).split(os.sep)[-2:])}",
        tune_command=(f"dalimix-profile --tune --data {os.path.join(a.data, 'train')} --device {a.device} "
                      f"--threads {a.threads} --batch-size {a.batch_size} --prefetch {a.prefetch} --crop {a.crop}"))


def _finished(a: argparse.Namespace, resume: Any, ctx: Any, log: Any) -> int:
    """--resume of a run that completed --epochs (or was killed after its last checkpoint): only make the
    outputs agree with it."""
    from dalimix import train

    if a.output and ctx.is_main:
        cfg = train.FitConfig(epochs=a.epochs, output=a.output, run_info=dict(resume.checkpoint.get("run_info") or {}),
                              plot_title=_run_config(a).plot_title, resumed_from=a.resume)
        train.repair_outputs(a.output, train.TrainState.from_checkpoint(resume.checkpoint), cfg, ctx, log=log)
    log(f"--resume: {a.resume} already completed all {a.epochs} epoch(s) of --epochs {a.epochs}; nothing to "
        f"train" + (f" (the outputs in {a.output} agree with it)" if a.output else "")
        + "; pass a larger --epochs to train on")
    return 0


def _train(parser: argparse.ArgumentParser, a: argparse.Namespace, resume: Any, ctx: Any, log: Any) -> int:
    from dalimix.train.resume import DATA_SETTINGS
    from dalimix.train.run import build_run
    from dalimix.validation import ArgumentError

    if a.seed is None:
        a.seed = ctx.broadcast_object(random.SystemRandom().randrange(2 ** 31))
    if resume is not None and resume.start_epoch == a.epochs:
        return _finished(a, resume, ctx, log)
    args_record = {k: _jsonable(v) for k, v in vars(a).items() if k not in ("classes", "mix", "decoder_options")}
    try:
        run = build_run(_run_config(a), ctx, resume=resume, resume_settings={k: getattr(a, k) for k in DATA_SETTINGS},
                        resume_prefix="--resume", run_info={"args": args_record}, log=log,
                        steps_note=f"(--batch-size {a.batch_size} x {ctx.world_size} rank(s))")
    except ArgumentError as exc:
        _flag_error(parser, exc)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        parser.error(f"--data: {exc}")  # dataset problems: missing, empty or bad folders and files
    if resume is not None:
        log(f"resumed from {a.resume}: epoch {resume.start_epoch + 1} of {a.epochs}")
    log(run.describe())
    t0 = time.perf_counter()
    summary = run.fit()
    log(f"done in {time.perf_counter() - t0:.1f}s: val top-1 {_pct(summary.get('final_val_top1'))} "
        f"(best {_pct(summary.get('best_val_top1'))}), top-5 {_pct(summary.get('final_val_top5'))}, "
        f"{_num(summary.get('images_per_sec'))} img/s" + (f"; outputs in {a.output}" if a.output else ""))
    return 0


def _given(argv: Optional[list[str]], dests: Any) -> set[str]:
    """The dests the command line sets explicitly (a recipe fills in only the others)."""
    unset = object()  # not a string: argparse would parse a string default as a value
    probe = build_parser()
    probe.set_defaults(**{dest: unset for dest in dests})
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not unset}


def _apply_recipe(a: argparse.Namespace, argv: Optional[list[str]]) -> list[str]:
    """Fill in `--recipe`'s settings (those not given); the settings in words (empty without a recipe)."""
    if not a.recipe:
        return []
    from dalimix.train.recipes import RECIPES, apply

    world = int(os.environ.get("WORLD_SIZE", "1"))
    lines = apply(RECIPES[a.recipe], a, _given(argv, list(vars(a))), world)
    a.recipe_settings = lines
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    recipe_lines = _apply_recipe(a, argv)
    _check_args(parser, a)
    from dalimix.train.distributed import init_distributed

    resume = _load_resume(parser, a)
    ctx = init_distributed(a.device, a.dist_timeout)
    log = print if ctx.is_main else (lambda *_, **__: None)
    if recipe_lines:
        log(f"--recipe {a.recipe}: " + "; ".join(recipe_lines))
    try:
        return _train(parser, a, resume, ctx, log)
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


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"
