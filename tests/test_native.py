"""dalimix's native DALI operators against plain NumPy references, and against the stock-operator fallback.

CPU tests run wherever the plugin builds (g++ present). The CUDA kernel's logic runs in every CPU run too:
`fn.dalimix.resample_mix_gpu_emulated` is the GPU backend's launch (the same descriptors, grid and
per-pixel code) emulated on the host, and goes through the same matrix as the CPU backend. The real GPU
runs it once more under the `gpu` marker.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from scipy import stats

import dalimix.ops  # noqa: F401  (loads the plugin)
from dalimix import MixConfig, native
from dalimix.ops import mix
from dalimix.ops.erasing import ATTEMPTS, erase_boxes
from dalimix.ops.mix_params import NUM_UNIFORMS, float32_threshold, mix_params
from native_reference import fused as reference  # noqa: E402

needs_native = pytest.mark.skipif(not native.available("cpu"),
                                  reason=f"native operators unavailable: {native.why_unavailable('cpu')}")
pytestmark = needs_native

SHAPES = [(37, 53), (64, 48), (101, 99), (24, 24), (16, 301), (5, 7)]
DTYPES = {"float32": (types.FLOAT, np.float32), "float16": (types.FLOAT16, np.float16), "uint8": (types.UINT8, np.uint8)}


def _batch(rng, n, in_dtype, constant=False):
    images = []
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        if constant:
            img = np.full((h, w, 3), [17 + 23 * i, 200 - 11 * i, 90], np.float64)
        else:
            img = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
        if in_dtype == np.float32 and not constant:
            img = img + rng.random((h, w, 3))  # values between levels too
        images.append(img.astype(in_dtype))
    return images


def _params(rng, n, size):
    oh, ow = size
    partner = list(range(n - 1, -1, -1))
    kind = [(0, 1, 2)[i % 3] for i in range(n)]
    weight = rng.random(n).astype(np.float32).tolist()
    boxes = []
    for _ in range(n):
        y0, x0 = int(rng.integers(0, oh)), int(rng.integers(0, ow))
        boxes.append([y0, x0, int(rng.integers(y0, oh + 1)), int(rng.integers(x0, ow + 1))])
    mirror = [int(v) for v in rng.integers(0, 2, n)]
    return dict(partner=partner, kind=kind, weight=weight, box=boxes, mirror=mirror)


def _constant(batch):
    return lambda: batch


BACKENDS = ["cpu", "gpu_emulated"]


def run_fused(images, params, *, device="cpu", in_layout="HWC", **kwargs):
    """Run fn.dalimix.resample_mix once on `images` (HWC arrays) with per-sample `params`; device
    "gpu_emulated" runs the GPU backend's launch emulated on the host."""
    n = len(images)
    feed = [np.ascontiguousarray(im.transpose(2, 0, 1)) if in_layout == "CHW" else im for im in images]
    names = sorted(params)
    arrays = {k: [np.asarray(v, np.float32 if k == "weight" else np.int32) for v in params[k]] for k in names}

    @pipeline_def(batch_size=n, num_threads=2, device_id=0 if device == "gpu" else None, seed=1)
    def pipe():
        x = fn.external_source(source=lambda: feed, batch=True, layout=in_layout)
        args = {k: fn.external_source(source=_constant(arrays[k]), batch=True) for k in names}
        x = x.gpu() if device == "gpu" else x
        if device == "gpu_emulated":
            return fn.dalimix.resample_mix_gpu_emulated(x, **args, **kwargs)
        return fn.dalimix.resample_mix(x, device=device, **args, **kwargs)

    p = pipe()
    p.build()
    (out,) = p.run()
    if device == "gpu":
        out = out.as_cpu()
    return [np.asarray(out[i]) for i in range(n)]


def _as_hwc(outs, layout):
    return [o.transpose(1, 2, 0) if layout == "CHW" else o for o in outs]


