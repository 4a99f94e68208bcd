"""A small image classifier in plain torch.nn (no torchvision: it does not
import beside the CPU torch wheel)."""

import torch
from torch import nn


def build(channels: int = 16, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # deterministic weights: the same recipe builds the same model
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels * 2, 3, padding=1),
        nn.BatchNorm2d(channels * 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels * 2, classes),
    ).eval()
