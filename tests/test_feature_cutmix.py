"""Feature CutMix: `ManifoldMixup(..., mode="cutmix")` pastes a box of the partner's feature map.

Exact: the mixed map is the own map outside `last_box` and the partner's inside, in CHW and channels_last,
under autocast; the targets weigh by the pasted area; gradients go to the sample whose values were used.
Statistical: the target weights follow timm's CutMix (its own box rule and lam correction) by a KS test.
Compiled: torch.compile gives the eager result.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from dalimix import ManifoldMixup


class Probe(nn.Module):
    """Passes its input on and keeps it (the map the rest of the network sees)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x


def net(channels: int = 3, classes: int = 5, conv: bool = False) -> nn.Sequential:
    first = nn.Conv2d(channels, channels, 3, padding=1) if conv else nn.Identity()
    return nn.Sequential(OrderedDict(a=first, probe=Probe(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                     head=nn.Linear(channels, classes)))


def expected_map(own: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    y0, x0, y1, x1 = box
    out = own.clone()
    out[:, :, y0:y1, x0:x1] = own[perm][:, :, y0:y1, x0:x1]
    return out


def expected_targets(labels: torch.Tensor, perm: torch.Tensor, box, height: int, width: int, classes: int):
    y0, x0, y1, x1 = box
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    one_hot = F.one_hot(labels, classes).float()
    return lam, lam * one_hot + (1 - lam) * one_hot[perm]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("include_input", [False, True])
def test_mixed_map_and_targets_are_exact(channels_last, include_input):
    model = net()
    g = torch.Generator().manual_seed(3)
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["a"], include_input=include_input, mode="cutmix", generator=g)
    drawn, areas = set(), set()
    for step in range(40):
        x = torch.randn(6, 3, 11, 13)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 5, (6,))
        logits, targets = wrapped(x, y)
        box, perm = wrapped.last_box, wrapped.last_perm
        drawn.add(wrapped.last_layer)
        seen = model.probe.seen
        y0, x0, y1, x1 = box
        assert 0 <= y0 <= y1 <= 11 and 0 <= x0 <= x1 <= 13
        areas.add((y1 - y0) * (x1 - x0))
        assert torch.equal(seen, expected_map(x, perm, box))
        assert seen.is_contiguous(memory_format=torch.channels_last) == channels_last
        lam, want = expected_targets(y, perm, box, 11, 13, 5)
        assert wrapped.last_lam == lam
        torch.testing.assert_close(targets, want, rtol=0, atol=1e-6)
        assert torch.equal(logits, model.head(seen.mean((2, 3))))
    assert drawn == ({"input", "a"} if include_input else {"a"})
    assert len(areas) > 10  # boxes of many sizes


