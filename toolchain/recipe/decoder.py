"""`task: text-generation`: a decoder exported with its KV cache as explicit, dynamic tensors.

The decoder's inputs, outputs and dims are derived from its config.json (the save_pretrained
folder's, or `generation.config`), read as JSON: nothing is imported and no code runs. The
names are the ones ONNX Runtime GenAI and Optimum use:

    inputs   input_ids [batch, seq], attention_mask [batch, total], position_ids [batch, seq],
             past_key_values.<i>.key / .value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.<i>.key / .value [batch, kv_heads, total, head_dim]

with total = past + seq and past from 0 (the prefill) to max_length - 1.

An encoder-decoder (`is_encoder_decoder` in its config: T5, BART) is two programs. The prefill runs
the encoder on the prompt and the decoder on its start token; each later call decodes one token:

    prefill  encoder_input_ids [batch, enc], encoder_attention_mask [batch, enc], input_ids [batch, seq]
             -> logits, present.<i>.decoder.key / .value, present.<i>.encoder.key / .value [batch, heads, enc, head_dim]
    decode   input_ids [batch, seq], encoder_attention_mask [batch, enc],
             past_key_values.<i>.decoder.key / .value [batch, heads, past, head_dim],
             past_key_values.<i>.encoder.key / .value [batch, heads, enc, head_dim]
             -> logits, present.<i>.decoder.key / .value

The recipe's inputs and outputs are the decode program's; the cross-attention keys and values are
computed once, by the prefill, and fed back unchanged (Optimum's names).

A speech encoder-decoder (Whisper: `num_mel_bins` in its config) takes log-mel features instead of
prompt tokens, at the one length its encoder was made for (2 x max_source_positions frames), with
no mask:

    prefill  input_features [batch, mels, frames], input_ids [batch, seq] -> as above, enc = max_source_positions
    decode   input_ids, past_key_values.<i>.decoder.*, past_key_values.<i>.encoder.* [batch, heads, enc, head_dim]

A state-space decoder (Mamba) has no keys and values: each layer carries a fixed-size state, the last
conv_kernel inputs of its causal convolution and its selective scan's recurrent state. Its artifact
is one program, a step over one token; a prompt is fed a token at a time from zero states (its
recurrence is exact, and transformers' own scan over a prompt is a Python loop that export unrolls
at one length):

    step     input_ids [batch, 1], past_state.<i>.conv [batch, intermediate, conv_kernel],
             past_state.<i>.ssm [batch, intermediate, state_size]
             -> logits [batch, 1, vocab], present_state.<i>.conv, present_state.<i>.ssm
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PAST = "past_key_values.{i}.{kv}"
PRESENT = "present.{i}.{kv}"
PAST_STATE, PRESENT_STATE = "past_state.{i}.{kv}", "present_state.{i}.{kv}"  # a state-space decoder's (Mamba)
SELF, CROSS = "decoder", "encoder"  # an encoder-decoder's cache parts: past_key_values.<i>.decoder.key, .encoder.key
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
    encoder_decoder: bool = False
    decoder_start: int | None = None  # an encoder-decoder's first decoder token
    mels: int | None = None  # a speech encoder's log-mel bins (Whisper); its input is audio, not tokens
    encoded: int | None = None  # a speech encoder's output length (max_source_positions): frames = 2 x encoded
    states: tuple[int, int, int] | None = None  # a state-space decoder's (intermediate, conv_kernel, state_size): no KV cache

    @property
    def recurrent(self) -> bool:
        return self.states is not None

    def state_shapes(self) -> dict[str, tuple[int, int]]:
        """A state-space decoder's per-layer states, without the batch: past name -> (intermediate, conv_kernel or state_size)."""
        inner, kernel, size = self.states
        return {PAST_STATE.format(i=i, kv=kv): (inner, kernel if kv == "conv" else size) for i in range(self.layers) for kv in ("conv", "ssm")}

    @property
    def audio(self) -> bool:
        return self.mels is not None

    @property
    def encoder_input(self) -> str:
        """The prefill's encoder input: log-mel features, or prompt token ids."""
        return "input_features" if self.audio else "encoder_input_ids"

    def _names(self, pattern: str, part: str | None) -> list[str]:
        return [pattern.format(i=i, kv=f"{part}.{kv}" if part else kv) for i in range(self.layers) for kv in ("key", "value")]

    def past_names(self) -> list[str]:
        """The cache the decode program takes: the self-attention keys and values (and, encoder-decoder, the cross-attention's)."""
        if self.recurrent:
            return list(self.state_shapes())
        return self._names(PAST, SELF) + self._names(PAST, CROSS) if self.encoder_decoder else self._names(PAST, None)

    def present_names(self) -> list[str]:
        """What each call returns for the next one: the self-attention keys and values (a state-space decoder: its states)."""
        if self.recurrent:
            return [PRESENT_STATE.format(i=i, kv=kv) for i in range(self.layers) for kv in ("conv", "ssm")]
        return self._names(PRESENT, SELF if self.encoder_decoder else None)

    def cross_names(self) -> tuple[list[str], list[str]]:
        """An encoder-decoder's cross-attention cache: (the prefill's outputs, the decode program's inputs)."""
        return self._names(PRESENT, CROSS), self._names(PAST, CROSS)

    def prefill_io(self, max_length: int) -> tuple[list[dict], list[str]]:
        """An encoder-decoder's prefill program: its inputs (recipe input specs) and its outputs."""
        if self.audio:
            inputs = [
                {"name": "input_features", "dtype": "float32", "shape": ["batch", self.mels, 2 * self.encoded], "range": [-1.0, 1.0]},
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, self.vocab]},
            ]
            return inputs, ["logits", *self.present_names(), *self.cross_names()[0]]
        inputs = [
            {"name": "encoder_input_ids", "dtype": "int64", "shape": ["batch", "enc"], "range": [0, self.vocab]},
            {"name": "encoder_attention_mask", "dtype": "int64", "shape": ["batch", "enc"], "range": [1, 2]},
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, self.vocab]},
        ]
        return inputs, ["logits", *self.present_names(), *self.cross_names()[0]]


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
    seq2seq = cfg.get("is_encoder_decoder") is True
    if text.get("model_type") == "mamba" or ("state_size" in text and "conv_kernel" in text and "expand" in text):
        return _state_space(path, cfg, text)
    # An encoder-decoder's cache is its decoder's: T5 (num_decoder_layers, d_kv), BART (decoder_layers, decoder_attention_heads)
    layers = _first(text, *(("num_decoder_layers", "decoder_layers") if seq2seq else ()), "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(text, *(("decoder_attention_heads",) if seq2seq else ()), "num_attention_heads", "n_head", "num_heads")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    vocab = _first(text, "vocab_size")
    missing = [n for n, v in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("hidden_size", hidden), ("vocab_size", vocab)) if v is None]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not a decoder's config")
    kv = _first(text, "num_key_value_heads", "num_kv_heads") or (1 if text.get("multi_query") else heads)
    head_dim = _first(text, "head_dim", "d_kv") or hidden // heads
    eos = cfg.get("eos_token_id", text.get("eos_token_id"))
    mels = _first(cfg, "num_mel_bins") if seq2seq else None
    encoded = _first(cfg, "max_source_positions") if mels is not None else None
    if mels is not None and encoded is None:
        raise ValueError(f"{path} has num_mel_bins but no max_source_positions: not a speech encoder-decoder's config")
    eos_ids = tuple(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))
    positions = _first(text, "max_position_embeddings", "n_positions", "n_ctx", *(("max_target_positions",) if seq2seq else ()))
    return DecoderShape(layers, heads, kv, head_dim, hidden, vocab, positions,
                        _first(cfg, "bos_token_id") if _first(cfg, "bos_token_id") is not None else _first(text, "bos_token_id"), eos_ids,
                        _first(cfg, "pad_token_id"), str(cfg.get("model_type", "")), seq2seq, _first(cfg, "decoder_start_token_id"),
                        mels, encoded)  # fmt: skip


