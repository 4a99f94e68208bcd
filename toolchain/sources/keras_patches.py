"""Keras layers traced as an equivalent computation while mlpack traces the served function.

The reference stays the user's model run eagerly; only the traced graph (SavedModel, XLA,
tf2onnx) takes the patched call, and the parity gate compares the two. Each patch fixes a
Keras bug that makes a traced graph compute something else than the eager model.
"""

from __future__ import annotations

import contextlib

# What each patch records in the manifest (`export.rewrites`) when a traced call took it.
TIME_DISTRIBUTED = "keras TimeDistributed over a dynamic time axis -> one call on [batch*time, ...]"


@contextlib.contextmanager
def tracing(fired: set[str]):
    """Patch while tracing; the names of the patches a traced call took are added to `fired`.

    TimeDistributed: with the time axis unknown (a dynamic dim), Keras 3 (3.15) maps the inner
    layer over `arange(shape[0])` of the *untransposed* input, the batch size, so a traced
    graph runs batch-many steps instead of time-many: wrong shapes or, after a GRU that
    reduces time, silently wrong numbers (and a vectorized_map that tf2onnx mis-converts).
    Merging batch and time and calling the layer once is what TimeDistributed means for any
    layer without a mask; with a mask Keras's own call runs.
    """
    try:
        from keras.src.layers.rnn.time_distributed import TimeDistributed
    except ImportError:  # no Keras 3 (a plain SavedModel source): nothing to patch
        yield fired
        return
    original = TimeDistributed.call

    def call(self, inputs, training=None, mask=None):
        if mask is not None or inputs.shape[1] is not None:
            return original(self, inputs, training=training, mask=mask)
        import tensorflow as tf

        shape = tf.shape(inputs)
        merged = tf.reshape(inputs, tf.concat([[-1], shape[2:]], 0))
        merged.set_shape([None, *inputs.shape[2:]])
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        out = self.layer.call(merged, **kwargs)
        result = tf.reshape(out, tf.concat([shape[:2], tf.shape(out)[1:]], 0))
        result.set_shape([inputs.shape[0], None, *out.shape[1:]])
        fired.add(TIME_DISTRIBUTED)
        return result

    TimeDistributed.call = call
    try:
        yield fired
    finally:
        TimeDistributed.call = original