def _check(outs, refs, out_dtype, tol):
    for o, r in zip(outs, refs):
        assert o.dtype == out_dtype and o.shape == r.shape
        if out_dtype == np.uint8:
            np.testing.assert_allclose(o.astype(np.float64), np.clip(np.rint(r), 0, 255), atol=1.0)
        else:
            np.testing.assert_allclose(o.astype(np.float64), r, atol=tol, rtol=0)


MATRIX = list(itertools.product(["uint8", "float32"], ["HWC", "CHW"], ["CHW", "HWC"], ["float32", "float16", "uint8"],
                                [False, True]))


def _matrix_case(device, in_name, in_layout, out_layout, out_name, antialias, constant=False, size=(31, 24)):
    rng = np.random.default_rng(abs(hash((in_name, in_layout, out_layout, out_name, antialias))) % 2 ** 32)
    in_dtype = np.uint8 if in_name == "uint8" else np.float32
    n = 7
    images = _batch(rng, n, in_dtype, constant)
    params = _params(rng, n, size)
    norm = dict(mean=[0.0], std=[1.0]) if out_name == "uint8" else dict(mean=[120.0, 110.0, 100.0], std=[60.0, 55.0, 50.0])
    outs = run_fused(images, params, device=device, in_layout=in_layout, size=list(size), antialias=antialias,
                     dtype=DTYPES[out_name][0], output_layout=out_layout, **norm)
    refs = reference(images, size=size, antialias=antialias, **params, **norm)
    tol = 2e-3 if out_name == "float16" else 2e-4
    _check(_as_hwc(outs, out_layout), refs, DTYPES[out_name][1], tol * (4 if out_name == "float16" else 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_name,in_layout,out_layout,out_name,antialias", MATRIX)
def test_fused_matches_numpy_reference(backend, in_name, in_layout, out_layout, out_name, antialias):
    _matrix_case(backend, in_name, in_layout, out_layout, out_name, antialias)


@pytest.mark.parametrize("size", [(24, 24), (25, 19), (1, 1), (300, 7)])
def test_constant_images_stay_constant_and_sizes_of_any_parity(size):
    rng = np.random.default_rng(3)
    images = _batch(rng, 6, np.uint8, constant=True)
    params = dict(partner=list(range(6)), kind=[0] * 6, weight=[1.0] * 6, box=[[0, 0, 0, 0]] * 6, mirror=[1, 0] * 3)
    outs = run_fused(images, params, size=list(size), mean=[10.0], std=[2.0], output_layout="HWC", dtype=types.FLOAT)
    for o, img in zip(outs, images):
        assert o.shape == (*size, 3)
        np.testing.assert_allclose(o, (img[0, 0].astype(np.float64) - 10.0) / 2.0 + np.zeros((*size, 3)), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_size_is_exact_and_cutmix_pastes_the_box(backend):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (12, 16, 3)).astype(np.uint8) for _ in range(4)]
    params = dict(partner=[3, 2, 1, 0], kind=[2, 0, 1, 2], weight=[0.5, 1.0, 0.25, 0.5],
                  box=[[2, 3, 7, 11], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 12, 16]], mirror=[0, 0, 0, 1])
    outs = run_fused(images, params, dtype=types.FLOAT, output_layout="HWC", device=backend)
    a, b, c, d = (im.astype(np.float64) for im in images)
    expect0 = a.copy()
    expect0[2:7, 3:11] = d[2:7, 3:11]
    np.testing.assert_array_equal(outs[0], expect0)
    np.testing.assert_array_equal(outs[1], b)
    np.testing.assert_allclose(outs[2], 0.25 * c + 0.75 * b, atol=1e-4)
    np.testing.assert_array_equal(outs[3], a[:, ::-1])  # whole image pasted, then flipped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("out_name,out_layout", [("float32", "CHW"), ("float16", "HWC"), ("float16", "CHW")])
