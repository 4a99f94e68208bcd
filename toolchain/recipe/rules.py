"""Rules across recipe sections, the checks of the files it names, and the GPU-matrix expansion.

Each rule returns (loc, message, hint) triples; loading turns them into problems with YAML lines.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path

from toolchain import kinds, sniff
from toolchain.recipe.pipeline import TOKENIZER_OUTPUTS
from toolchain.recipe.schema import DTYPE_BYTES, MAX_SAMPLE_BYTES, Recipe, SourceFile, SpecificVersions, triton_model_name
from toolchain.serving.vllm_quant import FAMILIES

Found = list[tuple[tuple, str, str | None]]


def _cross_check(r: Recipe) -> Found:
    """Checks that relate sections; returns (loc, message, hint) triples."""
    out: Found = []
    names = [t.target_name for t in r.targets]
    seen: set[str] = set()
    for i, t in enumerate(r.targets):
        n = t.target_name
        if n in seen:
            out.append((("targets", i, "name"), f"target name '{n}' is used twice", "give one of them a distinct `name:`"))
        seen.add(n)
        kind = kinds.get(t.kind)
        if r.source.framework not in kind.frameworks:
            ok = ", ".join(sorted(k for k in kinds.frameworks().get(r.source.framework, []) if r.task in kinds.get(k).tasks))
            out.append((("targets", i, "kind"), f"'{t.kind}' does not build from a {r.source.framework} source", f"use one of: {ok}"))
        elif r.task not in kind.tasks:
            ok = ", ".join(k.name for k in kinds.kinds().values() if r.task in k.tasks and r.source.framework in k.frameworks)
            what = "a decoder with its cache" if r.generates else "a model that answers in one call"
            out.append((("targets", i, "kind"), f"'{t.kind}' does not build {what} (task: {r.task})", f"use one of: {ok}"))
        else:
            out += [(("targets", i, *loc), msg, hint) for loc, msg, hint in kind.check(t, r)]
    out += _task_checks(r)
    out += _pipeline_checks(r)
    in_names = [s.name for s in r.inputs]
    for i, spec in enumerate(r.inputs):
        if all(not isinstance(d, str) or d in r.dims for d in spec.shape):
            peak = math.prod(r.dims[d].max if isinstance(d, str) else d for d in spec.shape) * DTYPE_BYTES[spec.dtype]
            if peak > MAX_SAMPLE_BYTES:
                out.append((("inputs", i, "shape"), f"at every dim's max, one sample of '{spec.name}' is {peak / 2**30:.1f} GiB; parity samples that large do not fit in memory",
                            f"lower the dims' max so a sample stays under {MAX_SAMPLE_BYTES >> 30} GiB"))  # fmt: skip
        if in_names.count(spec.name) > 1 and in_names.index(spec.name) != i:
            out.append((("inputs", i, "name"), f"input name '{spec.name}' is used twice", None))
        for j, d in enumerate(spec.shape):
            if isinstance(d, str) and d not in r.dims:
                add = f"add `dims: {{{d}: {{min: 1, opt: 8, max: 64}}}}`"
                close = difflib.get_close_matches(d, list(r.dims), n=1, cutoff=0.6)
                out.append(
                    (("inputs", i, "shape", j), f"dynamic dimension '{d}' has no entry under dims", f"did you mean '{close[0]}'? or {add}" if close else add)
                )
    if r.outputs and len(set(r.outputs)) != len(r.outputs):
        out.append((("outputs",), "output names must be distinct", None))
    for j, name in enumerate(r.parity.scores):
        if r.outputs and name not in r.outputs:
            out.append((("parity", "scores", j), f"'{name}' is not one of the outputs ({', '.join(r.outputs)})", _did_you_mean(name, list(r.outputs))))
        elif not r.outputs and not re.fullmatch(r"output_\d+", name):
            out.append(
                (
                    ("parity", "scores", j),
                    f"'{name}' names no output: the recipe has no `outputs`, so they are output_0, output_1, ...",
                    "name the outputs under `outputs:`",
                )
            )
    for key in r.parity.per_target:
        if key not in names:
            out.append((("parity", "per_target", key), f"no target is named '{key}'", _did_you_mean(key, names)))
    if r.select and r.select.batch is not None:
        first = r.inputs[0].shape[0] if r.inputs[0].shape else None
        if not isinstance(first, str):
            out.append(
                (("select", "batch"), f"the inputs have no batch dim to size (input '{r.inputs[0].name}' has shape {r.inputs[0].shape})", "remove select.batch")
            )
        elif first in r.dims and not r.dims[first].min <= r.select.batch <= r.dims[first].max:
            d = r.dims[first]
            out.append((("select", "batch"), f"{r.select.batch} is outside dims.{first} [{d.min}, {d.max}]", f"pick a batch between {d.min} and {d.max}"))
    if r.serve.triton:
        out += _triton_checks(r, names)
    if r.serve.tfserving:
        out += _tfserving_checks(r, names)
    if r.serve.vllm is not None and not (r.generates and r.source.transformers and not r.seq2seq):
        out.append((("serve", "vllm"), "vLLM serves a decoder-only text-generation model from its transformers folder (config.json, safetensors)",
                     "use task: text-generation with source.transformers, or remove serve.vllm"))  # fmt: skip
    elif r.serve.vllm is not None and r.serve.vllm.quantize:
        out += _vllm_quantize_checks(r)
    return out


def _vllm_quantize_checks(r: Recipe) -> Found:
    q = r.serve.vllm.quantize
    if len(set(q)) != len(q):
        return [(("serve", "vllm", "quantize"), f"{q} names a scheme twice", "list each of w8a8, w4a16 once")]
    try:
        family = json.loads(r.resolve(r.source.transformers).joinpath("config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return []  # the decoder rules report an unreadable config.json
    if family not in FAMILIES:
        return [(("serve", "vllm", "quantize"), f"model_type {family!r}: quantized vLLM folders are written for {', '.join(FAMILIES)} only "
                 "(decoder layers of nn.Linear, the layout vLLM's compressed-tensors loader reads)", "remove serve.vllm.quantize")]  # fmt: skip
    return []


def _task_checks(r: Recipe) -> Found:
    """text-generation needs a PyTorch decoder, prompts and a tokenizer; the other task has no generation section."""
    if not r.generates:
        if r.generation is not None or r.tokenizer is not None:
            key = "generation" if r.generation is not None else "tokenizer"
            return [((key,), f"{key} applies to task: text-generation", "add `task: text-generation`, or remove it")]
        if r.source.transformers:
            return [
                (
                    ("source", "transformers"),
                    "a transformers folder is a source for task: text-generation",
                    "add `task: text-generation`, or use source.factory",
                )
            ]
        return []
    if r.source.framework != "pytorch":
        return [(("source", "framework"), "text-generation builds PyTorch decoders", "use framework: pytorch")]
    if r.generation is None:
        return [(("generation",), "text-generation needs a generation section: the prompts its greedy tokens are judged on",
                 "add `generation: {prompts: [...], max_new_tokens: 16}`")]  # fmt: skip
    if r.source.factory and not r.generation.config:
        return [(("generation", "config"), "a factory's decoder needs its config.json for the cache layout", "give generation.config")]
    if r.tokenizer_file() is None:
        return [(("tokenizer",), "text-generation needs a tokenizer to encode the prompts", "give tokenizer: a tokenizer.json, or the folder holding one")]
    d, g = r.decoder, r.generation
    if d.audio and not g.audio:
        return [(("generation", "audio"), f"a speech encoder-decoder ({d.model_type}: num_mel_bins in its config) is judged on audio, not prompts",
                 "give generation.audio: a list of mono 16-bit PCM WAV files")]  # fmt: skip
    if g.audio and not d.audio:
        return [(("generation", "audio"), "generation.audio is for speech encoder-decoders (num_mel_bins in the config); this model takes text",
                 "remove audio and give generation.prompts")]  # fmt: skip
    if d.audio and g.prompts:
        return [(("generation", "prompts"), "a speech encoder-decoder takes no text prompts here (its decoder starts from decoder_start_token_id)",
                 "remove prompts; generation.audio holds its inputs")]  # fmt: skip
    if not d.audio and not g.prompts:
        return [(("generation", "prompts"), "text-generation needs prompts: the texts its greedy tokens are judged on", "add `prompts: [...]`")]
    vocab = d.vocab
    bad = [(j, e) for j, e in enumerate(r.generation.eos or []) if e >= vocab]
    if bad:
        return [(("generation", "eos", bad[0][0]), f"token id {bad[0][1]} is outside the model's vocabulary of {vocab}", f"use ids below {vocab}")]
    return []


def streaming_refusal(r: Recipe, kind: str) -> str | None:
    """Why a generator's target cannot be served as a streaming Triton model here (None: it can)."""
    d = r.decoder
    served = kinds.get(kind).triton
    if served is None or served.generator_programs is None:
        able = ", ".join(k.name for k in kinds.kinds().values() if k.triton and k.triton.generator_programs)
        return f"streaming generation serves {able} artifacts; a {kind} target is not served by Triton yet"
    if d.encoder_decoder or d.recurrent:
        what = "an encoder-decoder" if d.encoder_decoder else "a state-space decoder"
        return f"streaming generation serves decoder-only models with a KV cache here; {what} ({d.model_type}) is not served yet"
    return None


