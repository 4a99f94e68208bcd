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


def torchvision_model(arch: str = "resnet18", classes: int = 10, size: int = 64, seed: int = 0, **options):
    """A torchvision classifier: image [batch, 3, H, W] -> logits. options: the builder's own
    (inception_v3: aux_logits, init_weights)."""
    import torchvision

    torch.manual_seed(seed)
    return recalibrate_bn(torchvision.models.get_model(arch, weights=None, num_classes=classes, **options), (8, 3, size, size))


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


class LastFlow(torch.nn.Module):
    """RAFT returns a list with one flow field per refinement step; a user serves the last one."""

    def __init__(self, raft: torch.nn.Module, updates: int):
        super().__init__()
        self.raft, self.updates = raft, updates

    def forward(self, image1, image2):
        return self.raft(image1, image2, num_flow_updates=self.updates)[-1]


def optical_flow(arch: str = "raft_small", updates: int = 4, seed: int = 0):
    """torchvision RAFT: two frames [batch, 3, H, W] in [-1, 1] -> flow [batch, 2, H, W] after `updates`
    GRU refinement steps (a correlation pyramid, grid_sample lookups). H and W: multiples of 8, at least 128."""
    import torchvision

    torch.manual_seed(seed)
    return LastFlow(torchvision.models.get_model(arch, weights=None), updates).eval()


def _matrix_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS in plain tensor ops ("Fast NMS", YOLACT): a box is dropped when any higher-scoring box overlaps
    it by more than the threshold, whether or not that box is itself kept (greedy NMS keeps a few more).
    torchvision's own nms is a compiled op, which does not load beside the CPU torch wheel (_site.py)."""
    order = scores.argsort(descending=True)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    iou = (inter / (area[:, None] + area[None, :] - inter)).triu(diagonal=1)
    return order[~(iou > iou_threshold).any(dim=0)]


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's batched_nms (boxes of different classes offset apart, one NMS) without its
    `if boxes.numel() == 0` early return, a branch on a data-dependent size that torch.export refuses."""
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _matrix_nms(boxes + offsets[:, None], scores, iou_threshold)


class PaddedDetections(torch.nn.Module):
    """A torchvision detector's per-image list of {boxes, scores, labels} of varying length, as a user
    serves it: each image's detections padded to `keep` rows (labels -1 in the padding), stacked."""

    def __init__(self, detector: torch.nn.Module, keep: int):
        super().__init__()
        self.detector, self.keep = detector, keep

    def forward(self, images):
        boxes, scores, labels = [], [], []
        for found in self.detector(list(images.unbind(0))):
            pad = self.keep - found["scores"].shape[0]
            boxes.append(torch.nn.functional.pad(found["boxes"], (0, 0, 0, pad)))
            scores.append(torch.nn.functional.pad(found["scores"], (0, pad)))
            labels.append(torch.nn.functional.pad(found["labels"], (0, pad), value=-1))
        return torch.stack(boxes), torch.stack(scores), torch.stack(labels)


def detector(arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn", classes: int = 5, keep: int = 20, size: int = 128, seed: int = 0):
    """A torchvision detector (random weights, batch norms re-measured), NMS in tensor ops (see _matrix_nms):
    images [batch, 3, H, W] in [0, 1] -> boxes [batch, keep, 4], scores [batch, keep], labels [batch, keep]."""
    import torchvision
    from torchvision.ops import boxes as box_ops

    box_ops.nms, box_ops.batched_nms = _matrix_nms, _batched_nms  # the RPN and the box head call box_ops.batched_nms
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=classes, box_detections_per_img=keep)
    recalibrate_bn(model.backbone.body, (4, 3, 320, 320), seed=seed)  # the detector resizes images to 320 px
    # Random heads score every anchor and every box alike (RPN objectness from N(0, 0.01) weights) or
    # saturate (class scores all 1.0): the top-k and NMS choices are then ties. Spread both to a std of 3.
    heads = [model.rpn.head.cls_logits, model.roi_heads.box_predictor.cls_score]
    spread: dict = {h: [] for h in heads}
    hooks = [h.register_forward_hook(lambda mod, i, out: spread[mod].append(out.flatten())) for h in heads]
    with torch.no_grad():
        model.eval()(list(torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(seed)).unbind(0)))
        for h in heads:
            h.weight.mul_(3.0 / torch.cat(spread[h]).std())
    for hook in hooks:
        hook.remove()
    return PaddedDetections(model.eval(), keep).eval()