def test_erasing_regions_and_fills_match_reference(backend, before, mode, out_name, out_layout):
    rng = np.random.default_rng(mode)
    n, size = 4, (20, 18)
    images = _batch(rng, n, np.uint8)
    params = _params(rng, n, size)
    erase = [[2, 3, 9, 12, 0, 0, 0, 0, 5, 5, 18, 9], [0, 0, 0, 0] * 3, [0, 0, 20, 18, 1, 1, 2, 2, 3, 3, 3, 9],
             [10, 0, 20, 5, 0, 0, 0, 0, 0, 0, 0, 0]]
    seeds = [11, -7, 2 ** 31 - 1, 0]
    params.update(erase=erase, erase_seed=seeds)
    norm = dict(mean=[120.0], std=[60.0])
    outs = run_fused(images, params, size=list(size), dtype=DTYPES[out_name][0], output_layout=out_layout,
                     erase_mode=mode, erase_before=before, device=backend, **norm)
    refs = reference(images, size=size, erase_mode=mode, seed=[s & 0xFFFFFFFF for s in seeds], erase_before=before,
                     **{k: v for k, v in params.items() if k != "erase_seed"}, **norm)
    _check(_as_hwc(outs, out_layout), refs, DTYPES[out_name][1], 3e-3 if out_name == "float16" else 2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_name,antialias,size", [("uint8", False, (31, 24)), ("uint8", True, (20, 18)),
                                                    ("float32", False, (50, 61)), ("uint8", True, (90, 80))])
def test_bicubic_matches_the_numpy_reference(backend, in_name, antialias, size):
    """interp=2: Keys' cubic (a = -0.5, PIL's bicubic), widened by the scale with antialias, uint8 clipped."""
    rng = np.random.default_rng(11)
    in_dtype = np.uint8 if in_name == "uint8" else np.float32
    images = _batch(rng, 6, in_dtype)
    params = _params(rng, 6, size)
    outs = run_fused(images, params, size=list(size), antialias=antialias, interp=2, dtype=types.FLOAT,
                     output_layout="HWC", device=backend)
    refs = reference(images, size=size, antialias=antialias, interp=2, **params)
    _check(outs, refs, np.float32, 1e-2)  # float32 sums of 16-25 cubic taps over 0..255 values


@pytest.mark.parametrize("backend", BACKENDS)
def test_erasing_before_mixing_carries_the_partners_regions_along(backend):
    """re_order "before_mix": a CutMix box pastes the partner with the partner's own erased region in it;
    a mixup blends two erased images."""
    images = [np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 40, np.uint8)]
    params = dict(partner=[1, 0], kind=[2, 1], weight=[1.0, 0.25], box=[[0, 0, 8, 4], [0, 0, 0, 0]], mirror=[0, 0],
                  erase=[[0, 4, 2, 8], [6, 0, 8, 2]], erase_seed=[3, 4])
    out0, out1 = run_fused(images, params, dtype=types.FLOAT, output_layout="HWC", erase_before=True, device=backend)
    np.testing.assert_allclose(out0[6:8, 0:2], 0.0)        # the partner's region, pasted with its box
    np.testing.assert_allclose(out0[0:2, 4:8], 0.0)        # its own region, outside the box
    np.testing.assert_allclose(out0[2:6, 0:4], 40.0)       # the partner's pixels
    np.testing.assert_allclose(out1[6:8, 0:2], 0.25 * 0.0 + 0.75 * 200.0, atol=1e-4)  # own region blended
    np.testing.assert_allclose(out1[0:2, 4:8], 0.25 * 40.0 + 0.75 * 0.0, atol=1e-4)  # partner's region blended