def _triton_checks(r: Recipe, names: list[str]) -> Found:
    """serve.triton against the targets, and every rule Triton applies to a config that the recipe alone decides."""
    out: Found = []
    tri = r.serve.triton
    for j, key in enumerate(tri.targets):
        if key not in names:
            out.append((("serve", "triton", "targets", j), f"no target is named '{key}'", _did_you_mean(key, names)))
        elif r.generates and (why := streaming_refusal(r, r.target(key).kind)):
            out.append((("serve", "triton", "targets", j), why, "serve a target of a decoder-only model that streams, or remove it from serve.triton"))
        elif (served := kinds.get(r.target(key).kind).triton) is None:
            out.append(
                (
                    ("serve", "triton", "targets", j),
                    f"Triton cannot serve the {r.target(key).kind} target '{key}'",
                    f"serve targets of these kinds: {', '.join(_servable('triton'))}",
                )
            )
        elif tri.backend == "python" and served.python_backend is None and not served.native_only:
            out.append(
                (
                    ("serve", "triton", "backend"),
                    f"backend: python has no model.py for the {r.target(key).kind} target '{key}'",
                    f"use backend: native ({served.platform or served.backend}), or {_with_python_backend(r)}",
                )
            )
    out += _duplicates(tri.targets, ("serve", "triton", "targets"))
    model_names: dict[str, str] = {}
    for j, key in enumerate(tri.targets):
        model = triton_model_name(r.name, key)
        if key in names and model in model_names and model_names[model] != key:
            out.append((("serve", "triton", "targets", j), f"targets '{model_names[model]}' and '{key}' would both be served as Triton model '{model}'",
                         "rename one of them: Triton model names turn '-' into '_'"))  # fmt: skip
        model_names.setdefault(model, key)
    if tri.max_batch_size > 0:
        out += _batching_checks(r, ("serve", "triton", "max_batch_size"), tri.max_batch_size, "set max_batch_size: 0, or ")
        out += _preferred_sizes(r)
    elif tri.dynamic_batching is not None:
        out.append((("serve", "triton", "dynamic_batching"), "dynamic_batching needs max_batch_size > 0 (Triton batches nothing at 0)",
                    "set serve.triton.max_batch_size, or remove dynamic_batching"))  # fmt: skip
    out += _instance_kinds(r, names)
    out += _policy_check(r, tri.version_policy, ("serve", "triton", "version_policy"))
    return out


