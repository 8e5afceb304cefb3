"""Step time of a ManifoldMixup-wrapped torchvision ResNet-18 against the plain model, side by side.

One training step = forward + loss + backward + SGD step. The plain model trains with
``F.cross_entropy`` on int labels (what users run without the wrapper); the wrapped one with
``SoftTargetCrossEntropy`` on the mixed targets it returns. Both use the same input batch and the same
seed for every timed block; the order alternates between repeats so that drift on a shared machine hits
both alike. The summary is the median over repeats, the median of the per-repeat ratios, and the ratio
of the fastest blocks (on a shared, busy machine the minimum is the least disturbed estimate).

    python scripts/bench_manifold.py --batch-size 32 --size 64 --steps 30 --warmup 5 --repeats 5
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision

from dalimix import ManifoldMixup, SoftTargetCrossEntropy


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="input height and width")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30, help="timed steps per block")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each block")
    p.add_argument("--repeats", type=int, default=5, help="blocks per variant, alternating order")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("batch_size", "size", "num_classes", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def make_step(model: torch.nn.Module, wrapped: bool, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    soft_ce = SoftTargetCrossEntropy()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if wrapped:
            logits, targets = model(x, y)
            loss = soft_ce(logits, targets)
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def time_block(step: Callable[[], None], steps: int, warmup: int, seed: int) -> float:
    """Mean seconds per step over ``steps`` steps, after ``warmup`` untimed ones."""
    torch.manual_seed(seed)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # keep denormals from slowing one variant as weights drift apart
    torch.manual_seed(args.seed)
    plain = torchvision.models.resnet18(num_classes=args.num_classes)
    wrapped = ManifoldMixup(copy.deepcopy(plain), alpha=args.alpha)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    plain.to(memory_format=fmt).train()
    wrapped.to(memory_format=fmt).train()
    x = torch.randn(args.batch_size, 3, args.size, args.size).to(memory_format=fmt)
    y = torch.randint(0, args.num_classes, (args.batch_size,))
    steps = {"plain": make_step(plain, False, x, y), "wrapped": make_step(wrapped, True, x, y)}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-18 ({args.num_classes} classes), "
          f"batch {args.batch_size}, {args.size}x{args.size}, {'channels_last' if args.channels_last else 'NCHW'}, "
          f"layers {wrapped.eligible_layers}, alpha {args.alpha}")
    print(f"{args.repeats} repeats x {args.steps} timed steps (+{args.warmup} warm-up), order alternating")
    print(f"{'repeat':>6} {'plain ms':>10} {'wrapped ms':>11} {'ratio':>7}")
    times: dict[str, list[float]] = {"plain": [], "wrapped": []}
    for r in range(args.repeats):
        order = ("plain", "wrapped") if r % 2 == 0 else ("wrapped", "plain")
        for name in order:
            times[name].append(time_block(steps[name], args.steps, args.warmup, args.seed + r))
        p, w = times["plain"][-1], times["wrapped"][-1]
        print(f"{r:>6} {p * 1e3:>10.2f} {w * 1e3:>11.2f} {w / p:>7.3f}")
    p_med, w_med = statistics.median(times["plain"]), statistics.median(times["wrapped"])
    paired = statistics.median(w / p for w, p in zip(times["wrapped"], times["plain"]))
    p_min, w_min = min(times["plain"]), min(times["wrapped"])
    print(f"{'median':>6} {p_med * 1e3:>10.2f} {w_med * 1e3:>11.2f} {w_med / p_med:>7.3f}")
    print(f"{'min':>6} {p_min * 1e3:>10.2f} {w_min * 1e3:>11.2f} {w_min / p_min:>7.3f}")
    print(f"wrapped/plain: {w_med / p_med:.3f} (ratio of medians), {paired:.3f} (median of per-repeat ratios), "
          f"{w_min / p_min:.3f} (ratio of minima, the least disturbed blocks); "
          f"overhead {100 * (w_med / p_med - 1):+.1f}% by medians")


if __name__ == "__main__":
    main()
