"""Process-group setup for torchrun and the few collectives the training engine needs.

`torchrun --nproc_per_node=N script.py ...` starts N processes with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT` set. `init_distributed` reads them, joins the group (NCCL on the GPU, gloo on
the CPU) with a timeout, so that a rank whose peer died exits with an error instead of waiting forever, and
returns a `DistContext` that is also valid, as a group of one, when the script is run without torchrun.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "env_world"]


@dataclass
class DistContext:
    """Where this process stands in the run: its rank, the world size and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: Any) -> torch.Tensor:
        """Sum a float64 vector over all ranks (a no-op for a group of one); returns it on the CPU."""
        t = torch.as_tensor(values, dtype=torch.float64).flatten()
        if not self.distributed:
            return t
        # NCCL reduces device tensors only; gloo reduces CPU tensors.
        on = self.device if self.backend == "nccl" else torch.device("cpu")
        t = t.to(on)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order (a list of one without a group)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise RuntimeError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def init_distributed(device: str = "cpu", timeout_minutes: float = 30.0) -> DistContext:
    """Join the torchrun process group (if any) and pick this rank's device.

    `device` is "gpu" or "cpu". On the GPU every rank uses `cuda:LOCAL_RANK` and NCCL; on the CPU gloo.
    `timeout_minutes` bounds the rendezvous and every collective: when a rank dies or hangs, the others
    raise after that long instead of blocking (torchrun also tears the whole group down as soon as one
    worker exits with an error).
    """
    rank, world, local = env_world()
    if device == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("--device gpu was asked for but torch sees no CUDA device")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        backend = "nccl" if device == "gpu" else "gloo"
        kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        ctx.backend = backend
    return ctx
