"""Per-sample policies against the libraries they imitate, op by op and in distribution.

- parsing: a timm string gives the ops, layers, magnitudes, noise, probabilities and weights timm's own
  `rand_augment_transform` / `auto_augment_transform` give; torchvision's tables are torchvision's;
- every op of every policy, at many magnitudes, both signs and both interpolations, equals timm's
  `AugmentOp` or torchvision's `_apply_op` (and ColorJitter's functions) on the same image, pixel for pixel;
- the native parameter step equals its NumPy twin bit for bit, and the native apply (CPU, and the CUDA
  launch emulated on the host) equals the PIL reference pixel for pixel;
- in distribution, on the same crops: the share of images a policy leaves unchanged (two-proportion z-test,
  |z| < 4) and the distribution of the mean absolute change per image (two-sample KS, p > 1e-4) agree with
  timm's or torchvision's transform;
- in the train pipeline: targets stay exact under mixing and a seed replays a run.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from nvidia.dali import fn, pipeline_def
from scipy import stats

import dalimix.ops  # noqa: F401  (loads the plugin)
from dalimix import DaliLoader, MixConfig, native, train_pipeline
from dalimix.ops.policy import parse_color_jitter, parse_policy
from dalimix.ops.policy import program as P
from dalimix.ops.policy.apply import apply_program as reference
from dalimix.ops.policy.graph import program_args
from dalimix.ops.policy.spec import TIMM_RAND_3A_OPS, TIMM_RAND_INCREASING_OPS, TIMM_RAND_OPS, TV_OPS
from dalimix.validation import ArgumentError

timm_aa = pytest.importorskip("timm.data.auto_augment")
tv_aa = pytest.importorskip("torchvision.transforms.autoaugment")

needs_native = pytest.mark.skipif(not native.available("cpu"),
                                  reason=f"native operators unavailable: {native.why_unavailable('cpu')}")
MEAN_FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean
POLICIES = ["rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5-inc1", "rand-m6-mstd0.5-inc1", "rand-m9-n3-mstd101-p0.7",
            "rand-m8-tweights-mmax12", "rand-m9-n4-t3a", "3a", "ra", "ra-m12-n3", "ta_wide", "imagenet"]


def photo(seed: int, size: int = 48) -> np.ndarray:
    """A photo-like test image: smooth gradients, a few shapes and noise (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([120 + 100 * np.sin(3 * x + seed), 90 + 80 * y, 160 - 100 * x * y], axis=2)
    for _ in range(3):
        cy, cx, r = rng.integers(0, size, 3)
        img[(y * size - cy) ** 2 + (x * size - cx) ** 2 < (r / 3 + 2) ** 2] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def one_layer(op: int, params: list[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.zeros((1, P.NUM_PARAMS))
    p[0, :len(params)] = params
    return np.array([op], np.int32), p


# -- parsing ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5-inc1", "rand-m6-mstd0.5-inc1",
                                  "rand-m9-n3-mstd101", "rand-m9-mmax12-p0.3", "rand-m5-inc0", "rand-m9-tweights",
                                  "rand-m9-t3aw", "rand-m9-n2-t3a", "rand-m10-mstd0.7-inc"])
def test_timm_strings_mean_what_timm_makes_of_them(text):
    ours = parse_policy(text, mean=(0.485, 0.456, 0.406), interpolation="random")
    theirs = timm_aa.rand_augment_transform(text, {"img_mean": MEAN_FILL})
    assert ours.ops == tuple(op.name for op in theirs.ops) if theirs.choice_weights is None else True
    assert ours.num_layers == theirs.num_layers
    for op in theirs.ops:
        assert op.prob == ours.prob and op.magnitude == ours.magnitude
        assert op.magnitude_std == ours.magnitude_std and (op.magnitude_max or None) == ours.magnitude_max
        assert op.kwargs["fillcolor"] == ours.fill == MEAN_FILL
    if theirs.choice_weights is not None:
        assert dict(zip([o.name for o in theirs.ops], theirs.choice_weights)) == pytest.approx(
            dict(zip(ours.ops, ours.weights)))


def test_timm_3a_and_torchvision_tables_are_the_libraries_own():
    ours = parse_policy("3a")
    theirs = timm_aa.auto_augment_transform("3a", {"img_mean": MEAN_FILL})
    assert [[o.name for o in sp] for sp in theirs.policy] == [[o] for o in ours.ops]
    assert [sp[0].magnitude for sp in theirs.policy] == [5, 10, 10] and all(sp[0].prob == 1 for sp in theirs.policy)
    assert tuple(tv_aa.RandAugment()._augmentation_space(31, (224, 224))) == TV_OPS
    aa = tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy.IMAGENET)
    from dalimix.ops.policy.spec import TV_IMAGENET_POLICY
    assert tuple(tuple(step) for step in aa.policies) == TV_IMAGENET_POLICY
    for wide, bins, cls in ((False, 31, tv_aa.RandAugment), (True, 31, tv_aa.TrivialAugmentWide),
                            (False, 10, tv_aa.AutoAugment)):
        space = cls()._augmentation_space(bins) if wide else cls()._augmentation_space(bins, (64, 64))
        for name, (mags, signed) in space.items():
            ours, our_signed = P._tv_magnitudes(name, bins, 64, wide)
            assert our_signed == signed
            if mags.ndim > 0:
                np.testing.assert_allclose(ours, mags.numpy().astype(np.float32), rtol=1e-6, atol=1e-6)


