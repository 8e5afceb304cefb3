#!/usr/bin/env python3
"""How fast is the input pipeline, how far from the decode limit, and does it keep the GPU fed?

Measures in one run, after warm-up, alternating contenders, median of repeats:
  decode_only   reader + fused random-crop decode (the limit of a DALI train loader)
  mix_off       dalimix train loader, no mixing
  mix_on        dalimix train loader, mixup + CutMix (switch 0.5)
  mix_off_stock, mix_on_stock  the same built from stock DALI operators (no native plugin), for comparison
  torchvision   DataLoader recipe (RandomResizedCrop, flip, ToTensor, Normalize), workers = --threads
  torchvision_mix  the same plus mixup/CutMix on each batch in the loop, as timm does
  model_step    the model's own training step rate on synthetic input (GPU: always, --arch, default resnet50
                with AMP; CPU: with --model-step, default resnet18, with the cores DALI leaves it)
and a stage breakdown (read, decode+crop, augment = the fused resample + flip + normalise, mix, copy to torch;
with stock operators: read, decode+crop, resize, augment, mix, copy). It also says which JPEG decoder runs
(CPU libjpeg-turbo; on a GPU nvJPEG CUDA and whether the hardware decoder takes part), the GPU memory the
pipeline holds after warm-up and after --memory-epochs epochs (GPU only), and ends with one sentence: is
training input-bound or model-bound, and by how much.

  python scripts/profile_loader.py --data /tmp/imagenet-sample/train --device cpu --threads 2 \
      --batch-size 64 --seconds 10 --json out.json --plot out.png

--tune searches for the fastest loader settings instead (dalimix.tools.tuner): DALI threads, prefetch depth, batch
size per rank and, on a GPU, the hardware decoder's share and nvJPEG's memory padding / preallocation, side by
side within --seconds in all, and prints the best as a train_pipeline(...) call and dalimix-train flags, with
the gain over the defaults (--threads, --batch-size, --prefetch):

  python scripts/profile_loader.py --tune --data /tmp/imagenet-sample/train --device cpu --threads 2 \
      --batch-size 64 --seconds 120
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch

from dalimix.augment_flags import add_augmentation_flags, augmentation_kwargs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with one sub-folder per class (e.g. train/)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--threads", type=int, default=2, help="DALI threads = DataLoader workers")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 8)")
    g.add_argument("--epochs", type=float, default=None, help="epochs per measurement instead of seconds")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per contender")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float32")
    p.add_argument("--arch", default=None,
                   help="model for the training step rate (default resnet50 on a GPU, resnet18 on the CPU)")
    p.add_argument("--model-step", action="store_true",
                   help="CPU: also measure the model's training step rate (always done on a GPU) and say whether "
                        "training is input-bound or model-bound")
    p.add_argument("--memory-epochs", type=int, default=1, metavar="N",
                   help="GPU: report the GPU memory the pipeline holds after warm-up and after N epochs (0: skip)")
    t = p.add_argument_group("tuning (--tune)")
    t.add_argument("--tune", action="store_true",
                   help="search for the fastest loader settings within --seconds in all (default 120)")
    t.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="the prefetch depth the search starts from, as --threads and --batch-size are the threads and "
                        "batch size (your dalimix-train --prefetch; default 2)")
    t.add_argument("--thread-counts", type=_int_list, default=None, metavar="N,N,...",
                   help="DALI thread counts to try (default: powers of two up to the cores, and --threads)")
    t.add_argument("--prefetch-depths", type=_int_list, default=None, metavar="N,N,...",
                   help="prefetch queue depths to try (default 1,2,3,4)")
    t.add_argument("--batch-sizes", type=_int_list, default=None, metavar="N,N,...",
                   help="batch sizes per rank to try (default: half, equal to and double --batch-size)")
    t.add_argument("--hw-decoder-loads", type=_float_list, default=None, metavar="F,F,...",
                   help="GPU: shares of each batch for the hardware JPEG decoder to try (default 0,0.3,0.8,0.95 and "
                        "DALI's 0.65)")
    t.add_argument("--tune-with-model", action="store_true",
                   help="feed every batch through the model's training step (--arch) while tuning, so the score is "
                        "what training reaches (on the CPU, DALI and the model share the cores)")
    add_augmentation_flags(p.add_argument_group("the recipe's augmentation (both sides run it: dalimix in the graph, "
                                                "the torchvision contenders with timm's or torchvision's transforms)"),
                           erasing=True)
    p.add_argument("--no-stages", action="store_true", help="skip the stage breakdown")
    p.add_argument("--no-torchvision", action="store_true", help="skip the torchvision baselines")
    p.add_argument("--shards", metavar="SPEC", default=None,
                   help="the same dataset as tar shards (a folder of .tar files or a brace pattern, e.g. written by "
                        "dalimix-make-shards): adds the shard loader and the read ceilings of both sources")
    p.add_argument("--no-stock", action="store_true",
                   help="skip the stock-DALI-operator graphs (the fallback without dalimix's native operators)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a bar chart PNG here")
    a = p.parse_args(argv)
    for name in ("batch_size", "crop", "threads", "repeats", "prefetch"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not os.path.isdir(a.data):
        p.error(f"--data: folder {a.data!r} does not exist")
    if a.seconds is not None and a.seconds <= 0:
        p.error("--seconds must be > 0")
    if a.epochs is not None and a.epochs <= 0:
        p.error("--epochs must be > 0")
    if a.device == "gpu" and not torch.cuda.is_available():
        p.error("--device gpu: no CUDA GPU is visible")
    if a.memory_epochs < 0:
        p.error("--memory-epochs must be >= 0")
    if a.tune and a.epochs is not None:
        p.error("--epochs: --tune measures within --seconds in all; give --seconds")
    if a.hw_decoder_loads is not None and any(not 0.0 <= v <= 1.0 for v in a.hw_decoder_loads):
        p.error(f"--hw-decoder-loads: each share must lie in [0, 1], got {a.hw_decoder_loads}")
    if not 0.0 <= a.re_prob <= 1.0:
        p.error(f"--re-prob must lie in [0, 1], got {a.re_prob}")
    augmentation_kwargs(p, a)
    if a.arch is None:
        a.arch = "resnet50" if a.device == "gpu" else "resnet18"
    from dalimix.train.models import check_arch
    from dalimix.validation import ArgumentError
    try:
        check_arch(a.arch)
    except ArgumentError as exc:
        p.error(f"--{exc}")
    return a


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def main(argv: Optional[list[str]] = None) -> dict:
    """Parse `argv`, then profile (or tune with --tune); returns the report."""
    from dalimix.tools import profiler

    a = parse_args(argv)
    return profiler.tune(a, argv) if a.tune else profiler.profile(a, argv)


def cli() -> int:
    """Console entry point (`dalimix-profile`): exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