def _state_space(path: Path, cfg: dict, text: dict) -> DecoderShape:
    """A Mamba config: its layers' state sizes (intermediate = expand x hidden_size)."""
    need = ("num_hidden_layers", "hidden_size", "vocab_size", "state_size", "conv_kernel", "expand")
    missing = [k for k in need if not isinstance(text.get(k), int)]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: not a state-space decoder's config")
    hidden = text["hidden_size"]
    inner = text.get("intermediate_size") if isinstance(text.get("intermediate_size"), int) else text["expand"] * hidden
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))
    return DecoderShape(text["num_hidden_layers"], 1, 1, inner, hidden, text["vocab_size"], None, _first(cfg, "bos_token_id"), eos_ids,
                        _first(cfg, "pad_token_id"), str(text.get("model_type", "")), states=(inner, text["conv_kernel"], text["state_size"]))  # fmt: skip


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
    if shape.encoder_decoder and shape.decoder_start is None:
        return [(key, f"{path} is an encoder-decoder's config without decoder_start_token_id", "add the token its decoder starts from (T5: 0, BART: 2)")]
    kv = [shape.kv_heads, shape.head_dim]
    opt = min(8, max_length // 2)
    if shape.encoder_decoder:
        _derive_seq2seq(data, shape, max_length, max_batch, opt)
        return []
    if shape.recurrent:  # one token a call, its states in and out (the module docstring)
        data["inputs"] = [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, shape.vocab]},
            *({"name": n, "dtype": "float32", "shape": ["batch", *dims], "range": [-1.0, 1.0]} for n, dims in shape.state_shapes().items()),
        ]
        data["outputs"] = ["logits", *shape.present_names()]
        data["dims"] = {"batch": {"min": 1, "opt": min(2, max_batch), "max": max_batch}, "seq": {"min": 1, "opt": 1, "max": 1}}
        return []
    data["inputs"] = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, shape.vocab]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"], "range": [1, 2]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, max_length]},
        *({"name": n, "dtype": "float32", "shape": ["batch", kv[0], "past", kv[1]], "range": [-1.0, 1.0]} for n in shape.past_names()),
    ]
    data["outputs"] = ["logits", *shape.present_names()]
    data["dims"] = {
        "batch": {"min": 1, "opt": min(2, max_batch), "max": max_batch},
        "seq": {"min": 1, "opt": opt, "max": max_length},
        "past": {"min": 1, "opt": opt, "max": max_length - 1},  # from 0 in fact: see past_from_zero
        "total": {"min": 1, "opt": 2 * opt, "max": max_length},
    }
    return []