def _preferred_sizes(r: Recipe) -> Found:
    """Triton refuses a config whose preferred batch size exceeds max_batch_size (model_config_utils.cc)."""
    tri = r.serve.triton
    sizes = tri.dynamic_batching.preferred_batch_size if tri.dynamic_batching else []
    first = r.inputs[0].shape[0] if r.inputs[0].shape else None
    limit = r.dims[first].max if isinstance(first, str) and first in r.dims else None
    out: Found = []
    for j, size in enumerate(sizes):
        if size <= tri.max_batch_size:
            continue
        fix = f"lower it to at most {tri.max_batch_size}"
        if limit is None or max(sizes) <= limit:  # within what the artifacts are built for
            fix += f", or raise serve.triton.max_batch_size to {max(sizes)}"
        out.append(
            (
                ("serve", "triton", "dynamic_batching", "preferred_batch_size", j),
                f"preferred batch size {size} exceeds max_batch_size ({tri.max_batch_size}); Triton refuses to load such a config",
                fix,
            )
        )
    return out


def _instance_kinds(r: Recipe, names: list[str]) -> Found:
    """An explicit instance_group.kind must suit every artifact served natively: a kind that binds its artifact
    to one device says so through its `auto` instance kind (an AOTI CPU package: KIND_CPU; a TensorRT plan: KIND_GPU)."""
    tri = r.serve.triton
    if tri.instance_group.kind == "auto":
        return []
    wanted = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}[tri.instance_group.kind]
    other = {"cpu": "gpu", "gpu": "cpu"}[tri.instance_group.kind]
    out: Found = []
    for key in dict.fromkeys(tri.targets):
        if key not in names:
            continue
        spec = r.target(key)
        kind = kinds.get(spec.kind)
        if kind.triton is None or not (tri.backend == "native" or kind.triton.native_only):
            continue
        bound = kind.triton_instance_kind(spec.target_device)
        if bound in ("KIND_CPU", "KIND_GPU") and bound != wanted:
            runs_on = "the CPU only" if bound == "KIND_CPU" else "a GPU only"
            runs_on += f" (device: {spec.device})" if hasattr(spec, "device") else ""
            out.append(
                (
                    ("serve", "triton", "instance_group", "kind"),
                    f"kind: {tri.instance_group.kind} puts '{key}' on {tri.instance_group.kind.upper()} instances, but its {spec.kind} artifact runs on {runs_on}",
                    f"use kind: auto (each model on the device its artifact needs) or {other}, or leave '{key}' out of serve.triton.targets",
                )
            )
    return out