def test_unknown_policies_and_bad_jitter_name_the_argument():
    for bad in ("rand-x9", "rand-m9-q3", "randaugment", "3a-q4", "ra-k2", "augmix-m3", "rand-m9.5"):
        with pytest.raises(ArgumentError, match="auto_augment") as err:
            parse_policy(bad)
        assert err.value.argument == "auto_augment" and "rand-m9-mstd0.5-inc1" in str(err.value)
    for bad in (-0.1, (0.4, 0.4), (0.4, 0.4, 0.4, 0.7), "0.4"):
        with pytest.raises(ArgumentError, match="color_jitter"):
            parse_color_jitter(bad)
    assert parse_color_jitter(0) is None and parse_policy(None) is None and parse_policy("") is None


# -- every op against the library itself ----------------------------------------------------------------------------
TIMM_NAMES = sorted(set(TIMM_RAND_OPS) | set(TIMM_RAND_INCREASING_OPS) | set(TIMM_RAND_3A_OPS) | {"PosterizeOriginal"})


@pytest.fixture
def timm_posterize_as_intended(monkeypatch):
    """Pillow 13 refuses 0 bits; timm means (and older Pillow gave) a black image. Patch timm's op to that."""
    original = timm_aa.posterize

    def posterize(img, bits, **kwargs):
        return Image.new(img.mode, img.size) if bits <= 0 else original(img, bits, **kwargs)

    monkeypatch.setitem(timm_aa.NAME_TO_OP, "Posterize", posterize)
    monkeypatch.setitem(timm_aa.NAME_TO_OP, "PosterizeIncreasing", posterize)
    monkeypatch.setitem(timm_aa.NAME_TO_OP, "PosterizeOriginal", posterize)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_every_timm_op_equals_timm(name, monkeypatch, timm_posterize_as_intended):
    img = photo(3)
    size = img.shape[0]
    for m in (0.0, 1.3, 2.5, 5.0, 7.7, 9.0, 10.0):
        for negate in (False, True):
            for interp, pil in ((1, Image.Resampling.BILINEAR), (2, Image.Resampling.BICUBIC)):
                u = 0.37
                monkeypatch.setattr(timm_aa, "_randomly_negate", lambda v: -v if negate else v)
                monkeypatch.setattr(timm_aa.random, "uniform", lambda a, b: a + (b - a) * u)
                op = timm_aa.AugmentOp(name, prob=1.0, magnitude=m, hparams={"img_mean": MEAN_FILL, "interpolation": pil})
                theirs = np.asarray(op(Image.fromarray(img)))
                code, params = P.timm_op(name, m, negate, interp, size, u)
                ours = reference(img, *one_layer(code, params), MEAN_FILL)
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} m={m} negate={negate} interp={interp}")


@pytest.mark.parametrize("name", list(TV_OPS) + ["Invert"])
def test_every_torchvision_op_equals_torchvision(name):
    from torchvision.transforms import InterpolationMode

    img = photo(5)
    size = img.shape[0]
    tables = [P._tv_magnitudes(name, 31, size, False)[0], P._tv_magnitudes(name, 31, size, True)[0],
              P._tv_magnitudes(name, 10, size, False)[0]]
    magnitudes = sorted({float(v) for t in tables for v in t})  # what torchvision's tables hold
    signed = P._tv_magnitudes(name, 31, size, False)[1]
    for magnitude in magnitudes:
        for m in ((magnitude, -magnitude) if signed else (magnitude,)):
            for interp, mode in ((1, InterpolationMode.BILINEAR), (2, InterpolationMode.BICUBIC)):
                theirs = np.asarray(tv_aa._apply_op(Image.fromarray(img), name, m, interpolation=mode, fill=None))
                ours = reference(img, *one_layer(*P.tv_op(name, m, interp, size)), (0, 0, 0))
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} {m} interp={interp}")


