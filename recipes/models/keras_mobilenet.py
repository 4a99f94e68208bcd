"""MobileNetV2 from keras.applications with random weights: a real architecture, small and offline.

Freshly initialised, its activations shrink layer by layer to ~1e-11 logits, which
would make any parity check pass. Setting each BatchNormalization's moving
statistics from one batch of seeded noise keeps the logits near unit scale.
"""

import keras
import numpy as np


def build(alpha: float = 0.35, size: int = 64, classes: int = 10, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)  # the same weights on every build
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=classes, classifier_activation=None)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # moving stats := this batch's stats
    model(np.random.default_rng(seed).uniform(-1, 1, (32, size, size, 3)).astype("float32"), training=True)
    for layer, m in zip(norms, momenta):
        layer.momentum = m
    return model
