"""Building the network a run trains, and finding it again inside its wrappers."""
from __future__ import annotations

import difflib
from typing import Any, Optional, Sequence

from torch import nn

from dalimix import validation as V

PREACT = "preact_resnet18"


TIMM = "timm/"  # --arch timm/NAME: a timm model (timm is the optional extra dalimix[timm])


def model_names() -> list[str]:
    """The architectures `build_model` knows: dalimix's PreAct ResNet-18 and torchvision's classifiers (timm's
    as `timm/NAME` where timm is installed, see `check_arch`)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models) + [PREACT]


def _timm():
    try:
        import timm
    except ImportError:
        raise V.ArgumentError("arch", "arch: timm models (timm/NAME) need timm: pip install 'dalimix[timm]'") \
            from None
    return timm


def check_arch(arch: str) -> None:
    """ArgumentError naming `arch` (with the nearest names) when `build_model` does not know it."""
    if arch.startswith(TIMM):
        name, names = arch[len(TIMM):], _timm().list_models()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            raise V.ArgumentError("arch", f"arch: timm has no model {name!r}"
                                  + (f"; did you mean {', '.join(TIMM + c for c in close)}?" if close else ""))
        return
    names = model_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise V.ArgumentError("arch", f"arch: unknown model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                   else "")
                              + f" ({PREACT}, any torchvision.models classification model, or timm/NAME)")


def build_model(arch: str, num_classes: int, *, width: int = 64, crop: int = 224,
                drop_path: float = 0.0) -> nn.Module:
    """`preact_resnet18` (dalimix's, at `width`), any torchvision classification model by name, or a timm
    model as `timm/NAME` (randomly initialised), with `num_classes` outputs (ViTs are built for `crop`-pixel
    inputs) and stochastic depth `drop_path` (timm's drop_path_rate, torchvision's stochastic_depth_prob)."""
    import torchvision

    from dalimix.reproduce.preact_resnet import preact_resnet18

    check_arch(arch)
    if not 0.0 <= drop_path < 1.0:
        raise V.ArgumentError("drop_path", f"drop_path must lie in [0, 1), got {drop_path}")
    if arch.startswith(TIMM):
        return _timm_model(arch[len(TIMM):], num_classes, crop, drop_path)
    if arch == PREACT:
        if drop_path:
            raise V.ArgumentError("drop_path", f"drop_path: {PREACT} has no stochastic depth")
        return preact_resnet18(num_classes=num_classes, width=width)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = crop  # ViTs are built for one input size
    if drop_path:
        kwargs["stochastic_depth_prob"] = drop_path
    try:
        return torchvision.models.get_model(arch, **kwargs)
    except (ValueError, TypeError) as exc:
        if drop_path and "stochastic_depth_prob" in str(exc):
            raise V.ArgumentError("drop_path", f"drop_path: torchvision's {arch} has no stochastic depth; take "
                                               f"timm's (--arch timm/{arch}) or leave drop_path at 0") from None
        raise V.ArgumentError("arch", f"arch: cannot build {arch} with {kwargs}: {exc}") from None


def _timm_model(name: str, num_classes: int, crop: int, drop_path: float) -> nn.Module:
    timm = _timm()
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, img_size=crop, **kwargs)  # transformers are built for one input size
    except TypeError:
        pass
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if drop_path and "drop_path_rate" in str(exc):
            raise V.ArgumentError("drop_path", f"drop_path: timm's {name} has no stochastic depth") from None
        raise V.ArgumentError("arch", f"arch: cannot build timm/{name} with {kwargs}: {exc}") from None


def with_manifold(net: nn.Module, *, alpha: float, layers: Optional[Sequence[str]], include_input: bool,
                  num_classes: int, mode: str = "mixup") -> nn.Module:
    """`net` in `ManifoldMixup` (`mode` mixup or cutmix) when `alpha` > 0, else `net`; errors name
    `manifold_layers` or `manifold_alpha`."""
    from dalimix.manifold import ManifoldMixup

    if alpha <= 0:
        return net
    try:
        return ManifoldMixup(net, alpha=alpha, layers=list(layers) if layers else None, include_input=include_input,
                             num_classes=num_classes, mode=mode)
    except (ValueError, TypeError) as exc:
        if not layers:
            names = [n for n, _ in net.named_modules() if n and n.count(".") <= 1][:12]
            raise V.ArgumentError("manifold_alpha", f"{type(net).__name__} has no default mixing layers (residual "
                                  f"stages); name some with manifold_layers, e.g. from {names}") from None
        raise V.ArgumentError("manifold_layers", str(exc)) from None


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP and/or ManifoldMixup (what checkpoints store and evaluation runs)."""
    from dalimix.manifold import ManifoldMixup

    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, ManifoldMixup):
            model = model.model
        else:
            return model
