"""A plain tf.Module: two inputs, a tf.function __call__, a dict of two outputs."""

import tensorflow as tf


class Scorer(tf.Module):
    def __init__(self, features: int, hidden: int, classes: int, seed: int):
        super().__init__()
        rng = tf.random.Generator.from_seed(seed)
        self.w1 = tf.Variable(rng.normal([features, hidden]) / features**0.5)
        self.b1 = tf.Variable(tf.zeros([hidden]))
        self.w2 = tf.Variable(rng.normal([hidden, classes]) / hidden**0.5)

    @tf.function
    def __call__(self, features, mask):
        h = tf.nn.gelu(tf.matmul(features * tf.cast(mask, tf.float32), self.w1) + self.b1, approximate=True)
        scores = tf.matmul(h, self.w2)
        return {"scores": scores, "norm": tf.norm(h, axis=-1)}


def build(features: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0) -> Scorer:
    return Scorer(features, hidden, classes, seed)
