"""Tests for dalimix.ManifoldMixup and resnet_mix_layers, through the public API."""
from __future__ import annotations

import copy
import math
import os
import socket
from collections import Counter, OrderedDict

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from dalimix import ManifoldMixup, SoftTargetCrossEntropy, resnet_mix_layers

torchvision = pytest.importorskip("torchvision")


# -- helpers ---------------------------------------------------------------------------------------
def identity_model(names=("a", "b", "c")) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, nn.Identity()) for n in names))


def mlp() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(6, 8)), ("act1", nn.Tanh()),
        ("fc2", nn.Linear(8, 8)), ("act2", nn.Tanh()),
        ("head", nn.Linear(8, 3)),
    ]))


def resnet18(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes)


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 8, 3, padding=1)), ("act2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 5)),
    ]))


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def mixed(t: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    return lam * t + (1 - lam) * t[perm]


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


class Pair(nn.Module):
    def forward(self, x):
        return x, x


# -- what gets mixed --------------------------------------------------------------------------------
def test_identity_model_output_equals_mixed_targets():
    k, n = 5, 16
    torch.manual_seed(0)
    y = torch.randint(0, k, (n,))
    x = F.one_hot(y, k).float()
    wrapped = ManifoldMixup(identity_model(), alpha=1.0, layers=["a", "b", "c"], include_input=True)
    assert wrapped.eligible_layers == ["input", "a", "b", "c"]
    seen = set()
    for _ in range(40):
        logits, targets = wrapped(x, y)
        seen.add(wrapped.last_layer)
        assert targets.dtype == torch.float32 and targets.shape == (n, k)
        assert torch.equal(logits, targets)
        torch.testing.assert_close(targets, mixed(x, wrapped.last_lam, wrapped.last_perm))
        torch.testing.assert_close(targets.sum(1), torch.ones(n))
    assert seen == {"input", "a", "b", "c"}


def test_soft_targets_are_mixed_with_the_same_lam_and_perm():
    k, n = 4, 12
    torch.manual_seed(1)
    soft = torch.distributions.Dirichlet(torch.ones(k)).sample((n,))
    wrapped = ManifoldMixup(identity_model(("a",)), alpha=2.0, layers=["a"])
    for _ in range(10):
        logits, targets = wrapped(soft.clone(), soft)
        assert torch.equal(logits, targets)
        torch.testing.assert_close(targets, mixed(soft, wrapped.last_lam, wrapped.last_perm))


def test_mixes_exactly_the_drawn_layer_of_a_nonlinear_model():
    torch.manual_seed(0)
    model = mlp()
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["act1", "act2"])
    x = torch.randn(10, 6)
    y = torch.randint(0, 3, (10,))
    seen = set()
    for _ in range(20):
        logits, _ = wrapped(x, y)
        layer, lam, perm = wrapped.last_layer, wrapped.last_lam, wrapped.last_perm
        seen.add(layer)
        h = mixed(x, lam, perm) if layer == "input" else x
        for name, module in model.named_children():
            h = module(h)
            if name == layer:
                h = mixed(h, lam, perm)
        torch.testing.assert_close(logits, h)
        if 0.05 < lam < 0.95 and not torch.equal(perm, torch.arange(10)):
            assert not torch.allclose(logits, model(x))
    assert seen == {"input", "act1", "act2"}
    assert no_hooks(model)


def test_gradients_match_a_reference_mix():
    """The mix's backward (a gather by the inverse permutation) equals autograd's own."""
    torch.manual_seed(0)
    model = mlp()
    ref_model = copy.deepcopy(model)
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["act1", "act2"], include_input=False)
    x = torch.randn(10, 6)
    y = torch.randint(0, 3, (10,))
    for _ in range(6):
        model.zero_grad()
        ref_model.zero_grad()
        logits, targets = wrapped(x, y)
        weights = torch.randn_like(logits)
        (logits * weights).sum().backward()
        h = x
        for name, module in ref_model.named_children():
            h = module(h)
            if name == wrapped.last_layer:
                h = mixed(h, wrapped.last_lam, wrapped.last_perm)
        (h * weights).sum().backward()
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_label_smoothing_and_explicit_num_classes():
    wrapped = ManifoldMixup(identity_model(("a",)), layers=["a"], num_classes=5, label_smoothing=0.1)
    x = torch.randn(8, 3)  # output width 3 is not the class count: num_classes decides
    y = torch.randint(0, 5, (8,))
    _, targets = wrapped(x, y)
    smooth = F.one_hot(y, 5).float() * 0.9 + 0.02
    torch.testing.assert_close(targets, mixed(smooth, wrapped.last_lam, wrapped.last_perm))
    assert targets.min() >= 0.02 - 1e-6
    torch.testing.assert_close(targets.sum(1), torch.ones(8))


