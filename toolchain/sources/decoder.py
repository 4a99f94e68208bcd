"""A transformers causal LM as a decoder with its KV cache as explicit tensors (task: text-generation).

The source is a save_pretrained folder (loaded with safetensors only and no remote code: nothing
in it runs) or a factory returning the model. Exporters see one module whose positional inputs
are the recipe's derived inputs (recipe/decoder.py) and whose outputs are the logits and the
present keys and values; the cache inside is transformers' own DynamicCache, so the same code
path as `generate` runs. The reference generation is `generate` itself, greedy, with its cache.
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from toolchain.errors import StepError
from toolchain.generation import Reference, TextSample, artifact_nll, chunk_text, decoder_for, token_nll
from toolchain.recipe import DimSpec, InputSpec, Recipe
from toolchain.runners.torch_eager import TorchEagerRunner
from toolchain.sources.factory import call_factory
from toolchain.sources.pytorch import TorchSource, output_names

# The reference is plain greedy decoding, what the artifact's loop does: the logits processors a model's generation_config
# may switch on (BART's forced EOS at max_length, repetition penalties, suppressed tokens) are off.
PLAIN_GREEDY = dict(forced_eos_token_id=None, forced_bos_token_id=None, repetition_penalty=None, no_repeat_ngram_size=None,
                    encoder_no_repeat_ngram_size=None, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None)  # fmt: skip


def load_causal_lm(recipe: Recipe):
    """The recipe's decoder as an eval-mode transformers model, in float32."""
    import torch

    src = recipe.source
    if src.transformers:
        from transformers import AutoModelForCausalLM

        folder = recipe.resolve(src.transformers)
        if recipe.decoder.audio:
            from transformers import AutoModelForSpeechSeq2Seq as AutoModelForCausalLM  # noqa: N814 (same loading rules)
        elif recipe.decoder.encoder_decoder:
            from transformers import AutoModelForSeq2SeqLM as AutoModelForCausalLM  # noqa: N814 (same loading rules)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                                                         dtype=torch.float32)  # fmt: skip
        except Exception as e:
            raise StepError(f"source.transformers: transformers cannot load {folder}: {type(e).__name__}: {e}",
                            hint="a save_pretrained folder of a causal LM transformers knows (no custom code), with safetensors weights") from e  # fmt: skip
    else:
        model = call_factory(recipe)
    if not isinstance(model, torch.nn.Module):
        raise StepError(f"source.factory returned a {type(model).__name__}, not a torch.nn.Module",
                        hint="return a transformers causal LM, or a step function module (docs/recipe.md, 'Your own decoder')")  # fmt: skip
    return model.float().eval()


def is_transformers_lm(model) -> bool:
    """A transformers causal LM (its own generate and config), else a step function with explicit cache tensors."""
    return hasattr(model, "generate") and hasattr(model, "config")


