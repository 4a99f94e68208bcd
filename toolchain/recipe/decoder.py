"""`task: text-generation`: a decoder exported with its KV cache as explicit, dynamic tensors.

The decoder's inputs, outputs and dims are derived from its config.json (the save_pretrained
folder's, or `generation.config`), read as JSON: nothing is imported and no code runs. The
names are the ones ONNX Runtime GenAI and Optimum use:

    inputs   input_ids [batch, seq], attention_mask [batch, total], position_ids [batch, seq],
             past_key_values.<i>.key / .value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.<i>.key / .value [batch, kv_heads, total, head_dim]

with total = past + seq and past from 0 (the prefill) to max_length - 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PAST = "past_key_values.{i}.{kv}"
PRESENT = "present.{i}.{kv}"
DERIVED = ("inputs", "outputs", "dims")  # keys a text-generation recipe does not write


@dataclass(frozen=True)
class DecoderShape:
    """What the cache layout and the generation loop need from a decoder's config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_positions: int | None
    bos: int | None
    eos: tuple[int, ...]
    pad: int | None
    model_type: str

    def past_names(self) -> list[str]:
        return [PAST.format(i=i, kv=kv) for i in range(self.layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [PRESENT.format(i=i, kv=kv) for i in range(self.layers) for kv in ("key", "value")]


def _first(cfg: dict, *keys: str):
    return next((cfg[k] for k in keys if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)), None)


def read_config(path: Path) -> DecoderShape:
    """The decoder's shape from its config.json; ValueError naming what is missing."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as a model config (JSON): {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a model config (a JSON object)")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg  # multimodal configs nest the decoder's
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    vocab = _first(text, "vocab_size")
    missing = [n for n, v in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("hidden_size", hidden), ("vocab_size", vocab)) if v is None]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not a decoder's config")
    kv = _first(text, "num_key_value_heads", "num_kv_heads") or (1 if text.get("multi_query") else heads)
    head_dim = _first(text, "head_dim") or hidden // heads
    eos = cfg.get("eos_token_id", text.get("eos_token_id"))
    eos_ids = tuple(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))
    return DecoderShape(layers, heads, kv, head_dim, hidden, vocab, _first(text, "max_position_embeddings", "n_positions", "n_ctx"),
                        _first(cfg, "bos_token_id") if _first(cfg, "bos_token_id") is not None else _first(text, "bos_token_id"), eos_ids,
                        _first(cfg, "pad_token_id"), str(cfg.get("model_type", "")))  # fmt: skip


def config_path(data: dict, root: Path) -> tuple[tuple, Path] | None:
    """(key path, file) of the decoder's config.json in raw recipe data: source.transformers's, else generation.config."""
    gen = data.get("generation") if isinstance(data.get("generation"), dict) else {}
    src = data.get("source") if isinstance(data.get("source"), dict) else {}
    if isinstance(gen.get("config"), str):
        return ("generation", "config"), root / gen["config"]
    if isinstance(src.get("transformers"), str):
        return ("source", "transformers"), root / src["transformers"] / "config.json"
    return None


def derive(data: dict, root: Path) -> list[tuple[tuple, str, str | None]]:
    """Fill a text-generation recipe's inputs, outputs and dims from its decoder's config, in place;
    the problems found instead, as (key path, message, fix)."""
    written = [k for k in DERIVED if k in data]
    if written:
        return [((k,), "a text-generation recipe derives its inputs, outputs and dims from the model's config",
                 f"remove `{k}`; size the context with generation.max_length and the batch with generation.max_batch") for k in written]  # fmt: skip
    where = config_path(data, root)
    if where is None:
        return [(("generation", "config"), "text-generation needs the decoder's config.json",
                 "give source.transformers (a save_pretrained folder) or generation.config (its config.json, for a factory)")]  # fmt: skip
    key, path = where
    try:
        shape = read_config(path)
    except ValueError as e:
        return [(key, str(e), "point at the folder save_pretrained wrote (config.json, model.safetensors)")]
    gen = data.get("generation") if isinstance(data.get("generation"), dict) else {}
    max_length = gen.get("max_length", 128)
    max_batch = gen.get("max_batch", 8)
    if not (isinstance(max_length, int) and isinstance(max_batch, int) and max_length >= 2 and max_batch >= 1):
        return []  # the schema says what is wrong with them
    if shape.max_positions is not None and max_length > shape.max_positions:
        return [
            (
                ("generation", "max_length"),
                f"{max_length} is more than the model's {shape.max_positions} positions",
                f"lower it to at most {shape.max_positions}",
            )
        ]
    kv = [shape.kv_heads, shape.head_dim]
    data["inputs"] = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, shape.vocab]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"], "range": [1, 2]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, max_length]},
        *({"name": n, "dtype": "float32", "shape": ["batch", kv[0], "past", kv[1]], "range": [-1.0, 1.0]} for n in shape.past_names()),
    ]
    data["outputs"] = ["logits", *shape.present_names()]
    opt = min(8, max_length // 2)
    data["dims"] = {
        "batch": {"min": 1, "opt": min(2, max_batch), "max": max_batch},
        "seq": {"min": 1, "opt": opt, "max": max_length},
        "past": {"min": 1, "opt": opt, "max": max_length - 1},  # from 0 in fact: see past_from_zero
        "total": {"min": 1, "opt": 2 * opt, "max": max_length},
    }
    return []


def past_from_zero(recipe) -> None:
    """The past dim starts at 0 (the prefill), which a recipe's dims cannot say (min >= 1): set after validation."""
    recipe.dims["past"] = recipe.dims["past"].model_copy(update={"min": 0})