# -- the draws --------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [2.0, 0.4])
def test_lam_follows_beta(alpha):
    torch.manual_seed(1234)
    wrapped = ManifoldMixup(identity_model(("a",)), alpha=alpha, layers=["a"])
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    lams = []
    for _ in range(400):
        wrapped(x, y)
        lams.append(wrapped.last_lam)
    assert all(0.0 <= v <= 1.0 for v in lams)
    assert stats.kstest(lams, "beta", args=(alpha, alpha)).pvalue > 1e-3
    # The test has power: a clearly different Beta is rejected.
    assert stats.kstest(lams, "beta", args=(4 * alpha, 4 * alpha)).pvalue < 1e-3


def test_every_eligible_layer_is_drawn_uniformly():
    torch.manual_seed(7)
    wrapped = ManifoldMixup(identity_model(), layers=["a", "b", "c"])
    x, y = torch.randn(2, 3), torch.randint(0, 3, (2,))
    counts = Counter()
    for _ in range(800):
        wrapped(x, y)
        counts[wrapped.last_layer] += 1
    assert set(counts) == set(wrapped.eligible_layers)
    assert stats.chisquare([counts[name] for name in wrapped.eligible_layers]).pvalue > 1e-3


def test_include_input_false_never_mixes_the_input():
    torch.manual_seed(0)
    wrapped = ManifoldMixup(identity_model(), layers=["b", "c"], include_input=False)
    assert wrapped.eligible_layers == ["b", "c"]
    x, y = torch.randn(2, 3), torch.randint(0, 3, (2,))
    seen = set()
    for _ in range(50):
        wrapped(x, y)
        seen.add(wrapped.last_layer)
    assert seen == {"b", "c"}


def test_draws_are_reproducible_with_manual_seed_and_generator():
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))

    def draws(wrapped, seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        out = []
        for _ in range(5):
            _, t = wrapped(x, y)
            out.append((wrapped.last_layer, wrapped.last_lam, wrapped.last_perm.tolist(), t))
        return out

    wrapped = ManifoldMixup(identity_model(), layers=["a", "b", "c"])
    first, second = draws(wrapped, 3), draws(wrapped, 3)
    assert [d[:3] for d in first] == [d[:3] for d in second]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(first, second))
    assert [d[:3] for d in draws(wrapped, 4)] != [d[:3] for d in first]

    def with_generator(global_seed):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(99)
        return [d[:3] for d in draws(ManifoldMixup(identity_model(), layers=["a", "b", "c"], generator=g))]

    assert with_generator(0) == with_generator(1)  # the generator, not the global seed, decides


