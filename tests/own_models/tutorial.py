"""The PyTorch CIFAR-10 tutorial's network (widened), as a user would write it: no kdflow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TutorialNet(nn.Module):
    """Two 3x3 convolutions (64, 128 channels) with 2x2 max-pooling, then linear layers to
    ``hidden`` (512) and the classes, on 3x32x32 input."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, hidden: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(128 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
