"""Manifold Mixup (Verma et al. 2019) as a model wrapper.

Mixup interpolates pairs of training examples and their targets. Manifold Mixup does the same to the
*hidden representations*: at every training step one layer is drawn (the input counts as a layer), its
output is replaced by ``lam * h + (1 - lam) * h[perm]`` for a random permutation of the batch, and the
targets are mixed with the same ``lam`` and ``perm``. The rest of the network runs on the mixed
representation, which flattens class representations and smooths decision boundaries.

With ``mode="cutmix"`` the drawn layer's feature map instead gets a box from the partner sample's map (the
CutMix paper's "Feature CutMix", Yun et al. 2019, Table 3): the box follows in-loader CutMix's rule (timm's)
on the map's H x W, and the targets weigh by the pasted area exactly.

The wrapper touches nothing at rest: a forward hook is attached to the drawn layer for one forward pass
only and is removed in a ``finally`` block (under torch.compile, inactive hooks stay instead, see
:class:`ManifoldMixup`), so evaluation, or a call without targets, is exactly the wrapped model.
"""
from __future__ import annotations

import difflib
import math
import re
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalimix import adapters
from dalimix.ops.mix_params import U_CX, U_CY, NUM_UNIFORMS, cutmix_boxes

__all__ = ["ManifoldMixup", "resnet_mix_layers"]

INPUT = "input"
"""Name under which the network input appears in :attr:`ManifoldMixup.eligible_layers`."""

MODES = ("mixup", "cutmix")

_STAGE_RE = re.compile(r"layer(\d+)$")
_STAGE_CONTAINERS = ("stages", "blocks", "layers")