@pytest.mark.parametrize("backend", BACKENDS)
def test_grey_and_colour_images_in_one_batch(backend):
    """Each sample keeps its own channel count; mixing partners of different channel counts is refused."""
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (9, 7, c)).astype(np.uint8) for c in (1, 3, 3, 1)]
    params = dict(partner=[0, 2, 1, 3], kind=[0, 1, 1, 0], weight=[1.0, 0.3, 0.7, 1.0], box=[[0, 0, 0, 0]] * 4,
                  mirror=[1, 0, 1, 0])
    outs = run_fused(images, params, size=[5, 6], dtype=types.FLOAT, output_layout="CHW", device=backend)
    refs = reference(images, size=(5, 6), **params)
    for o, r in zip(outs, refs):
        assert o.shape == (r.shape[2], 5, 6)
        np.testing.assert_allclose(o.transpose(1, 2, 0), r, atol=2e-4)
    with pytest.raises(RuntimeError, match="are mixed but have 1 and 3 channels"):
        run_fused(images, dict(params, partner=[1, 0, 2, 3], kind=[1, 1, 0, 0]), size=[5, 6], device=backend)


def test_pixel_noise_is_standard_normal_and_seed_dependent():
    images = [np.zeros((64, 64, 3), np.uint8)] * 2
    params = dict(erase=[[0, 0, 64, 64]] * 2, erase_seed=[1, 2])
    a, b = run_fused(images, params, erase_mode=2, output_layout="HWC", dtype=types.FLOAT)
    assert stats.kstest(a.reshape(-1), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]) < 0.05


CONFIGS = [
    MixConfig(num_classes=10),
    MixConfig(num_classes=10, mode="pair", prob=0.7, switch_prob=0.3, label_smoothing=0.0),
    MixConfig(num_classes=10, mode="elem", cutmix_minmax=(0.2, 0.8), correct_lam=False),
    MixConfig(num_classes=10, mode="elem", mixup_alpha=0.0, correct_lam=False, label_smoothing=0.2),
    MixConfig(num_classes=10, mode="batch", cutmix_alpha=0.0, prob=0.3),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("n", [1, 5, 8])
def test_native_mix_params_equal_the_numpy_twin(cfg, n):
    rng = np.random.default_rng(n)
    h, w = 23, 30
    batches = []
    for _ in range(6):
        batches.append(dict(labels=rng.integers(0, 10, n).astype(np.int32),
                            u=rng.random((n, NUM_UNIFORMS)).astype(np.float32),
                            lm=rng.beta(0.8, 0.8, n).astype(np.float32), lc=rng.beta(1, 1, n).astype(np.float32),
                            on=rng.random(n) < 0.8))
    feeds = {k: [list(b[k]) for b in batches] for k in batches[0]}
    off = cfg.label_smoothing / cfg.num_classes

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        ins = [fn.external_source(source=feeds[k], batch=True, cycle=True) for k in ("labels", "u", "lm", "lc", "on")]
        return tuple(fn.dalimix.mix_params(*ins, mode=cfg.mode, prob=float32_threshold(cfg.prob),
                                     switch_prob=float32_threshold(cfg.switch_prob), mixup=cfg.mixup_on,
                                     cutmix=cfg.cutmix_on, cutmix_minmax=list(cfg.cutmix_minmax or []),
                                     correct_lam=cfg.correct_lam, on_value=1 - cfg.label_smoothing + off,
                                     off_value=off, num_classes=cfg.num_classes, size=[h, w]))

    p = pipe()
    p.build()
    for b in batches:
        partner, kind, lam, box, targets = (np.stack([np.asarray(t) for t in o]) for o in p.run())
        ref = mix_params(cfg, b["labels"], b["u"], b["lm"], b["lc"], b["on"], h, w)
        np.testing.assert_array_equal(partner, ref["partner"])
        np.testing.assert_array_equal(kind, ref["kind"])
        np.testing.assert_array_equal(lam, ref["lam"])
        cut = ref["kind"] == 2
        np.testing.assert_array_equal(box[cut], ref["box"][cut])
        np.testing.assert_array_equal(targets, ref["targets"])  # bit for bit


def test_float32_threshold_decides_like_float64():
    for p in (0.3, 0.1, 1 / 3, 0.5, 1.0, 0.0, 0.7):
        t = np.float32(float32_threshold(p))
        for u in (np.float32(p), np.nextafter(np.float32(p), np.float32(0)), np.nextafter(np.float32(p), np.float32(1))):
            assert (float(u) < p) == (u < t)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_native_erase_params_equal_the_numpy_twin(count):
    rng = np.random.default_rng(count)
    n, h, w = 16, 37, 29
    apply = rng.random(n) < 0.7
    u = rng.random((n, 1 + 4 * ATTEMPTS * count)).astype(np.float32)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        a = fn.external_source(source=lambda: list(apply), batch=True, dtype=types.BOOL)
        x = fn.external_source(source=lambda: list(u), batch=True)
        return fn.dalimix.erase_params(a, x, count=count, size=[h, w])

    p = pipe()
    p.build()
    (boxes,) = p.run()
    for i in range(n):
        got = np.asarray(boxes[i]).reshape(count, 4)
        ref = erase_boxes(u[i].astype(np.float64), h, w, count) if apply[i] else np.zeros((count, 4), np.int64)
        expect = np.stack([ref[:, 0], ref[:, 1], ref[:, 0] + ref[:, 2], ref[:, 1] + ref[:, 3]], axis=1)
        expect[ref[:, 2] == 0] = 0
        np.testing.assert_array_equal(got, expect)


def _mix_outputs(cfg, images, labels, layout):
    n = len(images)

    @pipeline_def(batch_size=n, num_threads=2, device_id=None, seed=42)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout=layout)
        y = fn.external_source(source=lambda: labels, batch=True)
        return mix(x, y, cfg, layout=layout)

    p = pipe()
    p.build()
    return [[np.asarray(t) for t in out] for out in p.run()]


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_native_and_stock_mix_give_identical_targets_and_pixels(mode, dtype):
    rng = np.random.default_rng(9)
    layout = "CHW"
    images = [rng.integers(0, 256, (3, 14, 18)).astype(dtype) for _ in range(8)]
    labels = [np.array(c, np.int32) for c in rng.integers(0, 6, 8)]
    cfg = MixConfig(num_classes=6, mode=mode)
    native_imgs, native_targets = _mix_outputs(cfg, images, labels, layout)
    with native.stock_operators():
        stock_imgs, stock_targets = _mix_outputs(cfg, images, labels, layout)
    np.testing.assert_array_equal(np.stack(native_targets), np.stack(stock_targets))
    for a, b in zip(native_imgs, stock_imgs):
        assert a.dtype == b.dtype == dtype
        # float: the same arithmetic; uint8: both round to nearest, ties may fall either way.
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), atol=1.0 if dtype == np.uint8 else 1e-4)


