"""TensorFlow runners: the source model (the reference) and a SavedModel loaded as a server would."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_numpy(t) -> np.ndarray:
    """A TF tensor as numpy, widening bfloat16 (numpy has no bfloat16)."""
    import tensorflow as tf

    if t.dtype == tf.bfloat16:
        t = tf.cast(t, tf.float32)
    return np.ascontiguousarray(t.numpy())


class TFEagerRunner:
    """Calls the source's flat call (Keras layers run eagerly; a tf.function runs as written)."""

    def __init__(self, call, input_names: list[str], output_names: list[str]):
        self.call, self.input_names, self.output_names = call, input_names, output_names

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self.call(*[tf.constant(feed[n]) for n in self.input_names])
        return {n: to_numpy(out[n]) for n in self.output_names}


class SavedModelRunner:
    """tf.saved_model.load in __enter__, then the named signature called with keyword tensors.

    Loading afresh (not reusing the exporting process's objects) is what makes
    parity a statement about the files a server will load.
    """

    def __init__(
        self, path: Path, input_names: list[str], output_names: list[str], device: str = "cpu", threads: int | None = None, signature: str = "serving_default"
    ):
        self.path, self.output_names, self.signature, self.threads = Path(path), output_names, signature, threads
        self.fn = None

    def __enter__(self):
        import tensorflow as tf

        if self.threads:
            try:  # only possible before TensorFlow's runtime starts
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            except RuntimeError:
                pass
        self._loaded = tf.saved_model.load(str(self.path))
        self.fn = self._loaded.signatures[self.signature]
        self.input_names = list(self.fn.structured_input_signature[1])
        return self

    def __exit__(self, *exc) -> None:
        self.fn = self._loaded = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self.fn(**{n: tf.constant(feed[n]) for n in self.input_names})
        return {n: to_numpy(out[n]) for n in self.output_names}