# -- eval / no targets ------------------------------------------------------------------------------
def test_eval_mode_is_the_plain_model_bit_for_bit():
    model = resnet18()
    wrapped = ManifoldMixup(model)
    assert wrapped.eligible_layers == ["input", "layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    wrapped.eval()
    assert not model.training
    expected = model(x)
    assert torch.equal(wrapped(x), expected)
    assert torch.equal(wrapped(x, y), expected)  # eval ignores targets: logits only
    wrapped.train()
    assert torch.equal(wrapped(x), model(x))  # train mode without targets: no mixing either
    assert no_hooks(model)


def test_wrapper_mode_decides_even_when_the_inner_model_is_in_eval_mode():
    # Train mode around a model left in eval (frozen batch-norm statistics): still a (logits, targets) pair,
    # never bare logits that `logits, targets = wrapped(x, y)` would silently unpack row by row.
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 3)), ("bn", nn.BatchNorm1d(3))]))
    wrapped = ManifoldMixup(model, alpha=1.0, layers=["fc"], include_input=False,
                            generator=torch.Generator().manual_seed(1))
    wrapped.train()
    model.eval()
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    out = wrapped(x, y)
    assert isinstance(out, tuple) and len(out) == 2
    logits, targets = out
    lam, perm = wrapped.last_lam, wrapped.last_perm
    h = model.fc(x)
    assert torch.allclose(logits, model.bn(mixed(h, lam, perm)))  # the model ran in its own (eval) mode
    assert torch.allclose(targets, mixed(F.one_hot(y, 3).float(), lam, perm))
    assert not model.training and torch.equal(model.bn.running_mean, torch.zeros(3))  # stats untouched
    wrapped.eval()  # and the other way round: an eval wrapper is the plain model, whatever it was given
    model.train()
    assert torch.equal(wrapped(x, y), model(x))
    assert no_hooks(model)


# -- training ---------------------------------------------------------------------------------------
def test_resnet18_trains_and_gradients_reach_the_stem():
    model = resnet18()
    wrapped = ManifoldMixup(model, alpha=2.0, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9)
    loss_fn = SoftTargetCrossEntropy()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    before = model.conv1.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        logits, targets = wrapped(x, y)
        loss = loss_fn(logits, targets)
        assert torch.isfinite(loss)
        loss.backward()
        assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
        opt.step()
    assert not torch.equal(model.conv1.weight, before)
    assert no_hooks(model)


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3", "layer4"])
def test_gradients_reach_the_stem_from_every_stage(layer):
    model = resnet18()
    wrapped = ManifoldMixup(model, layers=[layer], include_input=False)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, targets = wrapped(x, y)
    assert wrapped.last_layer == layer
    SoftTargetCrossEntropy()(logits, targets).backward()
    assert model.conv1.weight.grad.abs().sum() > 0


def test_autocast_bf16_mixes_in_the_layer_dtype():
    model = resnet18()
    wrapped = ManifoldMixup(model, layers=["layer2"], include_input=False)
    seen = {}
    model.layer2.register_forward_hook(lambda m, a, out: seen.__setitem__("raw", out.detach()))
    model.layer3.register_forward_pre_hook(lambda m, args: seen.__setitem__("mixed", args[0].detach()))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, targets = wrapped(x, y)
        loss = SoftTargetCrossEntropy()(logits, targets)
    assert seen["raw"].dtype == torch.bfloat16 and seen["mixed"].dtype == torch.bfloat16
    raw, lam, perm = seen["raw"], wrapped.last_lam, wrapped.last_perm
    torch.testing.assert_close(seen["mixed"].float(), mixed(raw.float(), lam, perm), atol=0.02, rtol=0.02)
    assert logits.dtype in (torch.bfloat16, torch.float32)
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layers,include_input,probe", [([], True, "conv1"), (["layer1"], False, "layer2")])
def test_channels_last_is_preserved(layers, include_input, probe):
    model = resnet18().to(memory_format=torch.channels_last)
    wrapped = ManifoldMixup(model, layers=layers, include_input=include_input)
    formats = []
    model.get_submodule(probe).register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    torch.manual_seed(5)
    logits, _ = wrapped(x, y)
    assert formats == [True]
    # Same numbers as with a contiguous input and model.
    plain = ManifoldMixup(copy.deepcopy(model).to(memory_format=torch.contiguous_format), layers=layers,
                          include_input=include_input)
    torch.manual_seed(5)
    ref, _ = plain(x.contiguous(), y)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    logits.sum().backward()
    ref.sum().backward()
    grad, ref_grad = model.conv1.weight.grad, plain.model.conv1.weight.grad
    torch.testing.assert_close(grad, ref_grad, atol=1e-3 * ref_grad.abs().max().item(), rtol=1e-3)


