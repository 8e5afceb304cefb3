"""Step time of a ManifoldMixup-wrapped torchvision ResNet-18 against the plain model, side by side.

One training step = forward + loss + backward + SGD step. The plain model trains with
``F.cross_entropy`` on int labels (what users run without the wrapper); the wrapped one with
``SoftTargetCrossEntropy`` on the mixed targets it returns. Both use the same input batch, the same
initial weights and the same seed in every repeat; their steps alternate one by one (ABBA order), so
drift on a shared machine hits both alike. Every step is timed on its own and summarised by quantiles,
which a busy machine's stalls (a descheduled OpenMP thread costs whole scheduler ticks) move far less
than means: per repeat the median step of each variant and their ratio, then over all steps the median
and the lower quantiles (the least disturbed steps).

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


def time_repeat(steps: dict[str, Callable[[], None]], n: int, warmup: int, seed: int) -> dict[str, list[float]]:
    """Seconds of each step: ``warmup`` untimed steps of each variant, then ``n`` timed steps of each,
    interleaved step by step in ABBA order so that drift and position hit both variants alike."""
    names = list(steps)
    torch.manual_seed(seed)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


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
    print(f"{args.repeats} repeats x {args.steps} timed steps per variant (+{args.warmup} warm-up), "
          f"interleaved step by step (ABBA)")
    print(f"{'repeat':>6} {'plain ms':>10} {'wrapped ms':>11} {'ratio':>7}   (median step time)")
    all_steps: dict[str, list[float]] = {"plain": [], "wrapped": []}
    ratios = []
    for r in range(args.repeats):
        times = time_repeat(steps, args.steps, args.warmup, args.seed + r)
        p, w = statistics.median(times["plain"]), statistics.median(times["wrapped"])
        ratios.append(w / p)
        for name in all_steps:
            all_steps[name] += times[name]
        print(f"{r:>6} {p * 1e3:>10.2f} {w * 1e3:>11.2f} {w / p:>7.3f}")
    rows = {"median": 0.5, "q25": 0.25, "q10": 0.10}
    for label, q in rows.items():
        p, w = quantile(all_steps["plain"], q), quantile(all_steps["wrapped"], q)
        print(f"{label:>6} {p * 1e3:>10.2f} {w * 1e3:>11.2f} {w / p:>7.3f}   (all {len(all_steps['plain'])} steps)")
    p_med, w_med = quantile(all_steps["plain"], 0.5), quantile(all_steps["wrapped"], 0.5)
    print(f"wrapped/plain: {w_med / p_med:.3f} (median step), {statistics.median(ratios):.3f} (median of "
          f"per-repeat ratios); overhead {100 * (w_med / p_med - 1):+.1f}%")


if __name__ == "__main__":
    main()