def resnet_mix_layers(model: nn.Module) -> list[str]:
    """Default mixing layers for ResNet-like models: the outputs of the residual stages.

    * torchvision / timm ResNets (children ``layer1`` ... ``layer4``): ``["layer1", ..., "layer4"]``;
    * timm-style models with a ``stages``, ``blocks`` or ``layers`` container (ConvNeXt, RegNet,
      EfficientNet, ViT, Swin ...): one entry per child, e.g. ``["stages.0", ..., "stages.3"]``.

    The shallowest module that matches wins, so a model wrapped in another module (``model.module``)
    still resolves (names come out prefixed, ``"module.layer1"``). Verma et al. mixed at the input and the
    first two stages of their ResNets; pass ``resnet_mix_layers(model)[:2]`` to reproduce that.

    Raises:
        ValueError: no residual stages could be found (pass ``layers=[...]`` explicitly then).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"resnet_mix_layers: model must be an nn.Module, got {type(model).__name__}")
    # Breadth first: the shallowest match is the network's own stage list, not a stage's inner blocks.
    modules = sorted(model.named_modules(), key=lambda item: 0 if item[0] == "" else item[0].count(".") + 1)
    for name, module in modules:
        prefix = f"{name}." if name else ""
        children = dict(module.named_children())
        stages = sorted(
            ((int(m.group(1)), child) for child in children if (m := _STAGE_RE.match(child))),
        )
        if stages:
            return [prefix + child for _, child in stages]
        for container in _STAGE_CONTAINERS:
            sub = children.get(container)
            if isinstance(sub, (nn.Sequential, nn.ModuleList)) and len(sub) > 0:
                return [f"{prefix}{container}.{child}" for child, _ in sub.named_children()]
    top = [n for n, _ in model.named_children()][:10]
    raise ValueError(
        f"resnet_mix_layers: found no residual stages in {type(model).__name__} (looked for children named "
        f"layer1, layer2, ... or a non-empty {'/'.join(_STAGE_CONTAINERS)} container); pass layers=[...] "
        f"to ManifoldMixup explicitly (top-level modules: {top})"
    )


class ManifoldMixup(nn.Module):
    """Wrap ``model`` so that training steps apply Manifold Mixup at a randomly drawn layer.

    Usage::

        wrapped = ManifoldMixup(model, alpha=2.0, layers=["layer1", "layer2"])
        logits, targets = wrapped(images, labels)   # train mode, labels int [N] or soft [N, K]
        loss = SoftTargetCrossEntropy()(logits, targets)
        ...
        wrapped.eval(); logits = wrapped(images)    # exactly model(images)

    Each training call draws one of :attr:`eligible_layers` uniformly (``"input"`` first when
    ``include_input``), ``lam ~ Beta(alpha, alpha)`` and a permutation ``perm`` of the batch. The drawn
    layer's output ``h`` becomes ``lam * h + (1 - lam) * h[perm]`` (in ``h``'s dtype and memory format, so
    autocast and channels_last are kept), and the targets (int labels are one-hot encoded first, then
    label smoothed if asked) are mixed the same way. With ``mode="cutmix"`` the drawn layer's output must be
    a ``[N, C, H, W]`` map (either memory format): a box of sides ``int(H * sqrt(1 - lam))`` and
    ``int(W * sqrt(1 - lam))`` around a uniform centre, clipped (in-loader CutMix's rule), is copied from
    ``h[perm]`` into ``h``, and the targets weigh by the pasted area: ``1 - box area / (H * W)`` for the own
    label. The box is kept in :attr:`last_box` (``(y0, x0, y1, x1)`` on the mixed map). The call returns ``(logits, mixed_targets)`` with
    ``mixed_targets`` float32 ``[N, num_classes]``. In eval mode, or when ``targets`` is None, the call is
    exactly ``model(x)`` and returns only the logits. The wrapper's mode decides, not the wrapped model's.

    Randomness comes from torch (``generator`` when given, else the global CPU generator), so
    ``torch.manual_seed`` makes the draws reproducible. The last draw is kept in :attr:`last_layer`,
    :attr:`last_lam` (the own target's weight) and :attr:`last_perm` for logging and tests. The wrapper has no state of its own:
    save ``wrapped.model.state_dict()`` for checkpoints that load into the plain model.

    Distributed training: wrap the model first, then DDP, i.e. ``DDP(ManifoldMixup(model))`` (pass
    ``device_ids`` as usual), so that DDP sees the whole mixed forward and reduces gradients of every
    step. The draw (layer, lam, perm) is local to each rank: ranks mix different layers with different
    coefficients, and ``perm`` permutes only the rank's own batch. Every parameter still takes part in
    each step, so ``find_unused_parameters`` is not needed.

    torch.compile: both ``torch.compile(wrapped)`` and ``ManifoldMixup(torch.compile(model), ...)`` (layer
    names then start with ``_orig_mod.``) work. Compiled graphs ignore hooks added after compilation, so
    when compilation is involved the wrapper instead keeps one inactive hook on every eligible layer for
    good; the drawn layer is switched on per step and lam/perm enter the graph as tensors. Dynamo then
    builds one graph per eligible layer (keep ``len(layers)`` within ``torch._dynamo.config.recompile_limit``)
    and never recompiles for a new lam. The draw and the target mixing run eagerly (a graph break).

    Args:
        model: the network; its forward takes one batch-first tensor and returns logits ``[N, K]``.
        alpha: Beta concentration (> 0). 2.0 is the paper's default; small values (0.2-0.4) keep ``lam``
            near 0 or 1.
        layers: names from ``model.named_modules()`` (``"layer1"``, ``"blocks.3"``) whose outputs may be
            mixed; ``None`` uses :func:`resnet_mix_layers`. Each layer must be called once per forward and
            return a batch-first floating point tensor.
        include_input: also mix the input itself (plain mixup) as one of the choices.
        num_classes: width of the one-hot targets for int labels; default: the logits' width.
        label_smoothing: applied to int labels when they are one-hot encoded (soft targets are used as
            given, assumed already smoothed by the loader).
        generator: a CPU ``torch.Generator`` for the draws, instead of torch's global one.
        mode: ``"mixup"`` (interpolate the whole representation) or ``"cutmix"`` (paste a box of it).
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 2.0,
        layers: Optional[Sequence[str]] = None,
        include_input: bool = True,
        *,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        generator: Optional[torch.Generator] = None,
        mode: str = "mixup",
    ) -> None:
        super().__init__()
        _check_options(model, alpha, num_classes, label_smoothing, generator, mode)
        self.model = model
        self.alpha = float(alpha)
        self.include_input = bool(include_input)
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.generator = generator
        self.mode = mode

        if layers is None:
            layers = resnet_mix_layers(model)
        elif isinstance(layers, str):
            raise TypeError(f"ManifoldMixup: layers must be a list of module names, got the string {layers!r}")
        layers = _check_layers(model, list(layers))
        self.layers: list[str] = layers
        self.eligible_layers: list[str] = ([INPUT] if self.include_input else []) + layers
        if not self.eligible_layers:
            raise ValueError("ManifoldMixup: nothing to mix: layers is empty and include_input=False")

        self.last_layer: Optional[str] = None
        self.last_lam: Optional[float] = None
        self.last_perm: Optional[Tensor] = None
        self.last_box: Optional[tuple[int, int, int, int]] = None
        self._step = _Step()
        self._hooks = {name: _MixHook(self._step, name) for name in layers}
        self._static_handles: list[Any] = []

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mode={self.mode!r}, eligible_layers={self.eligible_layers}"

    # -- drawing -----------------------------------------------------------------------------------
    def _draw(self, batch_size: int) -> tuple[str, float, Tensor, Optional[tuple[float, float]]]:
        g = self.generator
        n = len(self.eligible_layers)
        index = int(torch.randint(n, (1,), generator=g)) if n > 1 else 0
        lam = adapters.beta_sample(self.alpha, g)
        if not math.isfinite(lam):  # both gamma draws underflowed (tiny alpha): the alpha -> 0 limit
            lam = float(torch.rand((), generator=g) < 0.5)
        perm = torch.randperm(batch_size, generator=g)
        centre = None
        if self.mode == "cutmix":  # the box centre, as fractions of the (not yet known) map's H and W
            uy, ux = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            centre = (uy, ux)
        return self.eligible_layers[index], min(max(lam, 0.0), 1.0), perm, centre

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor, targets: Optional[Tensor] = None) -> Any:
        """Train mode with targets: ``(logits, mixed_targets)``; otherwise exactly ``model(x)``.

        The wrapper's own mode decides: in train mode with targets it always mixes and returns a pair, even
        when the wrapped model was put in eval mode on its own (e.g. to freeze batch-norm statistics; the
        model then runs as such). ``wrapped.eval()`` (which also sets the model's mode) returns logits only.
        """
        if not self.training or targets is None:
            return self.model(x)
        # The bookkeeping runs eagerly (dynamo-disabled helpers): under torch.compile the drawn lam and
        # permutation reach the graph as tensors and never become guarded constants.
        x = self._begin_step(x, targets, torch.compiler.is_compiling())
        try:
            logits = self.model(x)
        finally:
            self._end_step()
        return logits, self._finish_step(targets, logits)

    @torch.compiler.disable
    def _begin_step(self, x: Tensor, targets: Tensor, compiling: bool) -> Tensor:
        """Validate, draw (layer, lam, perm), then mix the input or switch on the drawn layer's hook."""
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise TypeError(f"ManifoldMixup: x must be a batch-first tensor, got {type(x).__name__}")
        batch = x.shape[0]
        _check_targets(targets, batch, self.num_classes)
        layer, lam, perm, centre = self._draw(batch)
        self.last_layer, self.last_lam, self.last_perm, self.last_box = layer, lam, perm, None
        step = self._step
        step.calls, step.centre, step.box, step.box_lam = 0, centre, None, None
        perm_x = perm.to(x.device, non_blocking=True)
        if layer == INPUT:
            if not x.is_floating_point():
                raise TypeError(f"ManifoldMixup: cannot mix the input: x has dtype {x.dtype}; convert the "
                                f"images to a floating point dtype first (or pass include_input=False)")
            if centre is not None:
                x, self.last_box, self.last_lam = _paste_box(x, perm_x, lam, centre, INPUT)
                return x
            return _mix(x, perm_x, lam)
        step.active, step.lam, step.perm, step.batch = layer, lam, perm_x, batch
        if compiling or self._static_handles or _compiled_on_path(self.model, layer):
            # Compiled graphs do not see hooks added later: keep one (inactive) hook on every layer.
            step.lam_tensor = torch.tensor(lam, dtype=torch.float32)
            if not self._static_handles:
                self._static_handles = [self.model.get_submodule(name).register_forward_hook(self._hooks[name])
                                        for name in self.layers]
        else:
            step.handle = self.model.get_submodule(layer).register_forward_hook(self._hooks[layer])
        return x

    @torch.compiler.disable
    def _end_step(self) -> None:
        step = self._step
        if step.handle is not None:
            step.handle.remove()
            step.handle = None
        step.active = None
        step.perm = step.lam_tensor = None

    @torch.compiler.disable
    def _finish_step(self, targets: Tensor, logits: Any) -> Tensor:
        if self.last_layer != INPUT and self._step.calls == 0:
            raise RuntimeError(f"ManifoldMixup: layer {self.last_layer!r} was not called during the forward "
                               f"pass, so nothing was mixed; remove it from layers")
        if self.last_layer != INPUT and self._step.box is not None:
            self.last_box, self.last_lam = self._step.box, self._step.box_lam
        assert self.last_lam is not None and self.last_perm is not None
        return self._mix_targets(targets, logits, self.last_lam, self.last_perm)

    def _mix_targets(self, targets: Tensor, logits: Any, lam: float, perm: Tensor) -> Tensor:
        width = logits.shape[-1] if isinstance(logits, Tensor) and logits.dim() == 2 else None
        if targets.is_floating_point():
            t = targets.float()
            if width is not None and t.shape[1] != width:
                raise ValueError(f"ManifoldMixup: targets have {t.shape[1]} classes but the model returned "
                                 f"{width} logits per sample")
        else:
            num_classes = self.num_classes if self.num_classes is not None else width
            if num_classes is None:
                raise ValueError("ManifoldMixup: cannot infer num_classes from the model output (not an [N, K] "
                                 "tensor); pass num_classes=")
            t = F.one_hot(targets.long(), num_classes).float()
            if self.label_smoothing > 0:
                t = t.mul_(1.0 - self.label_smoothing).add_(self.label_smoothing / num_classes)
        return _mix(t, perm.to(t.device, non_blocking=True), lam)