def step_function(model, recipe: Recipe):
    """A user's step function (input_ids, attention_mask, position_ids, past keys and values...) -> (logits, present keys and
    values...), wrapped to tell export that the mask covers the past and the new tokens, and to return a tuple."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, input_ids, attention_mask, position_ids, past: tuple):
            torch._check(attention_mask.shape[1] == past[0].shape[2] + input_ids.shape[1])
            return tuple(self.inner(input_ids, attention_mask, position_ids, *past))

    return _positional(Step(model), 3 + 2 * recipe.decoder.layers)


def _positional(wrapper, count: int, split: int = 3):
    """One named forward parameter per input: exporters match dynamic shapes to parameters by position. `call` takes
    the first `split` inputs, then the cache as one tuple."""
    params = ", ".join(f"x{i}" for i in range(count))
    head = ", ".join(f"x[{i}]" for i in range(split))
    scope: dict = {}
    exec(f"def forward(self, {params}):\n    x = ({params},)\n    return self.call({head}, x[{split}:])\n", scope)
    type(wrapper).forward = scope["forward"]
    wrapper.training = False
    return wrapper


def with_cache(model, recipe: Recipe):
    """The decoder as one module: (input_ids, attention_mask, position_ids, past keys and values...) ->
    (logits, present keys and values...), one named parameter per input (exporters match dynamic shapes by position)."""
    import torch
    from transformers import DynamicCache

    layers = recipe.decoder.layers

    class WithCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, input_ids, attention_mask, position_ids, past: tuple):
            # The mask covers the cached tokens and the new ones: a fact export needs to keep the mask's length symbolic.
            torch._check(attention_mask.shape[1] == past[0].shape[2] + input_ids.shape[1])
            # Full layers, not the config's sliding ones: a sliding layer drops tokens past its window, so `present` would be
            # shorter than past + new by an amount export cannot keep symbolic. The model's mask applies the window instead.
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)])
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
            present = out.past_key_values
            return (out.logits, *[t for layer in present.layers for t in (layer.keys, layer.values)])

    return _positional(WithCache(model), 3 + 2 * layers)


def seq2seq_programs(model, recipe: Recipe):
    """An encoder-decoder's two programs (recipe/decoder.py), each one module with one named parameter per input: the
    prefill (encoder, then the decoder on its start token) and the decode step. Both run transformers' own
    EncoderDecoderCache; the decode step's cross-attention cache holds the prefill's keys and values, so each layer
    takes them as computed (its `is_updated` flag is set by their length) and the encoder's states are never read."""
    import torch
    from transformers import DynamicCache, EncoderDecoderCache

    layers = recipe.decoder.layers

    def flat(cache, cross: bool) -> list:
        part = cache.cross_attention_cache if cross else cache.self_attention_cache
        return [t for layer in part.layers for t in (layer.keys, layer.values)]

    class Prefill(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, encoder_input_ids, encoder_attention_mask, input_ids):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = self.inner(input_ids=encoder_input_ids, attention_mask=encoder_attention_mask, decoder_input_ids=input_ids, cache=cache, use_cache=True)
            return (out.logits, *flat(out.cache, False), *flat(out.cache, True))

    class AudioPrefill(torch.nn.Module):  # a speech encoder: log-mel features in, no mask
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_features, input_ids):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = self.inner(input_features=input_features, decoder_input_ids=input_ids, cache=cache, use_cache=True)
            return (out.logits, *flat(out.cache, False), *flat(out.cache, True))

    class Decode(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, input_ids, encoder_attention_mask, past: tuple):
            mine = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)])
            cross = DynamicCache(ddp_cache_data=[(past[2 * layers + 2 * i], past[2 * layers + 2 * i + 1]) for i in range(layers)])
            batch, enc = past[2 * layers].shape[0], past[2 * layers].shape[2]
            unread = past[2 * layers].new_zeros(batch, enc, self.inner.config.d_model)  # shape only: cross-attention uses its cache
            mask = {} if encoder_attention_mask is None else {"attention_mask": encoder_attention_mask}
            out = self.inner(encoder_outputs=(unread,), decoder_input_ids=input_ids, cache=EncoderDecoderCache(mine, cross), use_cache=True, **mask)
            return (out.logits, *flat(out.cache, False))

    class AudioDecode(Decode):  # a speech model's decode step has no encoder mask
        def call(self, input_ids, past: tuple):
            return Decode.call(self, input_ids, None, past)

    if recipe.decoder.audio:
        prefill = AudioPrefill(model)
        prefill.training = False
        return prefill, _positional(AudioDecode(model), 1 + 4 * layers, split=1)
    prefill = Prefill(model)
    prefill.training = False
    return prefill, _positional(Decode(model), 2 + 4 * layers, split=2)


def state_step(model, recipe: Recipe):
    """A state-space decoder's step (recipe/decoder.py) as one module with one named parameter per input: one token, and
    each layer's conv and recurrent states. It runs transformers' own cache (a LinearAttentionLayer per layer) made
    from those states, cloned (the layer updates them in place), so the model's own decode path is what is exported."""
    import torch
    from transformers import DynamicCache

    layers = recipe.decoder.layers

    class Step(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, input_ids, past: tuple):
            cache = DynamicCache(config=self.inner.config)
            for i, layer in enumerate(cache.layers):
                conv, ssm = past[2 * i], past[2 * i + 1]
                layer.conv_states[0], layer.recurrent_states[0], layer.conv_kernel_size[0] = conv.clone(), ssm.clone(), conv.shape[-1]
                layer.is_conv_states_initialized[0] = layer.is_recurrent_states_initialized[0] = layer.has_previous_state[0] = True
            out = self.inner(input_ids=input_ids, cache=cache, use_cache=True)
            return (out.logits, *(t for layer in out.cache.layers for t in (layer.conv_states[0], layer.recurrent_states[0])))

    return _positional(Step(model), 1 + 2 * layers, split=1)


