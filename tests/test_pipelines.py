"""The ImageNet pipelines and DaliLoader on generated JPEG trees: shapes, labels, seeds, shards, errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import CLASS_COLOURS, decode_ids, make_class_tree, make_id_tree, write_solid
from dalimix import DaliLoader, MixConfig
from dalimix.data.dataset import DecodeError
from dalimix.pipelines.imagenet import train_pipeline, val_pipeline

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def train(root, **kw):
    args = dict(batch_size=4, crop=32, device="cpu", num_threads=2, seed=1)
    args.update(kw)
    return DaliLoader(train_pipeline(root, **args))


def val(root, **kw):
    args = dict(batch_size=4, crop=32, resize=36, device="cpu", num_threads=2)
    args.update(kw)
    return DaliLoader(val_pipeline(root, **args))


def colour_of(label):
    return torch.tensor(CLASS_COLOURS[label], dtype=torch.float32).view(3, 1, 1) / 255


def test_train_shapes_dtype_normalisation_and_labels(class_tree):
    loader = train(class_tree)
    assert len(loader) == (6 + 5 + 7 + 4) // 4
    batches = list(loader)
    assert len(batches) == len(loader)
    for images, labels in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.shape == (4,)
        assert set(labels.tolist()) <= {0, 1, 2, 4}  # class 3 is an empty folder that keeps its index
        pixels = images * STD + MEAN
        for img, lab in zip(pixels, labels):
            # the class colour survives decode + crop + resize + normalise (JPEG error aside)
            assert torch.allclose(img, colour_of(int(lab)).expand_as(img), atol=0.04)


def test_float16_and_channels_last(class_tree):
    images, _ = next(iter(train(class_tree, dtype="float16", channels_last=True)))
    assert images.dtype == torch.float16 and images.shape == (4, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)


def test_same_seed_same_batches_other_seed_other_batches(class_tree):
    def epochs(seed):
        loader = train(class_tree, seed=seed, mix=MixConfig(num_classes=5))
        return [torch.cat([x.flatten() for x, _ in loader]) for _ in range(2)]
    a, b, c = epochs(3), epochs(3), epochs(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # epochs differ
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("n,shards,batch", [(23, 3, 4), (10, 4, 3), (9, 2, 4), (5, 3, 2)])
def test_val_shards_cover_each_image_once_with_equal_lengths(tmp_path, n, shards, batch):
    root = make_id_tree(tmp_path / "ids", n)
    seen, lengths = [], []
    for s in range(shards):
        loader = val(root, batch_size=batch, shard_id=s, num_shards=shards, crop=32, resize=32)
        count = 0
        for images, labels in loader:
            count += 1
            assert images.shape[0] == labels.shape[0] <= batch
            seen += decode_ids(images)
        lengths.append(count)
        assert count == len(loader)
    assert len(set(lengths)) == 1
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("n,shards,batch", [(23, 3, 4), (9, 2, 2)])
def test_train_shards_equal_lengths_and_disjoint(tmp_path, n, shards, batch):
    root = make_id_tree(tmp_path / "ids", n)
    per_shard, lengths = [], []
    for s in range(shards):
        loader = train(root, batch_size=batch, shard_id=s, num_shards=shards, scale=(1.0, 1.0), ratio=(1, 1),
                       seed=5)
        ids = [i for images, _ in loader for i in decode_ids(images)]
        lengths.append(len(loader))
        per_shard.append(ids)
    assert len(set(lengths)) == 1 and lengths[0] == -(-n // shards) // batch
    flat = [i for ids in per_shard for i in ids]
    # padding to a multiple of num_shards may repeat at most shards-1 images in an epoch
    assert len(flat) - len(set(flat)) <= shards - 1
    assert set(flat) <= set(range(n))


def test_each_for_is_one_epoch_and_covers_the_data(tmp_path):
    root = make_id_tree(tmp_path / "ids", 12)
    loader = train(root, batch_size=4, scale=(1.0, 1.0), ratio=(1, 1))
    for _ in range(3):
        ids = [i for images, _ in loader for i in decode_ids(images)]
        assert sorted(ids) == list(range(12))
    assert loader.epoch == 3


def test_val_keeps_partial_last_batch(tmp_path):
    root = make_id_tree(tmp_path / "ids", 10)
    sizes = [x.shape[0] for x, _ in val(root, batch_size=4, crop=32, resize=32)]
    assert sizes == [4, 4, 2]


def test_file_list_mode(tmp_path):
    root = make_class_tree(tmp_path / "data", [3, 3])
    lines = [f"class_00/img_{j:03d}.jpg 1" for j in range(3)] + [f"class_01/img_{j:03d}.jpg 0" for j in range(3)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    loader = val(root, file_list=str(tmp_path / "list.txt"), batch_size=6)
    images, labels = next(iter(loader))
    pixels = images * STD + MEAN
    for img, lab in zip(pixels, labels):
        colour = colour_of(1 - int(lab))  # labels were swapped by the list
        assert torch.allclose(img.mean(dim=(1, 2)), colour.view(3), atol=0.04)


def test_bad_files_are_excluded_up_front_with_one_warning(tmp_path):
    root = make_class_tree(tmp_path / "data", [4, 4])
    good = (root / "class_00" / "img_000.jpg").read_bytes()
    (root / "class_00" / "empty.jpg").write_bytes(b"")
    (root / "class_01" / "notes.JPEG").write_bytes(b"this is not an image at all\n" * 10)
    (root / "class_01" / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning) as record:
        loader = val(root, batch_size=8)
    messages = [str(w.message) for w in record if "excluded" in str(w.message)]
    assert len(messages) == 1
    assert "3 bad file" in messages[0]
    for name in ("empty.jpg", "notes.JPEG", "cut.jpg"):
        assert name in messages[0]
    assert sum(x.shape[0] for x, _ in loader) == 8


def test_odd_but_valid_images_decode(tmp_path):
    root = tmp_path / "odd"
    write_solid(root / "a" / "png_named.JPEG", (200, 30, 30), fmt="PNG")
    write_solid(root / "a" / "cmyk.jpg", (200, 30, 30), mode="CMYK")
    write_solid(root / "b" / "gray.jpg", (90, 90, 90), mode="L")
    write_solid(root / "b" / "tiny.jpg", (90, 90, 90), size=(1, 1))
    write_solid(root / "b" / "huge.jpg", (90, 90, 90), size=(6000, 4000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be excluded
        loader = train(root, batch_size=5, crop=24)
    images, labels = next(iter(loader))
    assert images.shape == (5, 3, 24, 24) and torch.isfinite(images).all()
    vimages, vlabels = next(iter(val(root, batch_size=5, crop=24, resize=24)))
    pixels = (vimages * STD + MEAN).mean(dim=(2, 3))
    for px, lab in zip(pixels, vlabels):
        expect = torch.tensor([200, 30, 30] if lab == 0 else [90, 90, 90]) / 255
        assert torch.allclose(px, expect, atol=0.06)


def test_undecodable_file_error_names_the_file(tmp_path):
    root = make_class_tree(tmp_path / "data", [3, 3])
    # passes the up-front checks (JPEG start and end markers) but is garbage inside
    bad = root / "class_01" / "garbage.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3000) + b"\xff\xd9")
    loader = train(root, batch_size=2)
    with pytest.raises(DecodeError, match="garbage.jpg") as info:
        for _ in range(3):
            for _ in loader:
                pass
    assert str(bad) in info.value.files


def test_missing_folder_and_bad_arguments(tmp_path, class_tree):
    with pytest.raises(FileNotFoundError, match="nope"):
        train_pipeline(tmp_path / "nope", batch_size=2, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="class folders"):
        train_pipeline(tmp_path / "empty", batch_size=2, device="cpu")
    bad = [("batch_size", 0), ("batch_size", 2.5), ("crop", -1), ("num_threads", 0), ("num_shards", 0),
           ("shard_id", 7), ("device", "tpu"), ("scale", (0.5, 0.1)), ("scale", (0.5, 2.0)), ("ratio", (0, 1)),
           ("dtype", "int8"), ("seed", -3), ("re_prob", 2.0), ("re_mode", "blur"), ("re_count", 0),
           ("mix", {"mixup_alpha": 1}), ("flip_prob", 1.5), ("mix_off_epoch", -1)]
    for name, value in bad:
        kw = dict(batch_size=2, device="cpu")
        kw[name] = value
        with pytest.raises(ValueError, match=name if name != "shard_id" else "shard_id"):
            train_pipeline(class_tree, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        train_pipeline(class_tree, batch_size=1000, device="cpu")
    with pytest.raises(ValueError, match="crop"):
        val_pipeline(class_tree, batch_size=2, crop=300, resize=256, device="cpu")
    with pytest.raises(ValueError, match="num_classes"):
        train_pipeline(class_tree, batch_size=2, device="cpu", mix=MixConfig(num_classes=3))


def test_mix_in_train_pipeline_gives_soft_targets(class_tree):
    loader = train(class_tree, mix=MixConfig(num_classes=5, label_smoothing=0.1))
    for images, targets in loader:
        assert targets.dtype == torch.float32 and targets.shape == (4, 5)
        assert torch.allclose(targets.sum(1), torch.ones(4), atol=1e-5)
        assert torch.allclose(targets[:, 3], torch.full((4,), 0.02))  # the empty class: smoothing mass only


def test_mix_off_epoch_and_set_mix_switch_exactly_at_epoch_boundaries(class_tree):
    loader = train(class_tree, mix=MixConfig(num_classes=5, label_smoothing=0.0, mode="elem"),
                   mix_off_epoch=1, prefetch_queue_depth=3)
    loader.set_mix(True, from_epoch=3)

    def mixed_fraction():
        targets = torch.cat([t for _, t in loader])
        return (targets.max(dim=1).values < 1).float().mean().item()

    fractions = [mixed_fraction() for _ in range(4)]
    assert fractions[0] > 0.5 and fractions[3] > 0.5
    assert fractions[1] == 0.0 and fractions[2] == 0.0


def test_user_pipeline_with_named_outputs(tmp_path):
    from nvidia.dali import fn, pipeline_def, types
    root = make_class_tree(tmp_path / "data", [5, 5])

    @pipeline_def(batch_size=4, num_threads=2, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(root), name="Reader", pad_last_batch=True)
        images = fn.decoders.image(jpegs, device="cpu")
        images = fn.resize(images, resize_x=16, resize_y=16)
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT), labels

    loader = DaliLoader(pipe(), ["x", "y"], reader_name="Reader")
    assert len(loader) == 3
    for _ in range(2):
        sizes = [x.shape[0] for x, y in loader]
        assert sizes == [4, 4, 2]
    with pytest.raises(ValueError, match="output_map"):
        DaliLoader(pipe())


@pytest.mark.gpu
def test_gpu_pipeline_outputs_stay_on_gpu(class_tree):
    loader = DaliLoader(train_pipeline(class_tree, batch_size=4, crop=32, device="gpu", seed=1,
                                       mix=MixConfig(num_classes=5)))
    images, targets = next(iter(loader))
    assert images.is_cuda and targets.is_cuda and images.shape == (4, 3, 32, 32)
    vimages, vlabels = next(iter(DaliLoader(val_pipeline(class_tree, batch_size=4, crop=32, resize=36,
                                                         device="gpu"))))
    assert vimages.is_cuda and vlabels.dtype == torch.int64


@pytest.mark.gpu
@pytest.mark.parametrize("native_ops", [True, False], ids=["native", "stock"])
def test_gpu_mixing_switched_off_for_an_epoch_with_erasing_in_float16(class_tree, native_ops):
    from dalimix import native
    kw = dict(batch_size=4, crop=32, device="gpu", seed=3, mix=MixConfig(num_classes=5, mode="elem"),
              mix_off_epoch=1, re_prob=0.5, re_mode="pixel", re_count=3, dtype="float16")
    if native_ops:
        loader = DaliLoader(train_pipeline(class_tree, **kw))
    else:
        with native.stock_operators():
            loader = DaliLoader(train_pipeline(class_tree, **kw))
    epochs = [[(x, t) for x, t in loader] for _ in range(2)]
    for x, t in epochs[0] + epochs[1]:
        assert x.device == torch.device("cuda", 0) and t.device == x.device and x.dtype == torch.float16
        assert torch.isfinite(x).all()
    assert any((t.max(dim=1).values < 0.99).any() for _, t in epochs[0])  # epoch 0 mixes
    assert all((t.max(dim=1).values > 0.99).all() for _, t in epochs[1])  # epoch 1: empty mixing branches


def test_decoder_options_are_checked(class_tree):
    with pytest.raises(ValueError, match=r"decoder_options: unknown \['bogus'\]"):
        train_pipeline(class_tree, batch_size=2, device="cpu", decoder_options={"bogus": 1})
    with pytest.raises(ValueError, match="apply with device='gpu'"):
        train_pipeline(class_tree, batch_size=2, device="cpu", decoder_options={"hw_decoder_load": 0.5})


@pytest.mark.gpu
def test_gpu_decoder_options_reach_the_decoder(class_tree):
    loader = DaliLoader(train_pipeline(class_tree, batch_size=4, crop=32, device="gpu", seed=1,
                                       decoder_options={"hw_decoder_load": 0.0, "device_memory_padding": 1 << 20,
                                                        "preallocate_width_hint": 64, "preallocate_height_hint": 64}))
    images, _ = next(iter(loader))
    assert images.is_cuda and images.shape == (4, 3, 32, 32)


def _crop_windows(root, epochs, **kw):
    """(x0, y0, w, h) of each train sample's crop, read back from a ramp image (R = 4x + 2, G = 4y + 2)."""
    loader = train(root, batch_size=32, flip_prob=0, **kw)
    out = []
    for _ in range(epochs):
        for x, _ in loader:
            v = (x * STD + MEAN) * 255
            r, g = v[:, 0, 16, :], v[:, 1, :, 16]
            w, h = (r[:, 24] - r[:, 8]) / 2, (g[:, 24] - g[:, 8]) / 2  # 16 output pixels span w/2 input pixels
            x0 = (r[:, 16] - 2) / 4 - 16.5 * w / 32 + 0.5  # output pixel 16's centre sits at x0 + 16.5 w/32 - 0.5
            y0 = (g[:, 16] - 2) / 4 - 16.5 * h / 32 + 0.5
            out.append(torch.stack([x0, y0, w, h], 1))
    return torch.cat(out).round().numpy()  # torchvision's windows are whole pixels; so are DALI's


