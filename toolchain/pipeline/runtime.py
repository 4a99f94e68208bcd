"""mlpack's pre- and postprocessing: raw text or image bytes to the model's tensors, its outputs to answers.

The build judges this code against the source framework's pipeline (pipeline/reference.py), and the
served models run this same file: it is copied into the Triton repository as mlpack_pipeline.py. So it
imports only numpy, and `tokenizers` or Pillow where a step needs them, never mlpack or torch.
Configs are the plain dicts recipe/pipeline.py writes (pipeline.json).
"""

from __future__ import annotations

import io
import json

import numpy as np

PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")  # a tokenizer.json without padding settings


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def pad_id(tok) -> int:
    """The id the tokenizer pads with: its padding settings, else its pad token, else 0 (padding is masked out)."""
    padding = json.loads(tok.to_str()).get("padding") or {}
    if "pad_id" in padding:
        return int(padding["pad_id"])
    return next((i for t in PAD_TOKENS if (i := tok.token_to_id(t)) is not None), 0)


def encode_texts(tok, cfg: dict, texts: list[str], names: list[str], dtypes: dict, min_len: int = 1, max_len: int | None = None) -> dict:
    """Token ids and masks for a batch of texts, padded to the longest (at least min_len: the artifact's
    smallest sequence) or to max_length, truncated to max_length; one array per model input in `names`."""
    text = cfg["text"]
    limit = min(text["max_length"], max_len) if max_len else text["max_length"]
    tok.no_padding()
    tok.no_truncation()
    if text["truncation"]:
        tok.enable_truncation(limit)
    encs = tok.encode_batch(list(texts))
    width = limit if text["padding"] == "max_length" else max(len(e.ids) for e in encs)
    width = max(width, min_len)
    fill = pad_id(tok)
    ids = np.full((len(encs), width), fill, np.int64)
    mask = np.zeros((len(encs), width), np.int64)
    types = np.zeros((len(encs), width), np.int64)
    for row, e in enumerate(encs):
        n = min(len(e.ids), width)
        ids[row, :n], mask[row, :n], types[row, :n] = e.ids[:n], e.attention_mask[:n], e.type_ids[:n]
    made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {n: made[n].astype(dtypes.get(n, "int64")) for n in names}


def decode_image(data: bytes, cfg: dict) -> np.ndarray:
    """One image's bytes to a float32 tensor [3, crop, crop] (nchw) or [crop, crop, 3] (nhwc), as torchvision's
    Resize(resize) (shorter side; the longer one int()-truncated), CenterCrop(crop), ToTensor, Normalize do it."""
    from PIL import Image

    c = cfg["image"]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[c["interpolation"]]
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
    w, h = img.size
    size = c["resize"]
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        img = img.resize(new, resample)
    w, h = img.size
    crop = c["crop"]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(c["mean"], np.float32)) / np.asarray(c["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1) if c["layout"] == "nchw" else x, dtype=np.float32)


def decode_images(blobs: list[bytes], cfg: dict) -> np.ndarray:
    return np.stack([decode_image(b, cfg) for b in blobs])


def embed(cfg: dict, states: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[batch, hidden] float32: token states pooled (mean over the mask, or the first token), L2-normalised."""
    e = cfg["embedding"]
    x = np.asarray(states, np.float32)
    if e["pool"] == "mean" and x.ndim == 3:
        m = np.asarray(mask, np.float32)[:, : x.shape[1], None]
        x = (x * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    elif e["pool"] == "cls" and x.ndim == 3:
        x = x[:, 0]
    if e["normalize"]:
        x = x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)
    return np.ascontiguousarray(x, np.float32)


def classify(cfg: dict, logits: np.ndarray, labels: list[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels [batch, k] as bytes, scores [batch, k] float32, class ids [batch, k] int64), best first."""
    c = cfg["classify"]
    x = np.asarray(logits, np.float32).reshape(len(logits), -1)
    if c["softmax"]:
        z = np.exp(x - x.max(axis=1, keepdims=True))
        x = z / z.sum(axis=1, keepdims=True)
    k = min(c["top_k"], x.shape[1])
    ids = np.argsort(-x, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(x, ids, axis=1).astype(np.float32)
    names = np.array([[(labels[i] if labels and i < len(labels) else str(i)).encode("utf-8") for i in row] for row in ids], dtype=np.object_)
    return names, scores, ids.astype(np.int64)


def read_labels(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]
