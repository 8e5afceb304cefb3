"""Random erasing in the graph: frequency, region sizes, fill modes, layouts."""
from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def
from scipy import stats

from dalimix.ops.erasing import ErasingConfig, random_erasing

H, W = 24, 32


def erased(cfg, layout="CHW", batches=20, n=8):
    shape = (3, H, W) if layout == "CHW" else (H, W, 3)

    @pipeline_def(batch_size=n, num_threads=2, device_id=None, seed=11)
    def pipe():
        x = fn.external_source(lambda: [np.full(shape, 5.0, np.float32)] * n, batch=True, layout=layout)
        return random_erasing(x, cfg, layout=layout)

    p = pipe()
    p.build()
    out = []
    for _ in range(batches):
        (images,) = p.run()
        for img in images:
            img = np.asarray(img)
            out.append(img if layout == "CHW" else img.transpose(2, 0, 1))
    return out


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_const_erasing_frequency_and_region(layout):
    images = erased(ErasingConfig(prob=0.5, mode="const", count=1), layout)
    hits = 0
    for img in images:
        mask = img[0] != 5.0
        if not mask.any():
            continue
        hits += 1
        assert np.all(img[:, mask] == 0.0)
        rows, cols = np.nonzero(mask)
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert mask.sum() == h * w  # one rectangle
        assert 0.02 * H * W * 0.5 <= h * w <= H * W / 3 * 1.5  # rounding of sides aside
    assert stats.binomtest(hits, len(images), 0.5).pvalue > 1e-3


def test_rand_mode_fills_one_value_per_channel_and_pixel_mode_fills_noise():
    for img in erased(ErasingConfig(prob=1.0, mode="rand"), batches=4):
        mask = img[0] != 5.0
        assert mask.any()
        for c in range(3):
            values = img[c][mask]
            assert np.all(values == values[0])
    stds = []
    for img in erased(ErasingConfig(prob=1.0, mode="pixel"), batches=4):
        mask = np.any(img != 5.0, axis=0)
        assert mask.any()
        stds.append(img[:, mask].std())
    assert 0.8 < np.mean(stds) < 1.2  # standard normal noise


def test_count_makes_up_to_that_many_regions():
    counts = []
    for img in erased(ErasingConfig(prob=1.0, mode="const", count=3), batches=10):
        mask = img[0] == 0.0
        assert 0 < mask.sum() <= H * W / 3 * 1.5
        counts.append(mask.sum())
    assert len(set(counts)) > 3


@pytest.mark.parametrize("kw,name", [({"prob": 1.5}, "re_prob"), ({"mode": "blur"}, "re_mode"),
                                     ({"count": 0}, "re_count")])
def test_invalid_erasing_options(kw, name):
    with pytest.raises(ValueError, match=name):
        ErasingConfig(**kw)
