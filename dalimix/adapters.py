"""The few reach-ins into private APIs of DALI and torch, kept in one place because no public API does the job.

Written for nvidia-dali 2.4 and torch 2.14. `tests/test_adapters.py` exercises each one, so an upgrade that
moves or changes them fails there, loudly and by name, rather than somewhere deep in a run. Imports are
local: `dalimix.ops` uses the DALI ones and must not import torch.
"""
from __future__ import annotations

from typing import Any


def conditional_split(node: Any, predicate: Any) -> tuple[Any, Any]:
    """Split a batch by a per-sample bool into (true part, false part).

    DALI's per-sample conditionals are public only as Python `if` inside `@pipeline_def(enable_conditionals=
    True)`; `dalimix.ops.mix` must work in any user pipeline, so it uses the operators that `if` compiles to.
    (DALI 2.4: `nvidia.dali.fn._conditional.split` / `merge`.)
    """
    from nvidia.dali import fn

    true_part, false_part = fn._conditional.split(node, predicate=predicate)
    return true_part, false_part


def conditional_merge(true_part: Any, false_part: Any, predicate: Any) -> Any:
    """Merge what `conditional_split` split, back into batch order."""
    from nvidia.dali import fn

    return fn._conditional.merge(true_part, false_part, predicate=predicate)


def beta_sample(alpha: float, generator: Any) -> float:
    """One draw of Beta(alpha, alpha) from a `torch.Generator`.

    `torch.distributions.Beta` samples from the global generator only; ManifoldMixup needs its own (seeded,
    checkpointed) generator. Beta(a, a) is the first coordinate of Dirichlet([a, a]), which is what
    `torch.distributions.Beta` itself samples with (torch 2.14: `torch._sample_dirichlet`).
    """
    import torch

    concentration = torch.tensor([alpha, alpha], dtype=torch.float64)
    return float(torch._sample_dirichlet(concentration, generator=generator)[0])


def default_store() -> Any:
    """The key-value store of the default process group (torch 2.14: `distributed_c10d._get_default_store`).

    torchrun's rendezvous store is what every rank of a run can reach, also after a peer died, so failure
    reports go through it; torch has no public accessor for it.
    """
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()