def _check_options(model: nn.Module, alpha: float, num_classes: Optional[int], label_smoothing: float,
                   generator: Optional[torch.Generator], mode: str) -> None:
    """`ManifoldMixup`'s arguments other than the layers; errors name the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"ManifoldMixup: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"ManifoldMixup: alpha must be a finite number > 0, got alpha={alpha!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"ManifoldMixup: num_classes must be a positive int or None, got {num_classes!r}")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"ManifoldMixup: label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if mode not in MODES:
        raise ValueError(f"ManifoldMixup: mode must be one of {MODES}, got mode={mode!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"ManifoldMixup: generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"ManifoldMixup: generator must be a CPU torch.Generator, got one on {generator.device}")


def _check_layers(model: nn.Module, layers: list[str]) -> list[str]:
    """`layers`, each a distinct hidden module of `model`; errors name the layer."""
    named = dict(model.named_modules())
    seen: set[str] = set()
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"ManifoldMixup: layers must hold module names (str), got {name!r}")
        if name == "":
            raise ValueError("ManifoldMixup: layer '' is the whole model (its output is the logits); "
                             "name a hidden layer")
        if name not in named:
            close = difflib.get_close_matches(name, [n for n in named if n], n=5)
            top = [n for n, _ in model.named_children()][:10]
            hint = f"did you mean one of {close}? " if close else ""
            raise ValueError(f"ManifoldMixup: layer {name!r} is not a module of {type(model).__name__}; "
                             f"{hint}valid names come from model.named_modules(), e.g. {top}")
        if name in seen:
            raise ValueError(f"ManifoldMixup: layer {name!r} is listed twice in layers")
        seen.add(name)
    return layers


def _compiled_on_path(model: nn.Module, layer: str) -> bool:
    """Whether the root or a module between it and ``layer`` is compiled (torch.compile / .compile())."""
    module = model
    parts = layer.split(".")
    for i in range(len(parts)):
        if _is_compiled(module):
            return True
        module = module.get_submodule(parts[i])
    return False


def _is_compiled(module: nn.Module) -> bool:
    return hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None


class _Step:
    """The draw of the current training step, as the hooks need it (one per wrapper, reset each step)."""

    def __init__(self) -> None:
        self.active: Optional[str] = None  # the layer to mix in this forward; None outside training steps
        self.lam = 1.0
        self.lam_tensor: Optional[Tensor] = None
        self.perm: Optional[Tensor] = None
        self.batch = 0
        self.calls = 0
        self.handle: Any = None
        self.centre: Optional[tuple[float, float]] = None  # mode "cutmix": the box centre's (y, x) fractions
        self.box: Optional[tuple[int, int, int, int]] = None  # ... the box pasted and the own target's weight
        self.box_lam: Optional[float] = None


class _MixHook:
    """Forward hook that mixes its layer's output when that layer is the step's drawn one.

    Normally registered on the drawn layer for a single forward and removed after it. Objects rather
    than closures, so that ``copy.deepcopy(wrapped)`` gets hooks bound to its own step state.
    """

    def __init__(self, step: _Step, layer: str) -> None:
        self.step = step
        self.layer = layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        step = self.step
        if step.active != self.layer:
            return None
        step.calls += 1
        if step.calls > 1:  # a shared module called again in the same forward: mix once per step only
            return None
        if not isinstance(output, Tensor):
            raise TypeError(f"ManifoldMixup: layer {self.layer!r} returned {type(output).__name__}, not a "
                            f"tensor; only layers that return one batch-first tensor can be mixed")
        if not output.is_floating_point():
            raise TypeError(f"ManifoldMixup: layer {self.layer!r} returned a {output.dtype} tensor; cannot mix it")
        if output.dim() == 0 or output.shape[0] != step.batch:
            raise ValueError(f"ManifoldMixup: layer {self.layer!r} returned shape {tuple(output.shape)}, whose "
                             f"first dimension is not the batch ({step.batch}); it cannot be mixed")
        perm = step.perm
        assert perm is not None
        if perm.device != output.device:
            perm = perm.to(output.device, non_blocking=True)
        if step.centre is not None:
            return _paste_into_step(step, output, perm, self.layer)
        if torch.compiler.is_compiling():
            # lam as a tensor: a Python float would be baked into the graph and recompile every step.
            assert step.lam_tensor is not None
            weight = (1.0 - step.lam_tensor).to(device=output.device, dtype=output.dtype)
            return output.lerp(output[perm], weight)
        return _mix(output, perm, step.lam)


@torch.compiler.disable
def _paste_into_step(step: _Step, output: Tensor, perm: Tensor, layer: str) -> Tensor:
    """The hook's CutMix, eager under torch.compile (the box's corners would otherwise become graph constants)."""
    assert step.centre is not None
    mixed, step.box, step.box_lam = _paste_box(output, perm, step.lam, step.centre, layer)
    return mixed


def _paste_box(t: Tensor, perm: Tensor, lam: float, centre: tuple[float, float],
               layer: str) -> tuple[Tensor, tuple[int, int, int, int], float]:
    """``t`` with a box of ``t[perm]`` pasted in (in-loader CutMix's box rule on ``t``'s H x W), the box
    ``(y0, x0, y1, x1)`` and the own target's weight ``1 - area / (H * W)``."""
    if t.dim() != 4:
        raise ValueError(f"ManifoldMixup: mode='cutmix' pastes boxes into [N, C, H, W] maps, but {layer!r} gave "
                         f"shape {tuple(t.shape)}; mix that layer with mode='mixup' or choose convolutional layers")
    height, width = int(t.shape[-2]), int(t.shape[-1])
    u = np.zeros((1, NUM_UNIFORMS))
    u[0, U_CY], u[0, U_CX] = centre
    y0, x0, y1, x1 = (int(v) for v in cutmix_boxes(np.array([lam]), u, height, width, None)[0])
    area = (y1 - y0) * (x1 - x0)
    box = (y0, x0, y1, x1)
    if area == 0:
        return t, box, 1.0
    mixed = t.clone()  # keeps the memory format (channels_last stays channels_last)
    mixed[:, :, y0:y1, x0:x1] = t[:, :, y0:y1, x0:x1][perm]
    return mixed, box, 1.0 - area / (height * width)


