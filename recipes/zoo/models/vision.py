"""Convolutional and hybrid vision models from torchvision and timm (random weights).

torchvision and timm come from <repo>/.zoo/site (see _site.py): their model
definitions are pure Python and load beside the CPU torch wheel there.
"""

from __future__ import annotations

import _site  # noqa: F401  (puts .zoo/site on sys.path, stubs torchvision's kernel registration)
import torch


def recalibrate_bn(model: torch.nn.Module, shape: tuple[int, ...], steps: int = 4, seed: int = 0) -> torch.nn.Module:
    """Batch-norm statistics measured on random inputs, as a trained network's are measured on its data.

    A freshly initialised network normalises by mean 0, variance 1, whatever its
    activations are: MobileNetV3's logits then come out near 1e-10, below what
    FP16 can represent, and quantization ranges mean nothing. The weights stay random.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the steps
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(shape, generator=gen))
    return model.eval()


def torchvision_model(arch: str = "resnet18", classes: int = 10, size: int = 64, seed: int = 0):
    """A torchvision classifier: image [batch, 3, H, W] -> logits."""
    import torchvision

    torch.manual_seed(seed)
    return recalibrate_bn(torchvision.models.get_model(arch, weights=None, num_classes=classes), (8, 3, size, size))


def video_model(arch: str = "r3d_18", classes: int = 10, frames: int = 8, size: int = 64, seed: int = 0):
    """A torchvision video classifier (3D convolutions): clip [batch, 3, T, H, W] -> logits."""
    import torchvision

    torch.manual_seed(seed)
    return recalibrate_bn(torchvision.models.get_model(arch, weights=None, num_classes=classes), (4, 3, frames, size, size))


def segmenter(arch: str = "deeplabv3_mobilenet_v3_large", classes: int = 5, size: int = 64, seed: int = 0):
    """A torchvision segmenter: image -> {"out": [batch, classes, H, W]}."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=classes, aux_loss=False)
    return recalibrate_bn(model, (8, 3, size, size))


def timm_model(arch: str = "efficientnet_lite0", classes: int = 10, size: int = 64, seed: int = 0):
    """A timm classifier: image -> logits."""
    import timm

    torch.manual_seed(seed)
    return recalibrate_bn(timm.create_model(arch, pretrained=False, num_classes=classes), (8, 3, size, size))