class DecoderSource(TorchSource):
    """TorchSource for a decoder: the same exporters, examples and runners, on the with-cache module."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.notes: list[str] = []
        model = load_causal_lm(recipe)
        # A step function is its own reference: generated by mlpack's loop over it, eagerly
        self.causal_lm = model if is_transformers_lm(model) else None
        self.prefill_module = None  # an encoder-decoder's prefill program (for_phase("prefill"))
        if recipe.decoder.encoder_decoder:
            if self.causal_lm is None or not getattr(model.config, "is_encoder_decoder", False):
                raise StepError(f"the recipe's decoder config is an encoder-decoder's, but the source is a {type(model).__name__}",
                                hint="give a transformers encoder-decoder (T5, BART: AutoModelForSeq2SeqLM), or the decoder's own config.json")  # fmt: skip
            self.prefill_module, self.module = seq2seq_programs(model, recipe)
        elif recipe.decoder.recurrent:
            if self.causal_lm is None:
                raise StepError(f"the recipe's config is a state-space decoder's, but the source is a {type(model).__name__}",
                                hint="give a transformers Mamba causal LM (MambaForCausalLM)")  # fmt: skip
            self.module = state_step(model, recipe)
        else:
            self.module = with_cache(model, recipe) if self.causal_lm is not None else step_function(model, recipe)
        self.input_names = [i.name for i in recipe.inputs]
        self.output_names = output_names(recipe, 1 + 2 * recipe.decoder.layers)

    def reference_runner(self):
        return TorchEagerRunner(self.module, self.input_names, self.output_names)

    phase: str | None = None  # prefill | decode, for a compiler that needs one program per phase (toolchain.kinds.aoti)

    def for_phase(self, phase: str) -> DecoderSource:
        """This source seen by one of two programs: `decode` takes one new token (seq fixed at 1), `prefill` two or
        more. transformers' attention takes one path for a single query token and another for several, and a
        program keeps the path it was exported on."""
        view = copy.copy(self)
        view.phase = phase
        if self.recipe.decoder.recurrent:  # a state-space decoder has one program, the step
            return view
        if self.prefill_module is not None:  # an encoder-decoder: two programs with their own inputs, one decoder token each
            if phase == "prefill":
                inputs, outputs = self.recipe.decoder.prefill_io(self.recipe.generation.max_length)
                view.recipe = self.recipe.model_copy(update={"inputs": [InputSpec.model_validate(i) for i in inputs], "outputs": outputs})
                view.recipe._path, view.recipe._decoder = self.recipe._path, self.recipe._decoder
                view.module, view.input_names, view.output_names = self.prefill_module, [i["name"] for i in inputs], outputs
            return view
        seq = self.recipe.dims["seq"]
        seq = DimSpec.model_construct(min=1, opt=1, max=1) if phase == "decode" else seq.model_copy(update={"min": 2, "opt": max(2, seq.opt)})
        view.recipe = self.recipe.model_copy(update={"dims": {**self.recipe.dims, "seq": seq}})
        return view

    def dynamic_shapes(self) -> tuple:
        """The attention mask's length is the past's plus the new tokens' (the module says so): export derives it,
        or is told it (one new token: past + 1)."""
        from torch.export import Dim

        shapes = list(super().dynamic_shapes())
        if self.prefill_module is not None or self.recipe.decoder.recurrent:  # no mask over a past: an encoder-decoder, a state-space step
            return tuple(shapes)
        past = shapes[self.input_names.index("past_key_values.0.key")][2]
        batch = {0: shapes[0][0]} if shapes[0] and 0 in shapes[0] else {}
        shapes[self.input_names.index("attention_mask")] = batch | {1: past + 1 if self.phase == "decode" else Dim.AUTO}
        return tuple(shapes)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Reference]:
        """transformers' own greedy `generate` with its cache: each prompt's tokens and the logits that chose them."""
        import torch

        if self.causal_lm is None:
            return self._generate_by_steps(prompts, max_new_tokens)
        refs = []
        eos = list(self.recipe.decoder.eos) or None
        # An encoder-decoder's sequences start with its decoder's start token; a decoder-only's with the prompt
        skip = 1 if self.recipe.decoder.encoder_decoder else None
        with torch.no_grad():
            for prompt in prompts:
                if self.recipe.decoder.audio:  # log-mel features; Whisper's own generate adds its task tokens: the base one is plain greedy
                    from transformers.generation.utils import GenerationMixin

                    generate, ids, mask = functools.partial(GenerationMixin.generate, self.causal_lm), torch.from_numpy(np.asarray(prompt)[None]), {}
                else:
                    generate, ids = self.causal_lm.generate, torch.tensor([prompt])
                    mask = {"attention_mask": torch.ones_like(ids)}
                out = generate(ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, output_logits=True,
                               return_dict_in_generate=True, eos_token_id=eos, pad_token_id=eos[0] if eos else None, **mask, **PLAIN_GREEDY)  # fmt: skip
                tokens = out.sequences[0, skip or len(prompt) :].tolist()
                logits = torch.stack([step[0] for step in out.logits]).float().numpy()
                refs.append(Reference(prompt, tokens, np.ascontiguousarray(logits[: len(tokens)])))
        return refs

    def _generate_by_steps(self, prompts: list[list[int]], max_new_tokens: int) -> list[Reference]:
        """A step function's greedy generation: mlpack's loop over the eager module, with its cache."""
        import torch

        refs = []
        with torch.no_grad(), self.reference_runner() as runner:
            decoder = decoder_for(runner, self.recipe)
            for prompt in prompts:
                tokens = decoder.greedy(prompt, max_new_tokens, self.recipe.decoder.eos)
                refs.append(Reference(prompt, tokens, decoder.teacher_forced(prompt, tokens)))
        return refs

    def text_sample(self, chunks: list[list[int]]) -> TextSample:
        """The source's loss on every token of the perplexity sample after each chunk's first, one forward per chunk.
        An encoder-decoder has none (its loss needs a target text per input): tokens and logits judge it."""
        import torch

        if self.recipe.decoder.encoder_decoder:
            return TextSample([], [])
        with torch.no_grad():
            if self.causal_lm is None:
                with self.reference_runner() as runner:
                    return TextSample(chunks, artifact_nll(decoder_for(runner, self.recipe), chunks))
            nll = [token_nll(self.causal_lm(torch.tensor([c])).logits[0].float().numpy(), c) for c in chunks]
        return TextSample(chunks, nll)


def _tokenizer(recipe: Recipe):
    """The recipe's tokenizer.json, by the `tokenizers` library: a JSON description, no code runs."""
    from tokenizers import Tokenizer

    path = recipe.tokenizer_file()
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise StepError(f"tokenizer: cannot load {path}: {type(e).__name__}: {e}") from e