def test_mix_works_on_images_without_a_layout():
    images = [np.full((6, 8, 3), 10 * i, np.uint8) for i in range(4)]
    labels = [np.array(i, np.int32) for i in range(4)]
    for stock in (False, True):
        n = len(images)

        @pipeline_def(batch_size=n, num_threads=1, device_id=None, seed=1)
        def pipe():
            x = fn.external_source(source=lambda: images, batch=True)  # no layout given
            y = fn.external_source(source=lambda: labels, batch=True)
            return mix(x, y, MixConfig(num_classes=4), layout="HWC")

        if stock:
            with native.stock_operators():
                p = pipe()
        else:
            p = pipe()
        p.build()
        out, targets = p.run()
        assert np.asarray(out[0]).shape == (6, 8, 3) and np.asarray(targets[0]).shape == (4,)


def test_train_pipeline_native_and_stock_agree(tmp_path):
    from conftest import make_class_tree
    from dalimix.pipelines.imagenet import train_pipeline
    root = make_class_tree(tmp_path / "d", [4, 4, 4])
    cfg = MixConfig(num_classes=3, mode="elem")
    kw = dict(batch_size=6, crop=20, device="cpu", num_threads=1, seed=5, mix=cfg)

    def first_batch(spec):
        spec.pipeline.build()
        images, targets = spec.pipeline.run()
        return np.stack([np.asarray(t) for t in images]), np.stack([np.asarray(t) for t in targets])

    a_img, a_t = first_batch(train_pipeline(root, **kw))
    with native.stock_operators():
        b_img, b_t = first_batch(train_pipeline(root, **kw))
    np.testing.assert_array_equal(a_t, b_t)
    # The stock graph rounds the resized crop to uint8 before normalising: half a level apart at most.
    np.testing.assert_allclose(a_img, b_img, atol=0.51 / (255 * 0.224) + 1e-4)


