"""mixup / CutMix inside DALI graphs: exact targets, distributions, modes, switch, config errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from scipy import stats

from dalimix.ops import MixConfig, mix

K = 8
VALUES = np.array([0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 210.0], np.float32)


def run_mix(cfg: MixConfig, batch_sizes, *, layout="CHW", dtype=np.float32, hw=(12, 16), seed=7, iters=None):
    """Feed constant images whose value encodes the class; return [(labels, images, targets)] per batch."""
    sizes = list(batch_sizes)
    rng = np.random.default_rng(seed)
    draws = [rng.permutation(K)[: n] if n <= K else rng.integers(0, K, n) for n in sizes]

    def source(info):
        labels = draws[info.iteration % len(draws)]
        shape = (3, *hw) if layout == "CHW" else (*hw, 3)
        return [np.full(shape, VALUES[c], dtype) for c in labels], [np.array(c, np.int32) for c in labels]

    @pipeline_def(batch_size=max(sizes), num_threads=2, device_id=None, seed=seed)
    def pipe():
        x, y = fn.external_source(source, num_outputs=2, batch=True, batch_info=True, layout=[layout, ""])
        return (*mix(x, y, cfg, layout=layout, return_lam=True), y)

    p = pipe()
    p.build()
    out = []
    for _ in range(iters or len(sizes)):
        images, targets, lam, labels = p.run()
        out.append((np.array([int(np.asarray(v)) for v in labels]), [np.asarray(v) for v in images],
                    np.stack([np.asarray(v) for v in targets]), np.array([float(np.asarray(v).reshape(-1)[0]) for v in lam])))
    return out


def classify(image, target, own, tol):
    """Check one output image against its target; return 'none', 'mixup' or 'cutmix'."""
    weights = {c: target[c] for c in np.nonzero(target > 1e-6)[0]}
    assert abs(sum(weights.values()) - 1) < 1e-5
    if len(weights) == 1:
        (c,) = weights
        assert c == own
        np.testing.assert_allclose(image, VALUES[c], atol=tol)
        return "none"
    assert len(weights) == 2 and own in weights
    other = next(c for c in weights if c != own)
    lam = weights[own]
    blend = lam * VALUES[own] + (1 - lam) * VALUES[other]
    if np.allclose(image, blend, atol=tol + 1e-3):
        return "mixup"
    on_own = np.abs(image - VALUES[own]) <= tol
    on_other = np.abs(image - VALUES[other]) <= tol
    if np.all(on_own | on_other):
        # CutMix: the partner's share of pixels is its target weight, exactly.
        assert on_other.mean() == pytest.approx(weights[other], abs=1e-6)
        return "cutmix"
    raise AssertionError(f"image is neither the mixup blend {blend} nor a paste of {VALUES[own]} and "
                         f"{VALUES[other]}: values {np.unique(image)[:8]}")


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_every_pixel_is_explained_by_the_target(mode, layout, dtype):
    cfg = MixConfig(mode=mode, num_classes=K, label_smoothing=0.0, mixup_alpha=1.0, cutmix_alpha=1.0)
    tol = 0.51 if dtype == np.uint8 else 1e-3  # uint8 mixup rounds to nearest
    kinds = set()
    for labels, images, targets, _ in run_mix(cfg, [1, 5, 8, 7, 3, 8, 8, 6], layout=layout, dtype=dtype):
        assert targets.dtype == np.float32 and targets.shape == (len(labels), K)
        for img, t, own in zip(images, targets, labels):
            assert img.dtype == dtype and img.shape == ((3, 12, 16) if layout == "CHW" else (12, 16, 3))
            kinds.add(classify(img.astype(np.float64), t, own, tol))
    assert {"mixup", "cutmix"} <= kinds


def test_mixup_lam_follows_beta():
    for alpha in (0.4, 1.0):
        cfg = MixConfig(mixup_alpha=alpha, cutmix_alpha=0.0, mode="elem", num_classes=K, label_smoothing=0.0)
        lams = np.concatenate([lam[:4] for *_, lam in run_mix(cfg, [8] * 60, hw=(2, 2))])
        assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_cutmix_uncorrected_lam_is_beta_and_correction_shrinks_the_pasted_area():
    raw = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=False, num_classes=K,
                    label_smoothing=0.0)
    lams = np.concatenate([lam[:4] for *_, lam in run_mix(raw, [8] * 60, hw=(32, 32))])
    assert stats.kstest(lams, stats.beta(1.0, 1.0).cdf).pvalue > 1e-3
    fixed = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=True, num_classes=K,
                      label_smoothing=0.0)
    pasted = np.concatenate([1 - lam[:4] for *_, lam in run_mix(fixed, [8] * 60, hw=(32, 32))])
    assert 0.27 < pasted.mean() < 0.37  # clipping: about 0.32 instead of 0.5


def test_cutmix_minmax_box_sides():
    cfg = MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.25, 0.5), mode="elem", num_classes=K,
                    label_smoothing=0.0)
    for labels, images, targets, _ in run_mix(cfg, [8] * 5, hw=(40, 40)):
        for img, t, own in zip(images, targets, labels):
            other_mask = np.abs(img[0] - VALUES[own]) > 1e-3
            rows, cols = np.nonzero(other_mask)
            h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
            assert 10 <= h < 20 and 10 <= w < 20 and other_mask.sum() == h * w
            assert t[own] == pytest.approx(1 - h * w / 1600)


def test_prob_and_switch_frequencies():
    cfg = MixConfig(prob=0.6, switch_prob=0.3, mode="elem", num_classes=K, label_smoothing=0.0)
    kinds = []
    for labels, images, targets, _ in run_mix(cfg, [8] * 50, hw=(16, 16)):
        kinds += [classify(i.astype(np.float64), t, o, 1e-3) for i, t, o in zip(images, targets, labels)]
    kinds = np.array(kinds)
    n = len(kinds)
    # A mixed sample whose lam rounds to 1 or whose CutMix box is empty reads as 'none': allow for it.
    mixed = (kinds != "none").sum()
    assert stats.binomtest(mixed, n, 0.6).pvalue > 1e-3 or 0.55 < mixed / n < 0.6
    cut = (kinds == "cutmix").sum()
    assert stats.binomtest(cut, mixed, 0.3).pvalue > 1e-3


def test_batch_mode_shares_one_draw_and_pair_mode_shares_per_pair():
    cfg = MixConfig(mode="batch", num_classes=K, label_smoothing=0.0)
    for labels, images, targets, lam in run_mix(cfg, [8, 6, 7] * 4):
        n = len(labels)
        middle = n // 2 if n % 2 else None
        keep = [i for i in range(n) if i != middle]
        assert np.allclose(lam[keep], lam[keep][0])
        kinds = {classify(images[i].astype(np.float64), targets[i], labels[i], 1e-3) for i in keep}
        assert len(kinds) == 1
    cfg = MixConfig(mode="pair", num_classes=K, label_smoothing=0.0)
    for labels, _, targets, lam in run_mix(cfg, [8, 7] * 4):
        n = len(labels)
        for i in range(n):
            j = n - 1 - i
            assert lam[i] == pytest.approx(lam[j])
            assert targets[i][labels[j]] == pytest.approx(targets[j][labels[i]])


def test_label_smoothing_values_and_mixed_smoothing():
    cfg = MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)
    for labels, images, targets, _ in run_mix(cfg, [5, 3]):
        for t, own in zip(targets, labels):
            assert t[own] == pytest.approx(0.91) and np.allclose(np.delete(t, own), 0.01)
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.2, num_classes=K, mode="elem")
    for labels, _, targets, lam in run_mix(cfg, [6]):
        for i, (t, own) in enumerate(zip(targets, labels)):
            partner = labels[len(labels) - 1 - i]
            off = 0.2 / K
            assert t[own] == pytest.approx(lam[i] * (1 - 0.2) + off, abs=1e-6)
            assert t[partner] == pytest.approx((1 - lam[i]) * (1 - 0.2) + off, abs=1e-6)
            assert t.sum() == pytest.approx(1.0, abs=1e-5)


def test_mixing_can_be_switched_per_iteration_without_rebuild():
    cfg = MixConfig(mode="elem", num_classes=K, label_smoothing=0.0)

    def switch(info):
        return np.full((4,), info.iteration % 2 == 0, np.bool_)

    def source(info):
        return [np.full((4, 4, 3), VALUES[c], np.float32) for c in range(4)], [np.array(c, np.int32)
                                                                                for c in range(4)]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=1)
    def pipe():
        x, y = fn.external_source(source, num_outputs=2, batch=True, batch_info=True, layout=["HWC", ""])
        on = fn.external_source(switch, batch=True, batch_info=True, dtype=types.BOOL)
        return mix(x, y, cfg, layout="HWC", enabled=on)

    p = pipe()
    p.build()
    for it in range(6):
        _, targets = p.run()
        t = np.stack([np.asarray(v) for v in targets])
        if it % 2:
            assert np.array_equal(t, np.eye(K, dtype=np.float32)[:4])
        else:
            assert (t.max(axis=1) < 1).sum() >= 2  # at prob 1 only near-1 lam or an empty box can escape


@pytest.mark.parametrize("field,value", [
    ("mixup_alpha", -0.1), ("cutmix_alpha", float("nan")), ("prob", 1.5), ("switch_prob", -1),
    ("mode", "row"), ("label_smoothing", 1.0), ("num_classes", 0), ("cutmix_minmax", (0.5, 0.2)),
    ("cutmix_minmax", (0.1,)), ("correct_lam", "yes"),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MixConfig(**{field: value})


def test_mix_rejects_bad_layout_and_config():
    with pytest.raises(ValueError, match="layout"):
        run_mix_with_layout("NCHW")
    with pytest.raises(ValueError, match="config"):
        mix(None, None, {"mixup_alpha": 1.0})


def run_mix_with_layout(layout):
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(lambda: [np.zeros((2, 2, 3), np.float32)] * 2, batch=True)
        y = fn.external_source(lambda: [np.array(0, np.int32)] * 2, batch=True)
        return mix(x, y, MixConfig(num_classes=2), layout=layout)
    return pipe()


def test_ops_do_not_import_torch():
    code = "import sys, dalimix.ops; assert 'torch' not in sys.modules, 'dalimix.ops imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_mix_on_gpu_keeps_everything_on_gpu():
    cfg = MixConfig(mode="elem", num_classes=K, label_smoothing=0.0)

    def source(info):
        return [np.full((3, 8, 8), VALUES[c], np.float32) for c in range(6)], [np.array(c, np.int32)
                                                                                for c in range(6)]

    @pipeline_def(batch_size=6, num_threads=2, device_id=0, seed=3)
    def pipe():
        x, y = fn.external_source(source, num_outputs=2, batch=True, batch_info=True, layout=["CHW", ""])
        return mix(x.gpu(), y, cfg, layout="CHW")

    p = pipe()
    p.build()
    for _ in range(5):
        images, targets = p.run()
        assert type(images).__name__ == "TensorListGPU" and type(targets).__name__ == "TensorListGPU"
        imgs = [np.asarray(v) for v in images.as_cpu()]
        ts = [np.asarray(v) for v in targets.as_cpu()]
        for own, (img, t) in enumerate(zip(imgs, ts)):
            classify(img.astype(np.float64), t, own, 1e-3)


def test_finish_runs_per_branch_and_keeps_uint8_mixup_unrounded():
    cfg = MixConfig(mode="elem", num_classes=K, label_smoothing=0.0)
    labels = np.arange(6) % K

    def source(info):
        return [np.full((6, 6, 3), VALUES[c], np.uint8) for c in labels], [np.array(c, np.int32) for c in labels]

    @pipeline_def(batch_size=6, num_threads=2, device_id=None, seed=5)
    def pipe():
        x, y = fn.external_source(source, num_outputs=2, batch=True, batch_info=True, layout=["HWC", ""])
        offset = fn.cast(y, dtype=types.FLOAT) * 0.0 + 0.25  # a per-sample node that `take` must split

        def finish(branch, take):
            return fn.cast(branch, dtype=types.FLOAT) + take(offset)
        return mix(x, y, cfg, layout="HWC", finish=finish)

    p = pipe()
    p.build()
    kinds = set()
    for _ in range(10):
        images, targets = p.run()
        for own, (img, t) in enumerate(zip(images, targets)):
            img = np.asarray(img, np.float64) - 0.25
            assert np.asarray(img).dtype == np.float64
            kinds.add(classify(img, np.asarray(t), labels[own], 1e-3))  # exact: no uint8 rounding
    assert "mixup" in kinds