def _tfserving_checks(r: Recipe, names: list[str]) -> Found:
    tfs = r.serve.tfserving
    if r.source.framework != "tensorflow":
        return [(("serve", "tfserving"), f"TF Serving serves SavedModels, which only TensorFlow sources build; this recipe's source is {r.source.framework}",
                 "serve it with serve.triton, or remove serve.tfserving")]  # fmt: skip
    out = _duplicates(tfs.targets, ("serve", "tfserving", "targets"))
    out += _policy_check(r, tfs.version_policy, ("serve", "tfserving", "version_policy"))
    for j, key in enumerate(tfs.targets):
        if key not in names:
            out.append((("serve", "tfserving", "targets", j), f"no target is named '{key}'", _did_you_mean(key, names)))
        elif kinds.get(r.target(key).kind).tfserving is None:
            ok = " or ".join(_servable("tfserving"))
            out.append(
                (("serve", "tfserving", "targets", j), f"TF Serving serves SavedModels; '{key}' is a {r.target(key).kind} target", f"list {ok} targets here")
            )
    if tfs.batching:
        out += _batching_checks(r, ("serve", "tfserving", "batching", "max_batch_size"), tfs.batching.max_batch_size, "remove serve.tfserving.batching, or ")
    return out


def _duplicates(items: list[str], loc: tuple) -> Found:
    seen: set[str] = set()
    out = []
    for j, item in enumerate(items):
        if item in seen:
            out.append(((*loc, j), f"'{item}' is listed twice", "list each target once"))
        seen.add(item)
    return out


def _policy_check(r: Recipe, policy, loc: tuple) -> Found:
    """A specific-versions policy must serve the version this build writes."""
    if isinstance(policy, SpecificVersions) and r.version not in policy.specific:
        return [(loc, f"serves versions {sorted(set(policy.specific))}, but this build writes version {r.version}",
                 f"add {r.version} to specific, or set version: to one of them")]  # fmt: skip
    return []