def _check_targets(targets: Tensor, batch: int, num_classes: Optional[int]) -> None:
    """Validate targets: float soft targets [N, K] or int class indices [N]."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"ManifoldMixup: targets must be a tensor, got {type(targets).__name__}")
    if targets.is_floating_point():
        if targets.dim() != 2:
            raise ValueError(f"ManifoldMixup: soft targets must be [N, num_classes], got shape {tuple(targets.shape)}")
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"ManifoldMixup: targets have {targets.shape[1]} classes, num_classes={num_classes}")
    elif targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if targets.dim() != 1:
            raise ValueError(f"ManifoldMixup: int targets must be class indices [N], got shape {tuple(targets.shape)}")
    else:
        raise TypeError(f"ManifoldMixup: targets must be int class indices or float soft targets, got {targets.dtype}")
    if targets.shape[0] != batch:
        raise ValueError(f"ManifoldMixup: targets hold {targets.shape[0]} samples but x holds {batch}")


def _gather(t: Tensor, perm: Tensor) -> Tensor:
    """``t[perm]``: index_select (several times faster on CPU) where the layout allows, else indexing,
    which keeps channels_last and other dense layouts that index_select would make contiguous."""
    return t.index_select(0, perm) if t.is_contiguous() else t[perm]


def _mix(t: Tensor, perm: Tensor, lam: float) -> Tensor:
    """``lam * t + (1 - lam) * t[perm]`` in ``t``'s dtype and memory format (one gather, one lerp)."""
    if t.requires_grad and torch.is_grad_enabled():
        return _MixBatch.apply(t, perm, lam)
    return t.lerp(_gather(t, perm), 1.0 - lam)


class _MixBatch(torch.autograd.Function):
    """The mix with a cheap backward.

    Autograd's backward of ``t[perm]`` is an accumulating scatter (``index_put_``), several times slower
    than the forward on CPU. For a permutation the scatter is a gather by the inverse permutation, so
    ``grad_t = lam * g + (1 - lam) * g[argsort(perm)]``: the same gather + lerp as the forward.
    """

    @staticmethod
    def forward(ctx: Any, t: Tensor, perm: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(perm)
        ctx.lam = lam
        return t.lerp(_gather(t, perm), 1.0 - lam)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None]:  # type: ignore[override]
        (perm,) = ctx.saved_tensors
        return grad.lerp(_gather(grad, torch.argsort(perm)), 1.0 - ctx.lam), None, None
