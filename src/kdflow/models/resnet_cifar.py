"""CIFAR-style ResNets (He et al. 2016) as used by the distillation literature."""

from __future__ import annotations

from torch import Tensor, nn

from kdflow.models import MODELS
from kdflow.models._net import Net


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet_cifar(depth: int, filters: list[int], num_classes: int, in_channels: int) -> Net:
    """depth = 6n + 2; ``filters`` = [stem, stage1, stage2, stage3]."""
    n = (depth - 2) // 6
    stem = nn.Sequential(
        nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(filters[0]),
        nn.ReLU(),
    )
    stages, cin = [], filters[0]
    for i, cout in enumerate(filters[1:]):
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return Net(stem, stages, cin, num_classes)


for _name, _depth, _filters in [
    ("resnet20", 20, [16, 16, 32, 64]),
    ("resnet56", 56, [16, 16, 32, 64]),
    ("resnet8x4", 8, [32, 64, 128, 256]),
    ("resnet32x4", 32, [32, 64, 128, 256]),
]:

    def _builder(num_classes: int, in_channels: int, _d=_depth, _f=_filters, **_) -> Net:
        return resnet_cifar(_d, _f, num_classes, in_channels)

    MODELS.register(_name)(_builder)