def _with_python_backend(r: Recipe) -> str:
    """What to serve instead with backend: python: the recipe's targets whose kind has a model.py."""
    ok = [t.target_name for t in r.targets if (k := kinds.get(t.kind).triton) is not None and k.python_backend is not None]
    if len(ok) == 1:
        return f"serve the {ok[0]} target"
    if ok:
        return f"serve one of the targets {', '.join(ok)}"
    return "add a target of a kind with a Python backend (" + ", ".join(n for n, k in kinds.kinds().items() if k.triton and k.triton.python_backend) + ")"


def _servable(server: str) -> list[str]:
    """Kinds with a model for `server` (triton | tfserving)."""
    return [k.name for k in kinds.kinds().values() if getattr(k, server) is not None]


def _batching_checks(r: Recipe, loc: tuple, max_batch_size: int, off: str) -> Found:
    """A server batching requests needs every input's first dim dynamic, shared, and large enough."""
    for spec in r.inputs:
        first = spec.shape[0] if spec.shape else None
        if not isinstance(first, str):
            return [
                (
                    loc,
                    f"batching needs a dynamic first dimension, but input '{spec.name}' has shape {spec.shape}",
                    f"{off}make the first dimension of every input a named dim such as `batch`",
                )
            ]
        if first in r.dims and max_batch_size > r.dims[first].max:
            return [
                (
                    loc,
                    f"{max_batch_size} exceeds dims.{first}.max ({r.dims[first].max})",
                    f"lower max_batch_size to at most {r.dims[first].max} or raise dims.{first}.max",
                )
            ]
    firsts = {s.shape[0] for s in r.inputs if s.shape}
    if len(firsts) > 1:
        return [(loc, f"inputs disagree on the batch dimension ({', '.join(sorted(map(str, firsts)))})", "name the first dimension of every input the same")]
    return []


def _pipeline_checks(r: Recipe) -> Found:
    """preprocess and postprocess come together, for a one-call model, and fit its inputs and outputs."""
    pre, post = r.preprocess, r.postprocess
    if pre is None and post is None:
        return []
    if pre is None or post is None:
        have, need = ("preprocess", "postprocess") if post is None else ("postprocess", "preprocess")
        return [((have,), f"{have} needs {need}: the pipeline takes raw inputs and gives answers",
                 f"add `{need}:` (see docs/serving.md, raw inputs)")]  # fmt: skip
    if r.generates:
        return [(("preprocess",), "a text-generation recipe has its own text pipeline (tokenizer, generation)", "remove preprocess and postprocess")]
    out: Found = []
    names = [i.name for i in r.inputs]
    if pre.text is not None:
        for i, spec in enumerate(r.inputs):
            if spec.name not in TOKENIZER_OUTPUTS:
                out.append((("inputs", i, "name"), f"input '{spec.name}' is not something a tokenizer gives ({', '.join(TOKENIZER_OUTPUTS)})",
                            "name the model's inputs as the tokenizer's outputs, or drop preprocess.text"))  # fmt: skip
            elif spec.dtype not in ("int64", "int32"):
                out.append((("inputs", i, "dtype"), f"'{spec.name}' holds token ids or a mask: int64 or int32, not {spec.dtype}", "use dtype: int64"))
        if "input_ids" not in names:
            out.append((("inputs",), "preprocess.text feeds input_ids, and no input has that name", "name the token-id input `input_ids`"))
    else:
        img = pre.image
        if len(r.inputs) != 1:
            out.append((("inputs",), f"preprocess.image feeds one image tensor; the model has {len(r.inputs)} inputs", "keep one input, the image"))
        else:
            spec = r.inputs[0]
            want = [3, img.crop, img.crop] if img.layout == "nchw" else [img.crop, img.crop, 3]
            fits = len(spec.shape) == 4 and all(d == w or (isinstance(d, str) and d in r.dims and r.dims[d].min <= w <= r.dims[d].max)
                                                 for d, w in zip(spec.shape[1:], want))  # fmt: skip
            if spec.dtype != "float32":
                out.append((("inputs", 0, "dtype"), f"preprocess.image gives float32 pixels; input '{spec.name}' is {spec.dtype}", "use dtype: float32"))
            if not fits:
                out.append((("inputs", 0, "shape"), f"preprocess.image gives [batch, {', '.join(map(str, want))}] ({img.layout}); input '{spec.name}' has shape {spec.shape}",
                            f"set the input's shape to [batch, {', '.join(map(str, want))}], or preprocess.image.crop/layout to the model's"))  # fmt: skip
    spec = post.spec
    outputs = list(r.outputs or [])
    if outputs and spec.output not in outputs:
        out.append(
            (("postprocess", post.answer, "output"), f"'{spec.output}' is not one of the outputs ({', '.join(outputs)})", _did_you_mean(spec.output, outputs))
        )
    elif not outputs:
        out.append((("outputs",), "postprocess names a model output: the recipe must name them", "add `outputs: [...]`"))
    if post.embedding is not None and post.embedding.pool == "mean" and "attention_mask" not in names:
        out.append((("postprocess", "embedding", "pool"), "mean pooling averages the tokens the attention mask keeps; the model takes no attention_mask",
                     "add an attention_mask input, or pool: cls"))  # fmt: skip
    if post.embedding is not None and pre.image is not None and post.embedding.pool != "none":
        out.append((("postprocess", "embedding", "pool"), "token pooling needs preprocess.text", "use pool: none for an image embedding"))
    return out