def test_colour_jitter_equals_torchvisions_functions():
    import torchvision.transforms.functional as F

    img = photo(7)
    pil = Image.fromarray(img)
    for f in (0.0, 0.6, 0.93, 1.0, 1.27, 1.4):
        for op, fn_ in ((P.BRIGHTNESS, F.adjust_brightness), (P.CONTRAST, F.adjust_contrast),
                        (P.COLOR, F.adjust_saturation)):
            np.testing.assert_array_equal(reference(img, *one_layer(op, [f]), (0, 0, 0)), np.asarray(fn_(pil, f)))
    for h in (-0.5, -0.3, -0.01, 0.0, 0.05, 0.21, 0.5):
        np.testing.assert_array_equal(reference(img, *one_layer(P.HUE, [h]), (0, 0, 0)),
                                      np.asarray(F.adjust_hue(pil, h)))


# -- native against the twin and the reference ------------------------------------------------------------------------
# Where apply_program runs: the CPU operator, the GPU launch emulated on the host (every CPU run), the GPU.
APPLY_BACKENDS = ["cpu", "gpu_emulated", pytest.param("gpu", marks=pytest.mark.gpu)]


def _apply_op(backend):
    if backend == "gpu":
        if not native.available("gpu", 0):
            pytest.skip(f"native CUDA operator unavailable: {native.why_unavailable('gpu', 0)}")
        return lambda im, ops, params, **kw: fn.dalimix.apply_program(im.gpu(), ops, params, device="gpu", **kw)
    return fn.dalimix.apply_program_gpu_emulated if backend == "gpu_emulated" else fn.dalimix.apply_program


def _as_arrays(batch):
    batch = batch.as_cpu() if hasattr(batch, "as_cpu") else batch
    return [np.asarray(batch[i]) for i in range(len(batch))]


def _native_run(policy, jitter, images, u, z, size, backend="cpu", out_size=None):
    n = len(images)
    fill = [float(v) for v in (policy.fill if policy is not None else (0, 0, 0))]
    apply = _apply_op(backend)
    out_size = out_size or size

    @pipeline_def(batch_size=n, num_threads=2, device_id=0 if backend == "gpu" else None)
    def pipe():
        uu = fn.external_source(source=lambda: u, batch=True)
        zz = fn.external_source(source=lambda: z, batch=True)
        im = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        ops, params = fn.dalimix.policy_program(uu, zz, **program_args(policy, jitter, out_size))
        return ops, params, apply(im, ops, params, size=[out_size, out_size], fill=fill)

    p = pipe()
    p.build()
    ops, params, out = p.run()
    return _as_arrays(ops), _as_arrays(params), _as_arrays(out)


@needs_native
@pytest.mark.parametrize("backend", APPLY_BACKENDS)
@pytest.mark.parametrize("text,jitter,size", [(t, None, 33) for t in POLICIES] +
                         [("3a", 0.3, 40), (None, (0.4, 0.4, 0.4, 0.1), 40), ("rand-m9-mstd0.5-inc1", 0.4, 24)])
def test_native_program_and_apply_equal_the_twin_and_pil(text, jitter, size, backend):
    policy = parse_policy(text, interpolation="random") if text else None
    jit = parse_color_jitter(jitter)
    layers = P.program_layers(policy, jit)
    rng = np.random.default_rng(abs(hash((text, jitter, size))) % 2 ** 32)
    n = 24
    u = [rng.random(layers * P.UNIFORMS_PER_LAYER).astype(np.float32) for _ in range(n)]
    z = [rng.standard_normal(layers).astype(np.float32) for _ in range(n)]
    images = [photo(int(rng.integers(1 << 30)), size) for _ in range(n)]
    ops, params, outs = _native_run(policy, jit, images, u, z, size, backend)
    fill = policy.fill if policy is not None else (0, 0, 0)
    for i in range(n):
        twin_ops, twin_params = P.make_program(policy, jit, u[i], z[i], size)
        np.testing.assert_array_equal(ops[i], twin_ops)
        np.testing.assert_array_equal(params[i], twin_params)  # bit for bit, NaNs included
        np.testing.assert_array_equal(outs[i], reference(images[i], twin_ops, twin_params, fill))