def test_under_autocast_the_map_keeps_its_dtype_and_the_paste_is_exact():
    torch.manual_seed(0)
    model = net(channels=4, conv=True)
    raw = {}
    model.a.register_forward_hook(lambda m, i, o: raw.__setitem__("a", o.detach().clone()))  # runs before the mix
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["a"], include_input=False, mode="cutmix")
    x = torch.randn(5, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(5):
            logits, targets = wrapped(x, y)
            seen = model.probe.seen
            assert seen.dtype == torch.bfloat16 and raw["a"].dtype == torch.bfloat16
            assert torch.equal(seen, expected_map(raw["a"], wrapped.last_perm, wrapped.last_box))
            assert targets.dtype == torch.float32
            torch.testing.assert_close(targets, expected_targets(y, wrapped.last_perm, wrapped.last_box, 8, 8, 5)[1])


def test_gradients_reach_the_sample_whose_values_were_pasted():
    model = net()
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["a"], include_input=False, mode="cutmix",
                            generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        x = torch.randn(7, 3, 9, 9, requires_grad=True)
        wrapped(x, torch.randint(0, 5, (7,)))
        weight = torch.randn(7, 3, 9, 9)
        (model.probe.seen * weight).sum().backward()
        y0, x0, y1, x1 = wrapped.last_box
        inverse = torch.argsort(wrapped.last_perm)
        want = weight.clone()
        want[:, :, y0:y1, x0:x1] = weight[inverse][:, :, y0:y1, x0:x1]
        torch.testing.assert_close(x.grad, want, rtol=0, atol=0)


def test_target_weights_follow_timms_cutmix():
    """lam ~ Beta(1, 1), box by timm's rule on an H x W map, lam corrected to the pasted area: the same
    distribution as timm's `cutmix_bbox_and_lam(correct_lam=True)` on that shape."""
    mixup = pytest.importorskip("timm.data.mixup")
    import numpy as np

    height, width, n = 7, 10, 3000
    wrapped = ManifoldMixup(net(), alpha=1.0, layers=["a"], include_input=False, mode="cutmix",
                            generator=torch.Generator().manual_seed(5))
    x, y = torch.randn(2, 3, height, width), torch.tensor([0, 1])
    ours = []
    for _ in range(n):
        wrapped(x, y)
        ours.append(wrapped.last_lam)
    np.random.seed(0)
    theirs = [mixup.cutmix_bbox_and_lam((2, 3, height, width), float(np.random.beta(1.0, 1.0)), correct_lam=True)[1]
              for _ in range(n)]
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
    # The pasted area is a whole number of feature-map cells: the weights are multiples of 1 / (H * W).
    cells = np.round((1 - np.asarray(ours)) * height * width)
    np.testing.assert_allclose((1 - np.asarray(ours)) * height * width, cells, atol=1e-9)


def test_cutmix_needs_spatial_maps_and_a_known_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        ManifoldMixup(net(), layers=["a"], mode="cutout")
    flat = nn.Sequential(OrderedDict(a=nn.Linear(4, 4), head=nn.Linear(4, 3)))
    wrapped = ManifoldMixup(flat, layers=["a"], include_input=False, mode="cutmix")
    with pytest.raises(ValueError, match=r"'a' gave shape \(2, 4\).*mode='mixup'"):
        wrapped(torch.randn(2, 4), torch.tensor([0, 1]))
    assert "mode='cutmix'" in repr(wrapped)


def test_eval_is_the_plain_model():
    model = net()
    wrapped = ManifoldMixup(model, layers=["a"], mode="cutmix").eval()
    x = torch.randn(3, 3, 6, 6)
    assert torch.equal(wrapped(x, torch.tensor([0, 1, 2])), model(x))


def test_torch_compile_matches_eager():
    """The box paste runs eagerly inside the compiled forward: the same maps and targets, one graph per layer."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(c1=nn.Conv2d(3, 4, 3, padding=1), act1=nn.ReLU(),
                                      c2=nn.Conv2d(4, 4, 3, padding=1), act2=nn.ReLU(),
                                      pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), head=nn.Linear(4, 5)))
    eager = ManifoldMixup(copy.deepcopy(model), layers=["act1", "act2"], mode="cutmix")
    compiled = torch.compile(ManifoldMixup(model, layers=["act1", "act2"], mode="cutmix"), backend="aot_eager")
    from torch._dynamo.utils import counters

    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    seen, graphs = set(), []
    for i in range(12):
        torch.manual_seed(i)
        logits, targets = compiled(x, y)
        graphs.append(counters["stats"]["unique_graphs"])
        torch.manual_seed(i)
        ref, ref_targets = eager(x, y)
        seen.add(eager.last_layer)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(targets, ref_targets)
        logits.sum().backward()
    assert seen == {"input", "act1", "act2"}
    assert graphs[-1] == graphs[5]  # no recompiling for new boxes once every layer has been drawn


def test_the_run_builder_wraps_with_the_mode_asked_for():
    """dalimix-train --manifold-mode cutmix and the reproduce method feature_cutmix reach the wrapper."""
    from dalimix.reproduce import METHODS
    from dalimix.reproduce.runs import run_config
    from dalimix.reproduce.recipes import RECIPES
    from dalimix.train.distributed import DistContext
    from dalimix.train.run import make_network

    cfg = run_config("/data", RECIPES["cpu"], METHODS["feature_cutmix"], 0, "/out", ["a", "b", "c"])
    assert cfg.manifold_mode == "cutmix" and cfg.manifold_alpha == 1.0
    _, model = make_network(cfg, DistContext(device=torch.device("cpu")))
    assert isinstance(model, ManifoldMixup) and model.mode == "cutmix"
    assert model.eligible_layers == ["input", "layer1", "layer2"]
    logits, targets = model.train()(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4, 3) and model.last_box is not None
