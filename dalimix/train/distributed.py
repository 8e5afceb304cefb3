"""Process-group setup for torchrun and the few collectives the training engine needs.

`torchrun --nproc_per_node=N script.py ...` starts N processes with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT` set. `init_distributed` reads them, joins the group (NCCL on the GPU, gloo on
the CPU) with a timeout, so that a rank whose peer died exits with an error instead of waiting forever, and
returns a `DistContext` that is also valid, as a group of one, when the script is run without torchrun.

When a collective fails (a peer died: "Connection reset by peer"), `DistContext.failure_report` names the rank
behind it: every rank registers its node, host and pid in the group's key-value store at start, a rank that
fails reports there, and the ranks that never report within a grace period are named as dead or hung. This
works across nodes, where torchrun only names the ranks of its own node.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from dalimix import adapters

__all__ = ["DistContext", "init_distributed", "env_world", "is_communication_error"]


@dataclass
class DistContext:
    """Where this process stands in the run: its rank, the world size and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    store: Any = field(default=None, repr=False)  # the group's key-value store, for failure reports

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

    def failure_report(self, exc: BaseException, wait_s: float = 30.0) -> str:
        """Lines naming the rank(s) behind a failure of this rank, to print with its error.

        This rank reports `exc` in the group's store. An error of its own (not a communication failure)
        is the cause: it says so at once. After a communication failure (a peer vanished) it waits up to
        `wait_s` seconds for every rank to report, then names the ranks that failed with an error of
        their own, first one first, and those that never reported (killed, out of memory, crashed outside
        Python, or hung), each with its node, host and pid.
        """
        if not self.distributed:
            return ""
        comm = is_communication_error(exc)
        store = self.store
        if store is None:
            return "  (no process-group store to ask the other ranks which one failed)"
        me = {"time": time.time(), "comm": comm, "error": _one_line(exc)}
        try:
            store.set(f"report/{self.rank}", json.dumps(me))
        except Exception as err:  # noqa: BLE001 - the store's host is gone
            return _store_gone(err)
        if not comm:
            return (f"  rank {self.rank} failed with an error of its own (above); the other ranks will name it as the "
                    f"cause when their collectives fail")
        deadline = time.monotonic() + max(0.0, wait_s)
        try:
            while True:
                reported = [r for r in range(self.world_size) if store.check([f"report/{r}"])]
                if len(reported) == self.world_size or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            reports = {r: json.loads(store.get(f"report/{r}")) for r in reported}
            hosts = {r: json.loads(store.get(f"host/{r}")) for r in range(self.world_size)
                     if store.check([f"host/{r}"])}
        except Exception as err:  # noqa: BLE001
            return _store_gone(err)

        def who(r: int) -> str:
            h = hosts.get(r)
            return f"rank {r}" + (f" (node {h['node']}, host {h['host']}, pid {h['pid']})" if h else "")

        lines = []
        causes = sorted((rep["time"], r) for r, rep in reports.items() if not rep.get("comm"))
        for _, r in causes:
            lines.append(f"  {who(r)} failed first: {reports[r]['error']}" if not lines else
                         f"  {who(r)} failed too: {reports[r]['error']}")
        silent = [r for r in range(self.world_size) if r not in reports]
        for r in silent:
            lines.append(f"  {who(r)} did not report within {wait_s:g} s: it died (killed, out of memory or crashed "
                         f"outside Python) or hangs")
        if silent and not causes:
            lines.append("  (ranks that their node's torchrun stopped after another rank there failed do not report "
                         "either; that node's log names the rank that failed first)")
        if not lines:
            lines.append("  every rank reported a communication failure; none reported a cause")
        return "\n".join(lines)


_COMM_WORDS = ("connection", "broken pipe", "timed out", "timeout", "nccl", "gloo", "socket", "peer", "watchdog",
               "rendezvous", "store")


def is_communication_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a collective or store failure rather than an error of this rank."""
    dist_error = getattr(dist, "DistError", None)
    seen = 0
    e: Optional[BaseException] = exc
    while e is not None and seen < 8:
        if dist_error is not None and isinstance(e, dist_error):
            return True
        text = str(e).lower()
        if any(w in text for w in _COMM_WORDS):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _store_gone(err: BaseException) -> str:
    addr = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (f"  the rendezvous store at {addr} cannot be reached ({_one_line(err)}): the node hosting it (node 0, "
            f"with rank 0) has stopped; its torchrun log names the rank that failed")


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

    `device` is "gpu" or "cpu". On the GPU every rank uses `cuda:LOCAL_RANK` and NCCL (or the one GPU a
    launcher made visible to each process, as SLURM and Kubernetes do, whatever its LOCAL_RANK); on the
    CPU gloo.
    `timeout_minutes` bounds the rendezvous and every collective: when a rank dies or hangs, the others
    raise after that long instead of blocking (torchrun also tears the whole group down as soon as one
    worker exits with an error).
    """
    rank, world, local = env_world()
    if device == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("--device gpu was asked for but torch sees no CUDA device")
        visible = torch.cuda.device_count()
        index = 0 if visible == 1 else local
        if index >= visible:
            raise RuntimeError(f"LOCAL_RANK={local} but only {visible} CUDA device(s) are visible (expected one "
                               f"per process, or one per local rank)")
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
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
        ctx.store = _report_store(rank, local)
    return ctx


def _report_store(rank: int, local_rank: int) -> Any:
    """The default group's store under a prefix of this launch (torchrun restarts get their own), with this
    rank's node, host and pid registered; None where it cannot be had."""
    try:
        base = adapters.default_store()
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"dalimix/{attempt}/", base)
        store.set(f"host/{rank}", json.dumps({"node": int(os.environ.get("GROUP_RANK", "0")),
                                              "host": socket.gethostname(), "pid": os.getpid(),
                                              "local_rank": local_rank}))
        return store
    except Exception:  # noqa: BLE001 - failure reports are a diagnostic, never a reason to fail
        return None
