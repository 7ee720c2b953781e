"""torchvision classifiers (random init, never downloaded) adapted to 1- or 3-channel input."""

from __future__ import annotations

from torch import nn

from kdflow.models import MODELS
from kdflow.models._net import Net


def _tv_resnet(name: str, num_classes: int, in_channels: int, image_size: int) -> Net:
    import torchvision

    m = getattr(torchvision.models, name)(weights=None)
    if image_size < 96:  # small images: a 3x3 stride-1 stem and no max-pool, as for CIFAR
        conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        stem = nn.Sequential(conv, m.bn1, m.relu)
    else:
        conv = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        stem = nn.Sequential(conv, m.bn1, m.relu, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    return Net(stem, stages, m.fc.in_features, num_classes)


def _tv_mobilenet_v3_small(num_classes: int, in_channels: int, image_size: int) -> Net:
    import torchvision

    m = torchvision.models.mobilenet_v3_small(weights=None)
    f = m.features
    first = f[0][0]
    f[0][0] = nn.Conv2d(
        in_channels, first.out_channels, 3, 1 if image_size < 96 else 2, 1, bias=False
    )
    stages = [f[0:2], f[2:4], f[4:9], f[9:]]
    return Net(nn.Identity(), stages, f[-1].out_channels, num_classes)


for _name in ("resnet18", "resnet34", "resnet50"):

    def _builder(num_classes: int, in_channels: int, image_size: int, _n=_name, **_) -> Net:
        return _tv_resnet(_n, num_classes, in_channels, image_size)

    MODELS.register(f"tv_{_name}")(_builder)


@MODELS.register("tv_mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int, in_channels: int, image_size: int, **_) -> Net:
    return _tv_mobilenet_v3_small(num_classes, in_channels, image_size)
