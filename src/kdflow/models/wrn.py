"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation blocks."""

from __future__ import annotations

from torch import Tensor, nn

from kdflow.models import MODELS
from kdflow.models._net import Net


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.short = (
            None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return y + (x if self.short is None else self.short(o))


def wrn(depth: int, widen: int, num_classes: int, in_channels: int) -> Net:
    n = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
    stages, cin = [], 16
    for i, cout in enumerate(widths):
        blocks: list[nn.Module] = []
        for j in range(n):
            blocks.append(WideBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
        if i == len(widths) - 1:  # the final BN-ReLU belongs to the last stage's features
            blocks += [nn.BatchNorm2d(cin), nn.ReLU()]
        stages.append(nn.Sequential(*blocks))
    return Net(stem, stages, cin, num_classes)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes: int, in_channels: int, **_) -> Net:
    return wrn(16, 2, num_classes, in_channels)


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes: int, in_channels: int, **_) -> Net:
    return wrn(40, 2, num_classes, in_channels)