@needs_native
@pytest.mark.parametrize("backend", APPLY_BACKENDS)
def test_native_blur_and_geometry_over_their_ranges(backend):
    """Blur radii 0.1-8, rotations through the multiples of 90 degrees, shears and translations beyond the image."""
    size, n = 37, 16
    rng = np.random.default_rng(1)
    images = [photo(i, size) for i in range(n)]
    programs = [one_layer(P.BLUR, [r]) for r in np.linspace(0.1, 8.0, 6)]
    programs += [one_layer(P.AFFINE, [*P.rotate_matrix(a, size, size), i, a]) for a, i in
                 ((90.0, 1), (-90.0, 2), (180.0, 1), (270.0, 2), (45.0, 2), (359.5, 1))]
    programs += [one_layer(P.AFFINE, [1.0, 1.7, -20.0, 0.0, 1.0, 0.0, 2, math.nan]),
                 one_layer(P.AFFINE, [1.0, 0.0, 0.0, -0.4, 1.0, 60.0, 1, math.nan]),
                 one_layer(P.HUE, [-0.37]), one_layer(P.SHARPNESS, [-0.4])]
    ops, params = [p[0] for p in programs], [p[1] for p in programs]
    n = len(programs)

    apply = _apply_op(backend)

    @pipeline_def(batch_size=n, num_threads=2, device_id=0 if backend == "gpu" else None)
    def pipe():
        im = fn.external_source(source=lambda: images[:n], batch=True, layout="HWC")
        o = fn.external_source(source=lambda: ops, batch=True)
        p = fn.external_source(source=lambda: params, batch=True)
        return apply(im, o, p, size=[size, size], fill=[9.0, 200.0, 77.0])

    pipe_ = pipe()
    pipe_.build()
    (out,) = pipe_.run()
    out = _as_arrays(out)
    for i in range(n):
        np.testing.assert_array_equal(out[i], reference(images[i], ops[i], params[i], (9, 200, 77)),
                                      err_msg=f"program {i}: op {ops[i]} params {params[i]}")
    del rng


@needs_native
@pytest.mark.parametrize("backend", APPLY_BACKENDS)
@pytest.mark.parametrize("cubic", [False, True])
@pytest.mark.parametrize("antialias", [False, True])
def test_the_resize_to_the_crop_matches_the_numpy_reference(backend, cubic, antialias):
    """apply_program's resize of a random-resized crop to `size` (then its flip), before any layer: the fused
    operator's filters (triangle or Keys' cubic, widened with antialias), rounded to uint8."""
    import native_reference as R
    rng = np.random.default_rng(int(cubic) * 2 + int(antialias))
    size, n = 29, 8
    images = [rng.integers(0, 256, (int(rng.integers(9, 90)), int(rng.integers(9, 90)), 3), dtype=np.uint8)
              for _ in range(n)]
    mirror = [np.int32(i % 2) for i in range(n)]
    ops = [np.zeros(0, np.int32)] * n
    params = [np.zeros((0, P.NUM_PARAMS), np.float64)] * n
    apply = _apply_op(backend)

    @pipeline_def(batch_size=n, num_threads=2, device_id=0 if backend == "gpu" else None)
    def pipe():
        im = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        o = fn.external_source(source=lambda: ops, batch=True)
        p = fn.external_source(source=lambda: params, batch=True)
        m = fn.external_source(source=lambda: mirror, batch=True)
        return apply(im, o, p, size=[size, size], antialias=antialias, interp=2 if cubic else 1, mirror=m)

    pipe_ = pipe()
    pipe_.build()
    (out,) = pipe_.run()
    for i, got in enumerate(_as_arrays(out)):
        want = R.resample(images[i].astype(np.float64), size, size, antialias=antialias, cubic=cubic)
        want = np.clip(np.rint(want), 0, 255)
        want = want[:, ::-1] if mirror[i] else want
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        np.testing.assert_allclose(got.astype(np.float64), want, atol=1.0, err_msg=f"sample {i}")
        assert np.mean(got != want) < 0.01  # off by one only where float32 sums round the other way


# -- in distribution, against the libraries' transforms ------------------------------------------------------------------
def _crops(count: int, size: int) -> list[np.ndarray]:
    """Test crops: real photos where DALIMIX_REAL_DATA names a folder of JPEGs, else photo-like drawings."""
    root = os.environ.get("DALIMIX_REAL_DATA")
    if root:
        files = sorted(Path(root).rglob("*.JPEG")) + sorted(Path(root).rglob("*.jpg"))
        if files:
            rng = np.random.default_rng(0)
            picks = rng.choice(len(files), count, replace=len(files) < count)
            return [np.asarray(Image.open(files[k]).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                    for k in picks]
    return [photo(10_000 + i, size) for i in range(count)]


def _library_transform(text: str):
    if text.startswith("rand") or text.startswith("3a"):
        if text.startswith("rand"):
            return timm_aa.rand_augment_transform(text, {"img_mean": MEAN_FILL, "interpolation": Image.BICUBIC})
        return timm_aa.auto_augment_transform(text, {"img_mean": MEAN_FILL, "interpolation": Image.BICUBIC})
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode.BICUBIC
    return {"ra": tv_aa.RandAugment(interpolation=mode), "ta_wide": tv_aa.TrivialAugmentWide(interpolation=mode),
            "imagenet": tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy.IMAGENET, interpolation=mode)}[text]


