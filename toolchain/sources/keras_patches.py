"""Keras layers traced as an equivalent computation while mlpack traces the served function.

The reference stays the user's model run eagerly; only the traced graph (SavedModel, XLA,
tf2onnx) takes the patched call, and the parity gate compares the two. Each patch fixes a
Keras behaviour that makes a traced graph compute something else than the eager model, or
that no target but XLA can take.
"""

from __future__ import annotations

import contextlib
from unittest import mock

# What each patch records in the manifest (`export.rewrites`) when a traced call took it.
TIME_DISTRIBUTED = "keras TimeDistributed over a dynamic time axis -> one call on [batch*time, ...]"
GROUPED_CONV = "keras grouped convolution -> depthwise or per-group convolutions (no XLA function)"


@contextlib.contextmanager
def tracing(fired: set[str]):
    """Patch while tracing; the names of the patches a traced call took are added to `fired`."""
    try:
        from keras.src.backend.tensorflow import nn as tf_nn
        from keras.src.layers.rnn.time_distributed import TimeDistributed
    except ImportError:  # no Keras 3 (a plain SavedModel source): nothing to patch
        yield fired
        return
    with (
        mock.patch.object(TimeDistributed, "call", _time_distributed(TimeDistributed.call, fired)),
        mock.patch.object(tf_nn, "conv", _grouped_conv(tf_nn.conv, fired)),
    ):
        yield fired


def _time_distributed(original, fired: set[str]):
    """TimeDistributed: with the time axis unknown (a dynamic dim), Keras 3 (3.15) maps the inner
    layer over `arange(shape[0])` of the *untransposed* input, the batch size, so a traced
    graph runs batch-many steps instead of time-many: wrong shapes or, after a GRU that
    reduces time, silently wrong numbers (and a vectorized_map that tf2onnx mis-converts).
    Merging batch and time and calling the layer once is what TimeDistributed means for any
    layer without a mask; with a mask Keras's own call runs."""

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

    return call


def _grouped_conv(original, fired: set[str]):
    """A grouped convolution (Conv2D(groups=...): Keras ConvNeXt's depthwise 7x7) runs in Keras's
    TensorFlow backend as a jit_compile=True function, because TensorFlow's CPU kernels have no
    grouped convolution: the SavedModel then holds an XLA function (TF Serving on CPU cannot
    run the savedmodel target without XLA) and tf2onnx leaves the call unconverted, so every
    target but xla failed. Computed as a depthwise convolution (groups == channels) or as one
    convolution per group, concatenated, it is the same arithmetic with plain ops."""

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        import tensorflow as tf

        channels = inputs.shape[-1]
        groups = channels // kernel.shape[-2] if channels and kernel.shape[-2] else 1
        if data_format == "channels_first" or len(inputs.shape) != 4 or groups <= 1 or channels % kernel.shape[-2]:
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        fired.add(GROUPED_CONV)
        strides = [strides] * 2 if isinstance(strides, int) else list(strides)
        dilation = [dilation_rate] * 2 if isinstance(dilation_rate, int) else list(dilation_rate)
        if kernel.shape[-2] == 1 and (max(strides) == 1 or max(dilation) == 1):  # depthwise: [kh, kw, 1, c*m] -> [kh, kw, c, m]
            depthwise = tf.reshape(kernel, [kernel.shape[0], kernel.shape[1], channels, kernel.shape[-1] // channels])
            return tf.nn.depthwise_conv2d(inputs, depthwise, [1, *strides, 1], padding.upper(), dilations=dilation)
        parts = zip(tf.split(inputs, groups, axis=-1), tf.split(kernel, groups, axis=-1))
        return tf.concat([tf.nn.convolution(x, k, strides, padding.upper(), dilations=dilation) for x, k in parts], axis=-1)

    return conv
