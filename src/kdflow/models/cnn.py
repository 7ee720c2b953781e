"""A plain CNN whose size is set by width and depth: the default teacher and student."""

from __future__ import annotations

from torch import nn

from kdflow.models import MODELS
from kdflow.models._net import Net


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(num_classes: int, in_channels: int, image_size: int, width: int, depth: int, **_) -> Net:
    """``depth`` conv-BN-ReLU blocks, channels width * 2^i, 2x2 max-pool while the map allows."""
    stages, cin, size = [], in_channels, image_size
    for i in range(depth):
        cout = width * 2**i
        pool = size >= 2
        stages.append(_block(cin, cout, pool))
        cin, size = cout, size // 2 if pool else size
    return Net(nn.Identity(), stages, cin, num_classes)