def _change(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.abs(after.astype(np.int32) - before.astype(np.int32)).mean())


@needs_native
@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5-inc1", "3a", "ra", "ta_wide", "imagenet"])
def test_policies_change_images_as_their_libraries_do(text, timm_posterize_as_intended):
    n, size = 400, 48
    crops = _crops(n, size)
    random.seed(0)
    torch.manual_seed(0)
    transform = _library_transform(text)
    theirs = [_change(c, np.asarray(transform(Image.fromarray(c)))) for c in crops]
    policy = parse_policy(text, interpolation="bicubic")
    layers = P.program_layers(policy, None)
    rng = np.random.default_rng(1)
    u = [rng.random(layers * P.UNIFORMS_PER_LAYER).astype(np.float32) for _ in range(n)]
    z = [rng.standard_normal(layers).astype(np.float32) for _ in range(n)]
    _, _, outs = _native_run(policy, None, crops, u, z, size)
    ours = [_change(c, o) for c, o in zip(crops, outs)]
    a, b = np.array(ours) == 0, np.array(theirs) == 0
    pooled = (a.sum() + b.sum()) / (2 * n)
    z_score = (a.mean() - b.mean()) / math.sqrt(max(pooled * (1 - pooled) * 2 / n, 1e-12))
    assert abs(z_score) < 4, f"unchanged: ours {a.mean():.3f}, theirs {b.mean():.3f}"
    changed_a, changed_b = np.array(ours)[~a], np.array(theirs)[~b]
    assert stats.ks_2samp(changed_a, changed_b).pvalue > 1e-4, (np.median(changed_a), np.median(changed_b))


# -- in the train pipeline -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from conftest import make_class_tree

    return make_class_tree(tmp_path_factory.mktemp("policy") / "d", [6, 6, 6, 6])


def _train(root, **kw):
    kw = dict(dict(batch_size=8, crop=24, device="cpu", num_threads=2, seed=3), **kw)
    return DaliLoader(train_pipeline(root, **kw))


@pytest.mark.parametrize("text,jitter", [("rand-m9-mstd0.5-inc1", None), ("3a", 0.3), ("ta_wide", None)])
def test_a_policy_in_the_pipeline_replays_with_the_seed_and_keeps_cutmix_targets_exact(tree, text, jitter):
    cutmix = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, mode="elem")
    runs = []
    for _ in range(2):
        loader = _train(tree, mix=cutmix, auto_augment=text, color_jitter=jitter, interpolation="bicubic",
                        re_prob=0.5, re_mode="pixel", re_order="before_mix")
        runs.append([(x.clone(), t.clone()) for x, t in loader])
    for (x1, t1), (x2, t2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)
    for _, t in runs[0]:
        # Each target says how much of each class the image holds: an exact area share of 24 x 24 pixels.
        np.testing.assert_allclose(t.sum(dim=1).numpy(), 1.0, atol=1e-6)
        share = t.max(dim=1).values.numpy() * 24 * 24
        np.testing.assert_allclose(share, np.round(share), atol=1e-3)
    other = _train(tree, mix=cutmix, auto_augment=text, color_jitter=jitter, seed=4)
    assert not torch.equal(next(iter(other))[0], runs[0][0][0])


def test_a_policy_runs_with_stock_operators_too(tree):
    with native.stock_operators():
        loader = _train(tree, mix=MixConfig(), auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel",
                        re_order="before_mix")
    batches = [(x, t) for x, t in loader]
    assert len(batches) == 3 and all(x.shape == (8, 3, 24, 24) for x, _ in batches)
    assert "stock DALI operators" in loader.spec.settings and "rand-m9-mstd0.5-inc1" in loader.spec.settings


def test_pipeline_arguments_are_checked_by_name(tree):
    for kw, name in ((dict(auto_augment="rand-q1"), "auto_augment"), (dict(color_jitter=(1, 2)), "color_jitter"),
                     (dict(interpolation="lanczos"), "interpolation"), (dict(re_order="never"), "re_order")):
        with pytest.raises(ArgumentError) as err:
            train_pipeline(tree, batch_size=8, device="cpu", **kw)
        assert err.value.argument == name
