"""What the files a recipe names look like, read without loading them (no framework, no unpickling).

`mlpack validate` uses these so a wrong file fails in a second with its key named,
not minutes into a build in a worker's traceback.
"""

from __future__ import annotations

import ast
import json
import struct
import zipfile
from pathlib import Path

MAX_FACTORY_BYTES = 10 << 20  # a model's source file; a bigger one is not Python source anyone wrote
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def factory_problem(path: Path, name: str) -> str | None:
    """Why `path` cannot provide a top-level callable `name`, or None (parsed, never run)."""
    try:
        size = path.stat().st_size
        if size > MAX_FACTORY_BYTES:
            return f"{path.name} is {size / 1e6:.0f} MB; a factory is a Python source file"
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as e:
        return f"{path.name} is not valid Python: {e.msg} (line {e.lineno})"
    except (OSError, ValueError) as e:
        return f"cannot read {path.name}: {e}"
    defined: set[str] = set()
    star = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            star |= any(a.name == "*" for a in node.names)
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):  # conditional definitions: trust them
            defined |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {t.id for n in ast.walk(node) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if name in defined or star:
        return None
    funcs = sorted(n for n in defined if not n.startswith("_"))
    return f"{path.name} defines no top-level '{name}'" + (f" (it defines: {', '.join(funcs[:8])})" if funcs else "")


def weights_problem(path: Path) -> str | None:
    """A .safetensors file with a readable header, or a torch.save file (zip or legacy pickle)."""
    try:
        head = _head(path, 8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return f"{path.name} is too short to be a safetensors file"
            n = struct.unpack("<Q", head)[0]
            if n > min(path.stat().st_size - 8, 100 << 20):
                return f"{path.name} has a safetensors header length ({n}) beyond the file's size"
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                return f"{path.name}: its safetensors header is not a JSON object"
            return None
        if head.startswith(ZIP_MAGIC) or head[:1] == b"\x80":
            return None
        return f"{path.name} is neither a torch.save() file nor .safetensors (it starts with {head[:8]!r})"
    except (OSError, ValueError) as e:
        return f"cannot read {path.name}: {e}"


def zip_problem(path: Path, what: str) -> str | None:
    try:
        if not zipfile.is_zipfile(path):
            return f"{path.name} is not a {what} (not a zip archive)"
    except OSError as e:
        return f"cannot read {path.name}: {e}"
    return None


def keras_problem(path: Path) -> str | None:
    try:
        head = _head(path, 8)
    except OSError as e:
        return f"cannot read {path.name}: {e}"
    if head.startswith(ZIP_MAGIC) or head.startswith(HDF5_MAGIC):
        return None
    return f"{path.name} is neither a .keras archive nor an HDF5 (.h5) file"


def savedmodel_problem(path: Path) -> str | None:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return None
    return f"{path} has no saved_model.pb: not a SavedModel folder"


def transformers_problem(path: Path) -> str | None:
    """A save_pretrained folder mlpack loads without running code: a config.json naming no custom code, safetensors weights."""
    config = path / "config.json"
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError):
        return f"{path} has no readable config.json: not a save_pretrained folder"
    if isinstance(cfg, dict) and cfg.get("auto_map"):
        return f"{config} names custom code (auto_map): mlpack does not run code from a model folder"
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        return f"{path} has no .safetensors weights" + (f" (only {', '.join(pickled)}, which unpickling would run)" if pickled else "")
    return None


def tokenizer_problem(path: Path) -> str | None:
    """A tokenizer.json (the `tokenizers` library's format: JSON, no code)."""
    try:
        tok = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path} is not a tokenizer.json (JSON)"
    return None if isinstance(tok, dict) and isinstance(tok.get("model"), dict) else f"{path} has no tokenizer model: not a tokenizer.json"


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # a folder of raw image samples: the files read
IMAGE_MAX_BYTES = 64 << 20  # an image sample is read whole
IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP", b"RIFF": "WEBP"}


def image_problem(path: Path) -> str | None:
    """A JPEG, PNG, BMP or WEBP file, judged by its first bytes (nothing decodes it here)."""
    try:
        if path.stat().st_size > IMAGE_MAX_BYTES:
            return f"{path} is over {IMAGE_MAX_BYTES >> 20} MiB: an image sample is at most that"
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        return f"cannot read {path}: {e}"
    if any(head.startswith(m) for m in IMAGE_MAGIC) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP"):
        return None
    return f"{path} is not a JPEG, PNG, BMP or WEBP image (its first bytes are {head[:8]!r})"


def image_folder_problem(path: Path) -> str | None:
    """A folder holding at least one image file, each of which is an image."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
    return next((why for f in files if (why := image_problem(f))), None)


TEXT_MAX_BYTES = 64 << 20  # a perplexity sample is read whole


def text_problem(path: Path) -> str | None:
    """A plain UTF-8 text file of bounded size."""
    try:
        size = path.stat().st_size
        if size > TEXT_MAX_BYTES:
            return f"{path} is {size >> 20} MiB: a text sample is at most {TEXT_MAX_BYTES >> 20} MiB"
        path.read_bytes().decode("utf-8")
    except OSError as e:
        return f"cannot read {path}: {e}"
    except UnicodeDecodeError as e:
        return f"{path} is not UTF-8 text (byte {e.start})"
    return None


WAV_MAX_BYTES = 64 << 20  # an audio clip is read whole


def wav_problem(path: Path, rate: int | None) -> str | None:
    """A mono 16-bit PCM WAV file (read by the standard library: no codec runs), at `rate` Hz where given."""
    import wave

    try:
        if path.stat().st_size > WAV_MAX_BYTES:
            return f"{path} is over {WAV_MAX_BYTES >> 20} MiB: an audio clip is read whole"
        with wave.open(str(path), "rb") as w:
            channels, width, hz, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
    except (OSError, EOFError, wave.Error) as e:
        return f"{path} is not a PCM WAV file: {e}"
    if channels != 1 or width != 2:
        return f"{path} has {channels} channels of {8 * width}-bit samples: mono 16-bit PCM is read"
    if rate is not None and hz != rate:
        return f"{path} is sampled at {hz} Hz; the feature extractor takes {rate} Hz"
    return None if frames else f"{path} holds no samples"


def features_problem(path: Path) -> str | None:
    """A Whisper feature extractor's preprocessor_config.json (JSON, no code)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path} is not a feature extractor's preprocessor_config.json (JSON)"
    if not isinstance(cfg, dict) or cfg.get("feature_extractor_type", "WhisperFeatureExtractor") != "WhisperFeatureExtractor":
        return f"{path} is not a WhisperFeatureExtractor's settings (feature_extractor_type)"
    missing = [k for k in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft") if not isinstance(cfg.get(k), int)]
    return f"{path} has no {', '.join(missing)}" if missing else None