def _check_files(r: Recipe) -> Found:
    """Every path the recipe names must exist, relative to the recipe file, and be what its key says."""
    checks = [(("source", f.key), f) for f in r.source.files(r.root)]
    if r.data:
        for key in ("path", "parity", "calibration"):
            value = getattr(r.data, key)
            if value is not None:
                rel = value if isinstance(value, str) else value.path
                checks.append((("data", key) if isinstance(value, str) else ("data", key, "path"), SourceFile("data", rel, r.root / rel, is_dir=False)))
    if r.generates and r.tokenizer_file() is not None:
        tok = r.tokenizer_file()
        checks.append((("tokenizer",) if r.tokenizer else ("source", "transformers"), SourceFile("tokenizer", str(tok), tok, is_dir=False)))
    pipeline_locs = {"tokenizer": ("preprocess", "text", "tokenizer"), "labels": ("postprocess", "classify", "labels")}
    raw = [f for f in r.pipeline_files() if f.key == "raw"]
    for f in r.pipeline_files():
        if f.key != "raw":
            checks.append((pipeline_locs[f.key], SourceFile(f.key, f.rel, f.path / "tokenizer.json", is_dir=False) if f.is_dir else f))
    for j, f in enumerate(raw):
        loc = ("preprocess", "samples") if isinstance(r.preprocess.samples, str) else ("preprocess", "samples", j)
        checks.append((loc, f if f.is_dir or r.preprocess.text is not None else SourceFile("image", f.rel, f.path, is_dir=False)))
    if r.generation is not None and r.generation.text:
        checks.append((("generation", "text"), SourceFile("text", r.generation.text, r.resolve(r.generation.text), is_dir=False)))
    if r.generation is not None and r.generation.audio:
        checks += [(("generation", "audio", j), SourceFile("audio", rel, r.resolve(rel), is_dir=False)) for j, rel in enumerate(r.generation.audio)]
        if r.decoder.audio:
            checks.append((("generation", "config") if r.generation.config else ("source", "transformers"),
                           SourceFile("features", "preprocessor_config.json", r.features_file(), is_dir=False)))  # fmt: skip
    out: Found = []
    for loc, f in checks:
        try:
            p = f.path.resolve()  # resolved already, unless it cannot be: then this says why
            ok = p.is_dir() if f.is_dir else p.is_file()
        except (OSError, ValueError) as e:  # a NUL byte, a name longer than the filesystem takes
            out.append((loc, f"not a usable path: {e}", f"paths are relative to the recipe's folder ({r.root})"))
            continue
        if not ok:
            out.append((loc, f"{'directory' if f.is_dir else 'file'} not found: {p}", f"paths are relative to the recipe's folder ({r.root})"))
            continue
        why, fix = _content_problem(r, f.key, p)
        if why:
            out.append((loc, why, fix))
    return out


