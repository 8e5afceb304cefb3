"""Tests for dalimix.SoftTargetCrossEntropy and BinarySoftTargetCrossEntropy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalimix import BinarySoftTargetCrossEntropy, SoftTargetCrossEntropy

N, K = 16, 7


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, K, generator=g) * 3
    y = torch.randint(0, K, (N,), generator=g)
    soft = torch.distributions.Dirichlet(torch.ones(K)).sample((N,))
    return x, y, soft


def manual_bce(x, t, weight=None, pos_weight=None):
    """-(pw * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x))) * w, elementwise."""
    pw = 1.0 if pos_weight is None else pos_weight
    loss = -(pw * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    return loss if weight is None else loss * weight


# -- SoftTargetCrossEntropy -------------------------------------------------------------------------
def test_soft_ce_equals_cross_entropy_for_one_hot_and_int_targets(data):
    x, y, _ = data
    loss = SoftTargetCrossEntropy()
    expected = F.cross_entropy(x, y)
    torch.testing.assert_close(loss(x, F.one_hot(y, K).float()), expected)
    torch.testing.assert_close(loss(x, y), expected)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_soft_ce_with_smoothed_targets_equals_cross_entropy_label_smoothing(data, eps):
    x, y, _ = data
    expected = F.cross_entropy(x, y, label_smoothing=eps)
    smoothed = F.one_hot(y, K).float() * (1 - eps) + eps / K
    torch.testing.assert_close(SoftTargetCrossEntropy()(x, smoothed), expected)
    torch.testing.assert_close(SoftTargetCrossEntropy(label_smoothing=eps)(x, y), expected)


def test_soft_ce_on_soft_targets_matches_definition_and_gradient(data):
    x, _, soft = data
    x = x.clone().requires_grad_(True)
    loss = SoftTargetCrossEntropy()(x, soft)
    torch.testing.assert_close(loss, (-(soft * torch.log_softmax(x, -1)).sum(-1)).mean())
    # Equals torch's own probability-target cross entropy.
    torch.testing.assert_close(loss, F.cross_entropy(x, soft))
    loss.backward()
    torch.testing.assert_close(x.grad, (torch.softmax(x, -1) - soft) / N)


def test_soft_ce_reductions(data):
    x, _, soft = data
    per_sample = SoftTargetCrossEntropy(reduction="none")(x, soft)
    assert per_sample.shape == (N,)
    torch.testing.assert_close(per_sample, F.cross_entropy(x, soft, reduction="none"))
    torch.testing.assert_close(SoftTargetCrossEntropy(reduction="sum")(x, soft), per_sample.sum())


def test_soft_ce_is_float32_under_autocast(data):
    x, _, soft = data
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SoftTargetCrossEntropy()(xb, soft)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(xb.float(), soft))


def test_soft_ce_errors_name_the_argument(data):
    x, y, soft = data
    with pytest.raises(ValueError, match="target"):
        SoftTargetCrossEntropy()(x, soft[:, :3])
    with pytest.raises(ValueError, match="target"):
        SoftTargetCrossEntropy()(x, y[:5])
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftTargetCrossEntropy(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        SoftTargetCrossEntropy(reduction="avg")


# -- BinarySoftTargetCrossEntropy -----------------------------------------------------------------
def test_bce_matches_manual_formula_on_soft_targets(data):
    x, _, soft = data
    expected = manual_bce(x, soft).mean()
    torch.testing.assert_close(BinarySoftTargetCrossEntropy()(x, soft), expected)
    torch.testing.assert_close(BinarySoftTargetCrossEntropy()(x, soft), F.binary_cross_entropy_with_logits(x, soft))


def test_bce_int_targets_with_smoothing(data):
    x, y, _ = data
    eps = 0.1
    t = torch.full((N, K), eps / K)
    t[torch.arange(N), y] = 1 - eps + eps / K
    torch.testing.assert_close(BinarySoftTargetCrossEntropy(label_smoothing=eps)(x, y), manual_bce(x, t).mean())
    torch.testing.assert_close(BinarySoftTargetCrossEntropy()(x, y), manual_bce(x, F.one_hot(y, K).float()).mean())


def test_bce_target_threshold_pos_weight_weight_and_reductions(data):
    x, _, soft = data
    thr = 0.2
    binary = (soft > thr).float()
    torch.testing.assert_close(BinarySoftTargetCrossEntropy(target_threshold=thr)(x, soft),
                               manual_bce(x, binary).mean())
    pw = torch.linspace(0.5, 3.0, K)
    w = torch.linspace(1.0, 2.0, K)
    loss = BinarySoftTargetCrossEntropy(weight=w, pos_weight=pw, reduction="none")(x, soft)
    assert loss.shape == (N, K)
    torch.testing.assert_close(loss, manual_bce(x, soft, weight=w, pos_weight=pw))
    torch.testing.assert_close(BinarySoftTargetCrossEntropy(pos_weight=2.0, reduction="sum")(x, soft),
                               manual_bce(x, soft, pos_weight=2.0).sum())
    torch.testing.assert_close(BinarySoftTargetCrossEntropy(sum_classes=True)(x, soft),
                               manual_bce(x, soft).sum(-1).mean())


def test_bce_is_float32_under_autocast_and_buffers_follow_the_module(data):
    x, _, soft = data
    loss_fn = BinarySoftTargetCrossEntropy(pos_weight=torch.full((K,), 2.0)).to(torch.float64)
    assert loss_fn.pos_weight.dtype == torch.float64  # a buffer: .to() moves it
    loss_fn = BinarySoftTargetCrossEntropy(pos_weight=torch.full((K,), 2.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(x.bfloat16(), soft)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, manual_bce(x.bfloat16().float(), soft, pos_weight=2.0).mean())
    assert "pos_weight" not in loss_fn.state_dict()


def test_bce_errors_name_the_argument(data):
    x, _, soft = data
    with pytest.raises(ValueError, match="target_threshold"):
        BinarySoftTargetCrossEntropy(target_threshold=1.5)
    with pytest.raises(ValueError, match="pos_weight"):
        BinarySoftTargetCrossEntropy(pos_weight=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        BinarySoftTargetCrossEntropy(reduction="batchmean")
    with pytest.raises(ValueError, match="target"):
        BinarySoftTargetCrossEntropy()(x, soft.T)


def test_bce_equals_timms_binary_cross_entropy_on_mixed_targets():
    """timm's own BinaryCrossEntropy (what ResNet Strikes Back trains with) on targets mixed by timm's Mixup,
    thresholded and not."""
    timm_loss = pytest.importorskip("timm.loss")
    from timm.data import Mixup
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8)
    labels = torch.randint(0, 10, (8,))
    _, mixed = Mixup(mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10)(x, labels)
    logits = torch.randn(8, 10)
    for thr in (None, 0.2):
        ours = BinarySoftTargetCrossEntropy(target_threshold=thr)(logits, mixed)
        theirs = timm_loss.BinaryCrossEntropy(smoothing=0.0, target_threshold=thr)(logits, mixed)
        torch.testing.assert_close(ours, theirs)
    ours = BinarySoftTargetCrossEntropy(label_smoothing=0.1)(logits, labels)
    theirs = timm_loss.BinaryCrossEntropy(smoothing=0.1)(logits, labels)
    torch.testing.assert_close(ours, theirs)