# -- failure modes ----------------------------------------------------------------------------------
def test_hooks_are_removed_when_forward_raises():
    model = nn.Sequential(OrderedDict([("a", nn.Linear(3, 3)), ("boom", Boom()), ("b", nn.Linear(3, 2))]))
    wrapped = ManifoldMixup(model, layers=["a"], include_input=False)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(RuntimeError, match="boom"):
        wrapped(x, y)
    assert no_hooks(model)
    model.boom.armed = False
    logits, _ = wrapped(x, y)
    assert logits.shape == (4, 2) and no_hooks(model)


def test_tuple_returning_layer_raises_naming_it():
    model = nn.Sequential(OrderedDict([("a", nn.Linear(3, 3)), ("pair", Pair())]))
    wrapped = ManifoldMixup(model, layers=["pair"], include_input=False)
    with pytest.raises(TypeError, match=r"'pair'.*tuple"):
        wrapped(torch.randn(4, 3), torch.randint(0, 3, (4,)))
    assert no_hooks(model)


def test_layer_without_batch_first_output_raises():
    class SeqFirst(nn.Module):
        def forward(self, x):
            return x.transpose(0, 1)

    model = nn.Sequential(OrderedDict([("t", SeqFirst())]))
    wrapped = ManifoldMixup(model, layers=["t"], include_input=False)
    with pytest.raises(ValueError, match="'t'.*batch"):
        wrapped(torch.randn(4, 3), torch.randint(0, 3, (4,)))
    assert no_hooks(model)


def test_layer_not_called_raises():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    model = Skips()
    wrapped = ManifoldMixup(model, layers=["unused"], include_input=False)
    with pytest.raises(RuntimeError, match="'unused' was not called"):
        wrapped(torch.randn(4, 3), torch.randint(0, 3, (4,)))
    assert no_hooks(model)