def text_chunks(recipe: Recipe) -> list[list[int]]:
    """The perplexity sample as token chunks: generation.text cut into max_length pieces, else each prompt."""
    tok, gen = _tokenizer(recipe), recipe.generation
    if gen.text:
        path = recipe.resolve(gen.text)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StepError(f"generation.text: cannot read {path} as UTF-8 text: {e}", hint="point at a plain text file") from e
        chunks = chunk_text(tok.encode(text).ids, gen.max_length)
        if not chunks:
            raise StepError(f"generation.text: {path} has fewer than 2 tokens", hint="give a paragraph or more of text")
        return chunks
    return [ids for ids in (tok.encode(p).ids for p in gen.prompts or []) if len(ids) >= 2]


def encode_prompts(recipe: Recipe) -> list:
    """The generation prompts as token ids, by the recipe's tokenizer.json; a speech model's, its audio clips as log-mel
    features [mels, frames]."""
    if recipe.decoder.audio:
        return audio_features(recipe)
    tok = _tokenizer(recipe)
    ids = [tok.encode(p).ids for p in recipe.generation.prompts]
    long = [i for i, p in enumerate(ids) if len(p) + recipe.generation.max_new_tokens > recipe.generation.max_length]
    if long:
        raise StepError(f"generation.prompts[{long[0]}] is {len(ids[long[0]])} tokens: with max_new_tokens it passes max_length "
                        f"({recipe.generation.max_length})", hint="raise generation.max_length, or shorten the prompt")  # fmt: skip
    return ids


def read_wav(path) -> np.ndarray:
    """A mono 16-bit PCM WAV file's samples in [-1, 1] (the standard library's reader: no codec runs)."""
    import wave

    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def feature_extractor(recipe: Recipe):
    """The speech model's WhisperFeatureExtractor, from its preprocessor_config.json (settings only: no code is loaded)."""
    import json

    from transformers import WhisperFeatureExtractor

    cfg = json.loads(recipe.features_file().read_text())
    return WhisperFeatureExtractor(**{k: v for k, v in cfg.items() if k not in ("feature_extractor_type", "processor_class")})


def audio_features(recipe: Recipe) -> list[np.ndarray]:
    """generation.audio as the log-mel features [mels, frames] the model's encoder takes (padded or cut to its length)."""
    fe = feature_extractor(recipe)
    d = recipe.decoder
    out = []
    for j, rel in enumerate(recipe.generation.audio):
        feats = fe(read_wav(recipe.resolve(rel)), sampling_rate=fe.sampling_rate, return_tensors="np").input_features[0].astype(np.float32)
        if feats.shape != (d.mels, 2 * d.encoded):
            raise StepError(f"generation.audio[{j}]: the feature extractor gives features of shape {list(feats.shape)}; the model's encoder takes "
                            f"[{d.mels}, {2 * d.encoded}]", hint="make preprocessor_config.json's feature_size and chunk_length match the model's config")  # fmt: skip
        out.append(feats)
    return out