def test_train_crops_follow_torchvision_random_resized_crop_on_small_images(tmp_path):
    """On 32x32 images (CIFAR) the crop windows have torchvision's distribution: area, aspect, position."""
    from PIL import Image
    from scipy import stats
    from torchvision.transforms import RandomResizedCrop

    ramp = np.zeros((32, 32, 3), np.uint8)
    ramp[..., 0] = 4 * np.arange(32)[None, :] + 2
    ramp[..., 1] = 4 * np.arange(32)[:, None] + 2
    (tmp_path / "c").mkdir()
    for i in range(64):
        Image.fromarray(ramp).save(tmp_path / "c" / f"{i:02d}.png")
    ours = _crop_windows(str(tmp_path), epochs=24)
    torch.manual_seed(0)
    img = Image.fromarray(ramp)
    theirs = np.array([RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
                       for _ in range(len(ours))], dtype=np.float64)[:, [1, 0, 3, 2]]  # (i, j, h, w) -> x0 y0 w h

    def features(win):
        x0, y0, w, h = win.T
        return {"area": w * h, "log aspect": np.log(w / h), "x centre": x0 + w / 2, "y centre": y0 + h / 2,
                "x0": x0}

    a, b = features(ours), features(theirs)
    for name in a:
        assert stats.ks_2samp(a[name], b[name]).pvalue > 1e-3, name
    assert ((ours[:, 2] >= 1) & (ours[:, 0] >= 0) & (ours[:, 0] + ours[:, 2] <= 32)).all()
    # the comparison has the power to see a milder crop: scale (0.25, 1) is told apart
    milder = features(_crop_windows(str(tmp_path), epochs=12, scale=(0.25, 1.0)))
    assert stats.ks_2samp(milder["area"], b["area"]).pvalue < 1e-3
