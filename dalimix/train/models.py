"""Building the network a run trains, and finding it again inside its wrappers."""
from __future__ import annotations

import difflib
from typing import Any, Optional, Sequence

from torch import nn

from dalimix import validation as V

PREACT = "preact_resnet18"


def model_names() -> list[str]:
    """The architectures `build_model` knows: dalimix's PreAct ResNet-18 and torchvision's classifiers."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models) + [PREACT]


def check_arch(arch: str) -> None:
    """ArgumentError naming `arch` (with the nearest names) when `build_model` does not know it."""
    names = model_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise V.ArgumentError("arch", f"arch: unknown model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                   else "")
                              + f" ({PREACT} or any torchvision.models classification model)")


def build_model(arch: str, num_classes: int, *, width: int = 64, crop: int = 224) -> nn.Module:
    """`preact_resnet18` (dalimix's, at `width`) or any torchvision classification model by name, with
    `num_classes` outputs (ViTs are built for `crop`-pixel inputs)."""
    import torchvision

    from dalimix.reproduce.preact_resnet import preact_resnet18

    check_arch(arch)
    if arch == PREACT:
        return preact_resnet18(num_classes=num_classes, width=width)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = crop  # ViTs are built for one input size
    try:
        return torchvision.models.get_model(arch, **kwargs)
    except (ValueError, TypeError) as exc:
        raise V.ArgumentError("arch", f"arch: cannot build {arch} with {kwargs}: {exc}") from None


def with_manifold(net: nn.Module, *, alpha: float, layers: Optional[Sequence[str]], include_input: bool,
                  num_classes: int) -> nn.Module:
    """`net` in `ManifoldMixup` when `alpha` > 0, else `net`; errors name `manifold_layers` or `manifold_alpha`."""
    from dalimix.manifold import ManifoldMixup

    if alpha <= 0:
        return net
    try:
        return ManifoldMixup(net, alpha=alpha, layers=list(layers) if layers else None, include_input=include_input,
                             num_classes=num_classes)
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
