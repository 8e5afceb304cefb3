"""The private DALI / torch APIs dalimix depends on (dalimix/adapters.py): if an upgrade moves or changes one,
these fail by name."""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from scipy import stats

from dalimix import adapters


def test_dali_conditional_split_and_merge_route_samples_and_restore_order():
    values = [np.array([v], np.float32) for v in range(6)]
    flags = [np.array(v % 2 == 0) for v in range(6)]

    @pipeline_def(batch_size=6, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: values, batch=True)
        p = fn.external_source(source=lambda: flags, batch=True, dtype=types.BOOL)
        t, f = adapters.conditional_split(x, p)
        return adapters.conditional_merge(t + 100.0, f, p)

    p = pipe()
    p.build()
    (out,) = p.run()
    assert [float(np.asarray(o)[0]) for o in out] == [100.0, 1.0, 102.0, 3.0, 104.0, 5.0]


def test_torch_beta_sample_follows_beta_and_its_generator():
    g = torch.Generator().manual_seed(0)
    draws = [adapters.beta_sample(0.4, g) for _ in range(2000)]
    assert stats.kstest(draws, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    again = torch.Generator().manual_seed(0)
    assert [adapters.beta_sample(0.4, again) for _ in range(5)] == draws[:5]


def test_torch_default_store_of_a_process_group(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        store = adapters.default_store()
        store.set("dalimix/check", "ok")
        assert store.get("dalimix/check") == b"ok"
    finally:
        dist.destroy_process_group()