def _derive_seq2seq(data: dict, shape: DecoderShape, max_length: int, max_batch: int, opt: int) -> None:
    """The decode program's inputs, outputs and dims (the module docstring): one new token a call, after `past` decoded
    ones, over an encoded prompt of `enc` tokens."""
    kv = [shape.kv_heads, shape.head_dim]
    self_past, cross_past = shape._names(PAST, SELF), shape._names(PAST, CROSS)
    enc = shape.encoded if shape.audio else "enc"  # a speech encoder's output has one length
    mask = [] if shape.audio else [{"name": "encoder_attention_mask", "dtype": "int64", "shape": ["batch", "enc"], "range": [1, 2]}]
    data["inputs"] = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, shape.vocab]},
        *mask,
        *({"name": n, "dtype": "float32", "shape": ["batch", kv[0], "past", kv[1]], "range": [-1.0, 1.0]} for n in self_past),
        *({"name": n, "dtype": "float32", "shape": ["batch", kv[0], enc, kv[1]], "range": [-1.0, 1.0]} for n in cross_past),
    ]
    data["outputs"] = ["logits", *shape.present_names()]
    data["dims"] = {
        "batch": {"min": 1, "opt": min(2, max_batch), "max": max_batch},
        "seq": {"min": 1, "opt": 1, "max": 1},  # the decoder takes its tokens one at a time: the start token, then each new one
        "past": {"min": 1, "opt": opt, "max": max_length - 1},  # from 0 in fact: see past_from_zero
    }
    if not shape.audio:
        data["dims"]["enc"] = {"min": 1, "opt": opt, "max": max_length}


def past_from_zero(recipe) -> None:
    """The past dim starts at 0 (the prefill), which a recipe's dims cannot say (min >= 1): set after validation."""
    if "past" not in recipe.dims:  # a state-space decoder's states have no past length
        return
    recipe.dims["past"] = recipe.dims["past"].model_copy(update={"min": 0})