def test_unknown_layer_raises_naming_it_and_listing_valid_names():
    with pytest.raises(ValueError, match=r"'layr1'.*layer1"):
        ManifoldMixup(resnet18(), layers=["layer1", "layr1"])


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        ManifoldMixup(identity_model(), alpha=alpha, layers=["a"])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="nothing to mix"):
        ManifoldMixup(identity_model(), layers=[], include_input=False)
    with pytest.raises(ValueError, match="twice"):
        ManifoldMixup(identity_model(), layers=["a", "a"])
    with pytest.raises(TypeError, match="layers"):
        ManifoldMixup(identity_model(), layers="a")
    with pytest.raises(ValueError, match="label_smoothing"):
        ManifoldMixup(identity_model(), layers=["a"], label_smoothing=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        ManifoldMixup(identity_model(), layers=["a"], num_classes=0)


def test_bad_targets_raise_naming_targets():
    wrapped = ManifoldMixup(identity_model(), layers=["a"])
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="targets"):
        wrapped(x, torch.randint(0, 3, (5,)))
    with pytest.raises(ValueError, match="targets"):
        wrapped(x, torch.rand(4, 7))  # 7 classes, 3 logits
    with pytest.raises(TypeError, match="targets"):
        wrapped(x, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="x has dtype"):
        ManifoldMixup(identity_model(), layers=[])(torch.ones(4, 3, dtype=torch.uint8), torch.zeros(4).long())
    no_logits = ManifoldMixup(nn.Sequential(OrderedDict([("a", nn.Identity()), ("f", nn.Flatten(0))])), layers=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        no_logits(x, torch.randint(0, 3, (4,)))


def test_deepcopy_gives_an_independent_wrapper():
    wrapped = ManifoldMixup(mlp(), layers=["act1"], include_input=False)
    twin = copy.deepcopy(wrapped)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    torch.manual_seed(0)
    a, _ = wrapped(x, y)
    torch.manual_seed(0)
    b, _ = twin(x, y)
    torch.testing.assert_close(a, b)
    assert no_hooks(wrapped.model) and no_hooks(twin.model)


# -- default layers ---------------------------------------------------------------------------------
def test_resnet_mix_layers_finds_stages():
    assert resnet_mix_layers(resnet18()) == ["layer1", "layer2", "layer3", "layer4"]

    class TimmLike(nn.Module):
        def __init__(self, container: str, cls=nn.Sequential) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            # Each stage has its own `blocks`: the outer container must win (breadth first).
            stage = lambda: nn.Sequential(OrderedDict([("blocks", nn.Sequential(nn.Identity(), nn.Identity()))]))
            setattr(self, container, cls([stage(), stage(), stage()]) if cls is nn.ModuleList
                    else cls(stage(), stage(), stage()))
            self.head = nn.Linear(4, 2)

    assert resnet_mix_layers(TimmLike("stages")) == ["stages.0", "stages.1", "stages.2"]
    assert resnet_mix_layers(TimmLike("blocks", nn.ModuleList)) == ["blocks.0", "blocks.1", "blocks.2"]
    assert resnet_mix_layers(TimmLike("layers")) == ["layers.0", "layers.1", "layers.2"]

    holder = nn.Module()
    holder.module = resnet18()
    assert resnet_mix_layers(holder) == ["module.layer1", "module.layer2", "module.layer3", "module.layer4"]

    with pytest.raises(ValueError, match=r"layers=\[\.\.\.\]"):
        resnet_mix_layers(mlp())
    with pytest.raises(ValueError, match="layers="):
        ManifoldMixup(mlp())


# -- torch.compile ----------------------------------------------------------------------------------
def _compare_compiled(compiled_wrapper, eager_wrapper, steps: int = 14):
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    seen = set()
    for i in range(steps):
        torch.manual_seed(i)
        logits, targets = compiled_wrapper(x, y)
        torch.manual_seed(i)
        ref_logits, ref_targets = eager_wrapper(x, y)
        seen.add(eager_wrapper.last_layer)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(targets, ref_targets)
        logits.sum().backward()
    return seen


@pytest.mark.parametrize("where", ["wrapper", "inner"])
def test_torch_compile_matches_eager(where):
    """Compiled runs mix the drawn layer (not a stale one) and do not recompile for each new lam."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlp()
    eager = ManifoldMixup(copy.deepcopy(model), layers=["act1", "act2"])
    if where == "wrapper":
        compiled = torch.compile(ManifoldMixup(model, layers=["act1", "act2"]), backend="aot_eager")
    else:
        compiled = ManifoldMixup(torch.compile(model, backend="aot_eager"), layers=["_orig_mod.act1", "_orig_mod.act2"])
    seen = _compare_compiled(compiled, eager)
    assert seen == {"input", "act1", "act2"}


@pytest.mark.slow
def test_torch_compile_inductor_trains_a_cnn():
    """The default inductor backend (C++ codegen on CPU): about 30 s on 2 cores, hence slow."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _small_cnn()
    eager = ManifoldMixup(copy.deepcopy(model), layers=["act1", "act2"])
    compiled = torch.compile(ManifoldMixup(model, layers=["act1", "act2"]))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    seen = set()
    for i in range(8):
        torch.manual_seed(i)
        logits, targets = compiled(x, y)
        torch.manual_seed(i)
        ref, ref_targets = eager(x, y)
        seen.add(eager.last_layer)
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(targets, ref_targets)
        SoftTargetCrossEntropy()(logits, targets).backward()
    assert seen == {"input", "act1", "act2"}
    assert model.conv1.weight.grad.abs().sum() > 0


# -- DistributedDataParallel --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial weights (DDP also broadcasts rank 0's)
        model = _small_cnn()
        wrapped = DDP(ManifoldMixup(model, layers=["act1", "act2"]))
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        loss_fn = SoftTargetCrossEntropy()
        torch.manual_seed(100 + rank)  # each rank its own data and draws
        draws = []
        for _ in range(2):
            x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
            opt.zero_grad()
            logits, targets = wrapped(x, y)
            loss_fn(logits, targets).backward()
            opt.step()
            draws.append((wrapped.module.last_layer, wrapped.module.last_lam))
        torch.save({"state": model.state_dict(), "draws": draws}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_on_cpu(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    torch.manual_seed(0)
    initial = _small_cnn().state_dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)  # raises if a rank fails
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
        assert not torch.equal(value, initial[key]), f"{key} did not train"
    assert r0["draws"] != r1["draws"]  # the draws are local to each rank
    assert all(0.0 <= lam <= 1.0 and math.isfinite(lam) for _, lam in r0["draws"] + r1["draws"])
