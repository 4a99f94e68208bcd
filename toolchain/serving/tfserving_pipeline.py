"""TF Serving's raw-input model: a SavedModel whose signature takes image bytes and answers labels and scores
(or an embedding), the recipe's `preprocess:` and `postprocess:` written in TF ops around the served artifact.

    tfserving/<recipe>_pipeline/<version>/   signatures:
        serving_default  images: string [batch] (JPEG or PNG bytes)  ->  labels, scores, class_ids (top k)  | embedding
        preprocess       images: string [batch]                      ->  pixels (the tensor the artifact is given)

The steps follow toolchain/pipeline/runtime.py (torchvision's Resize, CenterCrop, ToTensor, Normalize on PIL):
JPEG decoded with libjpeg's accurate DCT as PIL does, the shorter side resized (the longer int()-truncated) in two
passes, width then height, each rounded to 8 bits as PIL's resampler does, the crop offset rounded half to even as
Python's round(). TF's antialiased resize is not PIL's fixed-point filter: pixels may differ by a level of 255, so the
preprocess stage is judged at PIXEL_LEVELS, and the answers as any target's.

Text has no such model: a tokenizer (WordPiece, BPE, SentencePiece) is not a core TF op (tensorflow_text has them,
as custom ops a server must be built with), so a text recipe gets the tensor model only, and the build says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIPELINE_SUFFIX = "_pipeline"
INPUT = "images"
PIXEL_LEVELS = 1.5  # TF's resize against PIL's, in levels of 255 before normalisation
TEXT_MISSING = ("preprocess.text: TF Serving gets no raw-text model: a tokenizer is not a core TensorFlow op (tensorflow_text's are custom ops "
                "the server must be built with); clients send input_ids to the tensor model, or use Triton's ensemble")  # fmt: skip


def pipeline_name(model: str) -> str:
    return f"{model}{PIPELINE_SUFFIX}"


def pixel_atol(cfg: dict) -> float:
    """PIXEL_LEVELS in the normalised tensor's units."""
    return PIXEL_LEVELS / 255.0 / min(cfg["image"]["std"])


def write_raw_model(artifact: Path, dest: Path, cfg: dict, labels: list[str] | None, signature: str) -> None:
    """dest/: a SavedModel wrapping the artifact SavedModel at `artifact` (called through `signature`) with the
    pipeline's TF steps. ValueError when a step has no TF form."""
    import tensorflow as tf

    if cfg["modality"] != "image":
        raise ValueError(TEXT_MISSING)
    loaded = tf.saved_model.load(str(artifact))
    if signature not in loaded.signatures:
        raise ValueError(f"{artifact} has no signature {signature!r} to wrap (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[signature]
    input_name = cfg["inputs"][0]
    answer = cfg["answer"]
    output = cfg[answer]["output"]
    pre = _preprocess(tf, cfg)
    spec = tf.TensorSpec([None], tf.string, name=INPUT)

    class Raw(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = loaded  # tracked: its variables are saved with this module
            self.labels = tf.constant(labels or [], tf.string)

        @tf.function(input_signature=[spec])
        def preprocess(self, images):
            return {"pixels": pre(images)}

        @tf.function(input_signature=[spec])
        def serve(self, images):
            out = fn(**{input_name: pre(images)})[output]
            return _postprocess(tf, cfg, out, self.labels)

    module = Raw()
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve, "preprocess": module.preprocess})


def _preprocess(tf, cfg: dict):
    c = cfg["image"]
    size, crop = c["resize"], c["crop"]
    method = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}[c["interpolation"]]
    mean, std = tf.constant(c["mean"], tf.float32), tf.constant(c["std"], tf.float32)

    def resize(img, h, w):  # one pass, then 8 bits, as PIL's resampler keeps between passes
        out = tf.image.resize(img, tf.stack([h, w]), method=method, antialias=method != "nearest")
        return tf.clip_by_value(tf.round(out), 0.0, 255.0)

    def one(data):
        img = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_png(data, channels=3),
        )
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        long = tf.cast(tf.math.floordiv(size * tf.maximum(h, w), tf.minimum(h, w)), tf.int32)
        nh, nw = tf.cond(w <= h, lambda: (long, tf.constant(size)), lambda: (tf.constant(size), long))
        x = tf.cast(img, tf.float32)
        x = tf.cond(tf.logical_or(nh != h, nw != w), lambda: resize(resize(x, h, nw), nh, nw), lambda: x)
        top = tf.cast(tf.round(tf.cast(nh - crop, tf.float32) / 2.0), tf.int32)  # tf.round: half to even, as Python's round
        left = tf.cast(tf.round(tf.cast(nw - crop, tf.float32) / 2.0), tf.int32)
        x = x[top : top + crop, left : left + crop, :]
        x = (x / 255.0 - mean) / std
        return tf.transpose(x, [2, 0, 1]) if c["layout"] == "nchw" else x

    shape = [3, crop, crop] if c["layout"] == "nchw" else [crop, crop, 3]
    return lambda images: tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(shape, tf.float32))


def _postprocess(tf, cfg: dict, out, labels) -> dict:
    if cfg["answer"] == "embedding":
        e = cfg["embedding"]
        x = tf.cast(out, tf.float32)
        if len(out.shape) == 3:  # token states of an image model: no mask, every position counts
            x = tf.reduce_mean(x, axis=1) if e["pool"] == "mean" else x[:, 0]
        return {"embedding": tf.math.l2_normalize(x, axis=-1, epsilon=1e-24) if e["normalize"] else x}
    c = cfg["classify"]
    x = tf.reshape(tf.cast(out, tf.float32), [tf.shape(out)[0], -1])
    if c["softmax"]:
        x = tf.nn.softmax(x, axis=-1)
    k = tf.minimum(c["top_k"], tf.shape(x)[1])
    top = tf.math.top_k(x, k=k, sorted=True)
    ids = tf.cast(top.indices, tf.int64)
    named = tf.gather(labels, tf.minimum(top.indices, tf.maximum(tf.size(labels) - 1, 0))) if labels.shape[0] else tf.strings.as_string(ids)
    if labels.shape[0]:  # past the label file: the class index, as runtime.classify
        named = tf.where(top.indices < tf.size(labels), named, tf.strings.as_string(ids))
    return {"labels": named, "scores": top.values, "class_ids": ids}


def answers(cfg: dict, outputs: dict, n: int) -> list[dict]:
    """One answer per sample from a batch's outputs, as pipeline.judge_answers reads them."""
    if cfg["answer"] == "embedding":
        return [{"embedding": np.asarray(outputs["embedding"])[j : j + 1]} for j in range(n)]
    return [{"scores": np.asarray(outputs["scores"])[j : j + 1], "ids": np.asarray(outputs["class_ids"])[j : j + 1],
             "labels": np.asarray(outputs["labels"])[j : j + 1]} for j in range(n)]  # fmt: skip