def test_fallback_warns_once_and_names_the_cost():
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import dalimix.ops, dalimix.native as n; assert not n.available(); print(n.why_unavailable())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "DALIMIX_NATIVE": "0"})
    assert out.returncode == 0, out.stderr
    assert "DALIMIX_NATIVE=0" in out.stdout
    assert out.stderr.count("native operators unavailable") == 1 and "stock DALI operators" in out.stderr


def test_missing_compiler_falls_back_with_a_clear_message(tmp_path):
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import dalimix.ops, dalimix.native as n; print(n.available(), '|', n.why_unavailable())")
    env = {**__import__("os").environ, "CXX": "definitely-not-a-compiler", "PATH": str(tmp_path),
           "DALIMIX_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False |") and "no C++ compiler found" in out.stdout


# --- the same on the GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("in_name,in_layout,out_layout,out_name,antialias", MATRIX)
def test_gpu_fused_matches_numpy_reference(in_name, in_layout, out_layout, out_name, antialias):
    if not native.available("gpu", 0):
        pytest.skip(f"native CUDA operator unavailable: {native.why_unavailable('gpu')}")
    _matrix_case("gpu", in_name, in_layout, out_layout, out_name, antialias)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_gpu_erasing_equals_cpu(mode):
    if not native.available("gpu", 0):
        pytest.skip(f"native CUDA operator unavailable: {native.why_unavailable('gpu')}")
    rng = np.random.default_rng(mode)
    images = _batch(rng, 4, np.uint8)
    params = _params(rng, 4, (20, 18))
    params.update(erase=[[2, 3, 9, 12]] * 4, erase_seed=[1, 2, 3, 4])
    kw = dict(size=[20, 18], erase_mode=mode, mean=[100.0], std=[50.0], dtype=types.FLOAT16)
    cpu = run_fused(images, params, **kw)
    gpu = run_fused(images, params, device="gpu", **kw)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


PLANTED = '''
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from dalimix.native import build
build.SRC = Path({src!r})
tc = build.find_toolchain()
out = Path({out!r})
lib = build._build_cpu(tc, out, out)
from nvidia.dali import plugin_manager
plugin_manager.load_library(str(lib))
import numpy as np
from test_native import run_fused
from native_reference import fused as reference  # noqa: E402
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (10, 12, 3)).astype(np.uint8) for _ in range(2)]
params = dict(partner=[0, 1], kind=[0, 0], weight=[1.0, 1.0], box=[[0, 0, 0, 0]] * 2, mirror=[1, 1])
outs = run_fused(images, params, device="gpu_emulated", size=[10, 12], output_layout="HWC")
refs = reference(images, size=(10, 12), **params)
print("MISMATCH" if any(np.abs(o - r).max() > 1e-3 for o, r in zip(outs, refs)) else "MATCH")
'''


@pytest.mark.slow
def test_a_planted_indexing_bug_in_the_kernel_fails_the_emulated_tests(tmp_path):
    """The emulator runs the kernel's own per-pixel code: the flip written `ow - x` must not match the reference."""
    import shutil

    from dalimix.native import build

    src = tmp_path / "src"
    shutil.copytree(build.SRC, src)
    pixel = src / "fused_pixel.h"
    text = pixel.read_text()
    assert "p.mirror ? s.ow - 1 - ox : ox" in text
    pixel.write_text(text.replace("p.mirror ? s.ow - 1 - ox : ox", "p.mirror ? s.ow - ox : ox"))
    (tmp_path / "out").mkdir()
    code = PLANTED.format(tests=str(Path(__file__).parent), src=str(src), out=str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "DALIMIX_NATIVE": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("MISMATCH")
