"""A generator served by Triton: a decoupled Python-backend model that takes text and streams tokens.

For a text-generation recipe, each target listed in serve.triton.targets becomes one model whose
model.py (serving/generate_py.txt) runs mlpack's greedy loop over the artifact's programs with the
KV cache as explicit tensors, and sends every token as it is chosen:

    input   TEXT        TYPE_STRING [1]   the prompt, UTF-8
    input   MAX_TOKENS  TYPE_INT32  [1]   optional: new tokens at most (default generation.max_new_tokens)
    output  TEXT        TYPE_STRING [1]   per response: the text the new token adds
    output  TOKEN_ID    TYPE_INT64  [1]   per response: the token

The version folder holds the programs, the tokenizer and generation.json (programs, cache names,
end tokens, context). `mlpack serve-check` streams the recipe's prompts through it over gRPC and
compares the tokens with the source's greedy generation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolchain import kinds
from toolchain.fsutil import link_or_copy
from toolchain.recipe import Recipe
from toolchain.recipe.rules import streaming_refusal
from toolchain.serving import protos

TEMPLATE = Path(__file__).with_name("generate_py.txt")
INPUTS = (("TEXT", "TYPE_STRING", False), ("MAX_TOKENS", "TYPE_INT32", True))  # (name, type, optional)
OUTPUTS = (("TEXT", "TYPE_STRING"), ("TOKEN_ID", "TYPE_INT64"))


def render_config(model_name: str, recipe: Recipe, device: str, instances: int) -> str:
    pb2 = protos.triton_pb2()
    cfg = pb2.ModelConfig(name=model_name, max_batch_size=0, backend="python")
    for name, dtype, optional in INPUTS:
        cfg.input.add(name=name, data_type=pb2.DataType.Value(dtype), dims=[1], optional=optional)
    for name, dtype in OUTPUTS:
        cfg.output.add(name=name, data_type=pb2.DataType.Value(dtype), dims=[1])
    cfg.model_transaction_policy.decoupled = True  # one response per token, then a final flag
    cfg.instance_group.add(count=instances, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_GPU" if device == "cuda" else "KIND_CPU"))
    comments = [
        f"# mlpack generator ({recipe.decoder.model_type or 'decoder'}): TEXT in, one response per greedy token out (decoupled).",
        "# model.py needs numpy, tokenizers and the artifact's runtime in Triton's Python environment.",
    ]
    return protos.to_text(cfg, comments)


def render_model_py(kind: str, device: str) -> str:
    t = kinds.get(kind).triton
    text = TEMPLATE.read_text(encoding="utf-8")
    for token, value in {'"@RUNTIME@"': repr(kind), '"@DEVICE@"': repr(device), "@LOADER@": t.python_backend.strip("\n")}.items():
        if token not in text:
            raise RuntimeError(f"generate_py.txt lacks {token}")
        text = text.replace(token, value)
    return text


def generation_json(recipe: Recipe, kind: str, device: str = "cpu") -> dict:
    """What model.py needs to run the loop: the programs, their tensors in order, the cache and the end tokens."""
    d, g = recipe.decoder, recipe.generation
    return {
        "programs": kinds.get(kind).triton.generator_programs,
        "inputs": [i.name for i in recipe.inputs],
        "outputs": list(recipe.outputs),
        "past": d.past_names(),
        "present": d.present_names(),
        "kv_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "eos": list(g.eos if g.eos is not None else d.eos),
        "max_length": g.max_length,
        "max_new_tokens": g.max_new_tokens,
        "prompts": list(g.prompts or []),  # what the build judged it on: serve-check streams these
        "threads": recipe.serve.threads if device == "cpu" else None,  # serve.threads: the loader gives its runtime as many
    }


def write_generator_model(repo: Path, model_name: str, recipe: Recipe, kind: str, artifact_dir: Path, device: str, instances: int) -> Path:
    """Write repo/<model_name>/config.pbtxt and <version>/ (programs, tokenizer, generation.json, model.py); the model dir.
    ValueError when this target cannot be served as a streaming generator."""
    why = streaming_refusal(recipe, kind)
    if why:
        raise ValueError(why)
    text = render_config(model_name, recipe, device, instances)
    artifact_dir = Path(artifact_dir)
    missing = [p for p in sorted(set(kinds.get(kind).triton.generator_programs.values())) + ["tokenizer.json"] if not (artifact_dir / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{artifact_dir} lacks {', '.join(missing)}")
    model_dir = Path(repo) / model_name
    vdir = model_dir / str(recipe.version)
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    for f in sorted(artifact_dir.iterdir()):  # the programs, their external weights and the tokenizer files
        if f.is_file():
            link_or_copy(f, vdir / f.name)
    (vdir / "generation.json").write_text(json.dumps(generation_json(recipe, kind, device), indent=2) + "\n")
    (vdir / "model.py").write_text(render_model_py(kind, device), encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir
