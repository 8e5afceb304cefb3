"""PreAct ResNet-18 as the mixup, Manifold Mixup and CutMix papers trained it on CIFAR (He et al. 2016, v2).

A 3x3 stem without striding or pooling, four stages of two pre-activation basic blocks (BN-ReLU-conv twice,
identity shortcut or a 1x1 projection of the pre-activated input where the shape changes), global average
pooling and a linear classifier. Like the networks in the mixup and Manifold Mixup code (Zhang et al.'s
mixup-cifar10, Verma et al.'s manifold_mixup), the last stage feeds the pooling directly, without the final
BN-ReLU of He et al.'s ImageNet models. With `width=64` and 10 classes it has 11,171,146 parameters (11.17M,
the papers' figure). Stage outputs on a 32x32 input: `layer1` [64, 32, 32], `layer2` [128, 16, 16],
`layer3` [256, 8, 8], `layer4` [512, 4, 4].

`width` scales every stage (`width`, 2x, 4x, 8x channels): the CPU recipe of `dalimix.reproduce` trains a
narrow one. The children are named like torchvision's ResNets (`conv1`, `layer1`..`layer4`, `fc`), so
`dalimix.ManifoldMixup(model, layers=["layer1", "layer2"])` mixes where Verma et al. did.
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in He et al.'s pre-activation ResNets.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images: `blocks` basic blocks per stage, `width` stem channels."""

    def __init__(self, blocks: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 10,
                 width: int = 64) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"blocks must be four positive ints (blocks per stage), got {blocks!r}")
        self.width = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        planes = width
        stages = []
        for i, n in enumerate(blocks):
            out_planes = width * 2 ** i
            layers = [PreActBlock(planes, out_planes, stride=1 if i == 0 else 2)]
            layers += [PreActBlock(out_planes, out_planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.avgpool(out)
        return self.fc(out.flatten(1))


def preact_resnet18(num_classes: int = 10, width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 (two blocks per stage); `width=64` is the papers' network (11.17M parameters)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=width)
