"""genai: an ONNX Runtime GenAI model folder (the decoder's ONNX with its cache, genai_config.json
and the tokenizer), judged by generating through `onnxruntime_genai` itself: its own generator, cache
and search, teacher-forced on the source's tokens (every greedy choice and its logits), then
free-running greedy against the source's tokens.

Two strategies make the folder, and both go through that same gate: `of:` packages the recipe's
ONNX decoder target (mlpack's export), `builder:` runs ONNX Runtime GenAI's own model builder on
the transformers folder (its fused GroupQueryAttention graph, its INT4/INT8 weights) for the
architectures it knows. The manifest records which (`genai.strategy`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from toolchain import kinds
from toolchain.errors import StepError
from toolchain.generation import Reference, package_tokenizer
from toolchain.kinds.base import Artifact, BuildContext, Kind, RunnerSpec
from toolchain.options import TargetOptions
from toolchain.tensors import onnx_signature

CONFIG = "genai_config.json"
MODEL = "model.onnx"
ONNX_RUNNER = "onnxruntime"  # the decoder's ONNX in the folder is also run by ONNX Runtime for the tensor gate
INSTALL_HINT = "pip install --no-deps onnxruntime-genai==0.18.0 (`make install` does)"
# ORT GenAI's decoder-only model types that read the cache as past_key_values.<i>.key/.value, as mlpack exports it.
# Its other types keep a layout of their own (gpt2: one combined past per layer) or are unknown to it (phi, opt, bloom):
# those run as its generic "decoder" type, which takes the same names (the architecture itself is inside the ONNX).
GENAI_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "granite", "olmo", "nemotron", "smollm3"})


# builder precision -> the weight-only budget it is held to (QUANTIZED_TOLERANCE); fp32 is full precision
BUILDER_PRECISION = {"fp32": None, "int4": "int4", "int8": "int8-weight"}


class GenaiTarget(TargetOptions):
    kind: Literal["genai"]
    of: str | None = None  # mlpack's export: the recipe's ONNX decoder target whose model the folder holds
    builder: Literal["fp32", "int4", "int8"] | None = None  # or ORT GenAI's model builder, at this precision
    block_size: Literal[16, 32, 64, 128, 256] = 32  # the builder's INT4/INT8 weight blocks (MatMulNBits)
    # nodes of the builder's graph left in float (its nodes_to_exclude); the head, as mlpack's own int4 keeps it
    keep_float: list[str] = Field(default_factory=lambda: ["/lm_head/MatMul"])

    @field_validator("keep_float")
    @classmethod
    def _node_names(cls, names: list[str]) -> list[str]:
        for name in names:  # they travel in the builder's `key=value` options: no separators
            if not re.fullmatch(r"/[A-Za-z0-9_./]+", name):
                raise PydanticCustomError("builder_node", "{name!r} is not a node name of the builder's graph",
                                          {"name": name, "fix": "name MatMul nodes as the builder does: /lm_head/MatMul, /model/layers.0/mlp/down_proj/MatMul"})  # fmt: skip
        return names

    @model_validator(mode="after")
    def _one_strategy(self) -> GenaiTarget:
        if (self.of is None) == (self.builder is None):
            raise PydanticCustomError(
                "genai_strategy",
                "give exactly one of `of:` (package an ONNX decoder target of this recipe) or `builder:` "
                "(fp32 | int4 | int8: ONNX Runtime GenAI's model builder on source.transformers)",
                {"fix": "keep `of:` to package mlpack's export, or `builder:` to let ORT GenAI's builder make the folder"},
            )
        return self

    @property
    def precision_mode(self) -> str | None:
        return BUILDER_PRECISION.get(self.builder) if self.builder else None


def genai_config(recipe) -> dict:
    """genai_config.json for the decoder: its cache layout under the names mlpack exports, greedy search."""
    d, gen = recipe.decoder, recipe.generation
    eos = list(d.eos) or [d.vocab - 1]
    return {
        "model": {
            "bos_token_id": d.bos if d.bos is not None else eos[0],
            "context_length": gen.max_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL,
                "head_size": d.head_dim,
                "hidden_size": d.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": d.heads,
                "num_hidden_layers": d.layers,
                "num_key_value_heads": d.kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": d.pad if d.pad is not None else eos[0],
            "type": d.model_type if d.model_type in GENAI_TYPES else "decoder",
            "vocab_size": d.vocab,
        },
        "search": {
            "do_sample": False,
            "max_length": gen.max_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },  # fmt: skip
    }


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise StepError(f"the genai target needs onnxruntime_genai, which is not importable here ({e})", hint=INSTALL_HINT) from None
    return og


class GenaiKind(Kind):
    name = "genai"
    order = 60
    summary = "ONNX Runtime GenAI model folder (decoder with cache, genai_config.json, tokenizer)"
    options = GenaiTarget
    frameworks = frozenset({"pytorch"})
    tasks = frozenset({"text-generation"})
    tools = ("onnxruntime-genai", "tokenizers")
    manifest_fields = {"genai": {"type": "object", "required": ["config", "greedy_tokens_equal"]}}

    def check(self, spec: GenaiTarget, recipe) -> list:
        if recipe.generates and recipe.decoder.recurrent:
            return [(("kind",), "ONNX Runtime GenAI has no state-space (Mamba) decoder type: its folders hold a KV cache",
                     "remove this target; the onnx and aoti targets build state-space decoders")]  # fmt: skip
        if recipe.generates and recipe.seq2seq:
            return [(("kind",), "an ORT GenAI folder is built for decoder-only models here, not encoder-decoders",
                     "remove this target; the onnx and aoti targets build encoder-decoders")]  # fmt: skip
        if spec.builder:
            if not recipe.source.transformers:
                return [(("builder",), "ORT GenAI's model builder reads a transformers folder",
                         "give source.transformers (a save_pretrained folder), or package an onnx target with `of:`")]  # fmt: skip
            return []
        names = [t.target_name for t in recipe.targets]
        if spec.of not in names:
            return [(("of",), f"no target is named '{spec.of}'", f"name the ONNX decoder target it packages; targets are: {', '.join(names)}")]
        of = recipe.target(spec.of)
        if ONNX_RUNNER not in kinds.get(of.kind).runners or getattr(of, "quantize", None) == "fp16":
            return [(("of",), f"'{spec.of}' is not an FP32 or INT8 ONNX decoder target", "name an onnx target of this recipe")]
        return []

    def precision_of(self, spec: GenaiTarget, recipe) -> str | None:
        """The builder's precision, or the packaged target's (a folder of onnx-int4 holds INT4 weights)."""
        if spec.builder or spec.of not in {t.target_name for t in recipe.targets}:
            return spec.precision_mode
        of = recipe.target(spec.of)
        return kinds.get(of.kind).precision_of(of, recipe)

    def requires(self, spec: GenaiTarget, recipe) -> list[str]:
        return [spec.of] if spec.of else []

    def skip_reason(self, spec: GenaiTarget) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("onnxruntime_genai") else f"onnxruntime_genai is not installed here ({INSTALL_HINT})"

    def build(self, source, spec: GenaiTarget, ctx: BuildContext) -> Artifact:
        if spec.builder:
            return self._build_with_builder(source.recipe, spec, ctx)
        dep = ctx.deps[spec.of]
        recipe = source.recipe
        for f in dep.files:  # the model and its external data, side by side as ORT expects
            shutil.copyfile(ctx.root / f.path, ctx.workdir / f.path.rsplit("/", 1)[-1])
        (ctx.workdir / CONFIG).write_text(json.dumps(genai_config(recipe), indent=2) + "\n")
        package_tokenizer(recipe, ctx.workdir)  # ORT GenAI loads it from the folder
        _og().Model(str(ctx.workdir))  # ORT GenAI must load the folder, or the build says why
        path = ctx.workdir / MODEL
        runner = dep.runner.model_copy(update={"path": str(path)})
        files = sorted(p for p in ctx.workdir.iterdir() if p.is_file())
        return Artifact(
            files, onnx_signature(path), runner, extra={"genai": {"config": CONFIG, "strategy": "mlpack-export", "of": spec.of, "greedy_tokens_equal": None}}
        )

    def _build_with_builder(self, recipe, spec: GenaiTarget, ctx: BuildContext) -> Artifact:
        """ORT GenAI's model builder on the transformers folder, offline and without remote code (its default,
        and the folder was checked for auto_map). Its graph extends a cache by several tokens one row at a
        time (GroupQueryAttention), so the tensor gate runs its samples row by row."""
        og = _og()
        folder = recipe.resolve(recipe.source.transformers)
        options = []
        if spec.builder != "fp32":
            options = ["--extra_options", f"block_size={spec.block_size}", "accuracy_level=4"]
            options += [f"nodes_to_exclude={','.join(spec.keep_float)}"] if spec.keep_float else []
        with tempfile.TemporaryDirectory(prefix="genai-builder-") as cache:
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(ctx.workdir),
                   "-p", spec.builder, "-e", "cpu", "-c", cache, *options]  # fmt: skip
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        print(proc.stdout[-20000:], proc.stderr[-20000:], sep="\n", flush=True)  # into the step's log
        if proc.returncode != 0 or not (ctx.workdir / MODEL).is_file():
            last = next((ln for ln in reversed(proc.stdout.splitlines() + proc.stderr.splitlines()) if ln.strip()), "no output")
            raise StepError(
                f"ONNX Runtime GenAI's model builder failed on {folder.name} ({recipe.decoder.model_type}): {last.strip()}",
                hint="it builds the architectures it knows; package mlpack's export instead: `of:` an onnx target of this recipe",
            )
        og.Model(str(ctx.workdir))  # ORT GenAI must load what its builder wrote
        path = ctx.workdir / MODEL
        sig = onnx_signature(path)
        runner = RunnerSpec(runner=ONNX_RUNNER, path=str(path), inputs=[t.name for t in sig.inputs], outputs=[t.name for t in sig.outputs],
                            options={"rows": True})  # fmt: skip
        files = sorted(p for p in ctx.workdir.iterdir() if p.is_file())
        record = {"precision": spec.builder, "execution_provider": "cpu", "version": og.__version__}
        if spec.builder != "fp32":
            record |= {"block_size": spec.block_size, "accuracy_level": 4, "keep_float": spec.keep_float}
        extra = {"genai": {"config": CONFIG, "strategy": "ort-genai-builder", "builder": record, "greedy_tokens_equal": None}}
        return Artifact(files, sig, runner, extra=extra)

    def generation_logits(self, artifact: Artifact, recipe, refs: list[Reference]) -> tuple[list[np.ndarray], str, list[str]]:
        """ORT GenAI's own generator: teacher-forced logits (append_tokens, get_logits), then free-running greedy tokens."""
        og = _og()
        folder = str(artifact.files[0].parent)
        model = og.Model(folder)
        logits, problems = [], []
        for i, ref in enumerate(refs):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ref.prompt) + len(ref.tokens), do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(ref.prompt, np.int32))
            rows = [np.asarray(gen.get_logits(), np.float32).reshape(-1)]
            for token in ref.tokens[:-1]:
                gen.append_tokens(np.asarray([token], np.int32))
                rows.append(np.asarray(gen.get_logits(), np.float32).reshape(-1))
            logits.append(np.stack(rows))
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ref.prompt) + len(ref.tokens), do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(ref.prompt, np.int32))
            tokens = []
            while not gen.is_done() and len(tokens) < len(ref.tokens):
                gen.generate_next_token()
                tokens.append(int(gen.get_next_tokens()[0]))
            if tokens != ref.tokens:
                problems.append(f"prompt {i}: onnxruntime_genai's greedy search generated {tokens}, the source {ref.tokens}")
        artifact.extra["genai"]["greedy_tokens_equal"] = not problems
        return logits, "onnxruntime_genai's own generator (teacher-forced logits, then free-running greedy)", problems

    embedded_runtime = "ortgenai"

    def text_generator(self, folder):
        """onnxruntime_genai end to end: its tokenizer encodes the prompt, its greedy search generates, its tokenizer decodes."""
        og = _og()
        model = og.Model(str(folder))
        tok = og.Tokenizer(model)

        def generate(text: str, new: int) -> tuple[list[int], list[int], str]:
            ids = [int(x) for x in tok.encode(text)]
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + new, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(ids, np.int32))
            tokens: list[int] = []
            while not gen.is_done() and len(tokens) < new:
                gen.generate_next_token()
                tokens.append(int(gen.get_next_tokens()[0]))
            return ids, tokens, tok.decode(np.asarray(tokens, np.int32))

        return generate

    def generator(self, folder, threads: int | None = None):
        """ORT GenAI's own loop: its generator, cache and greedy search over the folder, on `threads` intra-op
        threads (its session's default is every core, which a 1-thread comparison must not get)."""
        og = _og()
        config = og.Config(str(folder))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        model = og.Model(config)

        def generate(ids: np.ndarray, new: int) -> None:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, do_sample=False, batch_size=ids.shape[0])
            gen = og.Generator(model, params)
            gen.append_tokens(ids.astype(np.int32))
            for _ in range(new - 1):
                gen.generate_next_token()

        return generate


KIND = GenaiKind()