def _content_problem(r: Recipe, key: str, p: Path) -> tuple[str | None, str | None]:
    """Whether an existing file is what its key says, judged from its bytes (nothing is loaded or run)."""
    if key == "factory":
        return sniff.factory_problem(p, r.source.factory.rsplit(":", 1)[1]), "source.factory is path/to/file.py:callable, a top-level function or class"
    if key == "weights":
        return sniff.weights_problem(p), "save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
    if key == "exported":
        return sniff.zip_problem(p, "torch.export .pt2 archive"), "save it with torch.export.save(exported_program, 'model.pt2')"
    if key == "keras":
        return sniff.keras_problem(p), "save it with model.save('model.keras')"
    if key == "savedmodel":
        return sniff.savedmodel_problem(p), "point at the folder tf.saved_model.save() wrote"
    if key == "transformers":
        return sniff.transformers_problem(
            p
        ), "save it with model.save_pretrained(folder) (safetensors, no custom code); for code of your own, use source.factory"
    if key == "tokenizer":
        return sniff.tokenizer_problem(p), "point at the tokenizer.json tokenizer.save_pretrained(folder) wrote, or at that folder"
    if key == "raw" and r.preprocess is not None and r.preprocess.image is not None:  # a folder of images
        return sniff.image_folder_problem(p), "give image files (JPEG, PNG), or a folder holding them"
    if key == "image":
        return sniff.image_problem(p), "give a JPEG or PNG file"
    if key == "labels":
        return sniff.text_problem(p), "give a UTF-8 text file, one label per line in class order"
    if key in ("text", "raw"):
        return sniff.text_problem(p), "point at a plain UTF-8 text file (the sample perplexity is measured on)"
    if key == "audio":
        return sniff.wav_problem(p, features_rate(r)), "give a mono 16-bit PCM WAV file at the feature extractor's sampling_rate"
    if key == "features":
        return sniff.features_problem(p), "save the model's feature extractor with WhisperFeatureExtractor.save_pretrained(folder)"
    return sniff.zip_problem(p, ".npz file"), "save samples with numpy.savez(path, **{input_name: array})"


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else (f"targets are: {', '.join(choices)}" if choices else None)


def gpu_slug(gpu: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", gpu.lower())


def _expand_matrix(r: Recipe) -> Found:
    """`gpus: [A, B]` on a target becomes targets <name>-a and <name>-b, each with `gpu` set.

    After validation, so problems point at the lines the user wrote. Serving lists and
    per-target tolerances that name the matrix target apply to each of its artifacts.
    """
    if not any(t.gpus for t in r.targets):
        return []
    expanded, of = [], {}
    for t in r.targets:
        if not t.gpus:
            expanded.append(t)
            continue
        for g in t.gpus:
            name = f"{t.target_name}-{gpu_slug(g)}"
            expanded.append(t.model_copy(update={"name": name, "gpu": g, "gpus": None}))
            of.setdefault(t.target_name, []).append(name)
    problems = []
    names = [t.target_name for t in expanded]
    for i, t in enumerate(r.targets):
        for n in of.get(t.target_name, []):
            if names.count(n) > 1 or len(n) > 64:
                why = "is longer than 64 characters" if len(n) > 64 else "is also another target's name"
                problems.append((("targets", i, "gpus"), f"the matrix target '{n}' {why}", "rename the target or the other one"))
    if problems:
        return problems
    r.targets = expanded
    for server in (r.serve.triton, r.serve.tfserving):
        if server is not None:
            server.targets = [n for base in server.targets for n in of.get(base, [base])]
    for base, names_ in of.items():
        if base in r.parity.per_target:
            tol = r.parity.per_target.pop(base)
            r.parity.per_target.update({n: tol for n in names_})
    return []


def features_rate(r: Recipe) -> int | None:
    """The sampling rate a speech model's feature extractor takes (None: its settings are unreadable, said elsewhere)."""
    import json

    try:
        rate = json.loads(r.features_file().read_text()).get("sampling_rate")
    except (OSError, ValueError, AttributeError):
        return None
    return rate if isinstance(rate, int) else None
