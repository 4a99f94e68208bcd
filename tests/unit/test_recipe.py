"""Recipe validation: every mistake names the key, the YAML line and a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import EXIT_USAGE, RecipeError, UsageError
from toolchain.recipe import load_recipe, parse_recipe, triton_model_name
from toolchain.serving import triton

# A valid minimal recipe; line numbers below refer to this text (after edits).
BASE = """\
name: tiny
source:
  framework: pytorch
  factory: m.py:build
inputs:
  - name: x
    dtype: float32
    shape: [batch, 4]
dims:
  batch: {min: 1, opt: 2, max: 8}
targets:
  - kind: onnx
  - kind: aoti
"""
# Lines 1-13 are BASE; a section appended with APPEND starts at line 14.
APPEND = ""


def edit(*edits: tuple[str, str]) -> str:
    """BASE with each (old, new) applied once; old == APPEND appends `new`."""
    text = BASE
    for old, new in edits:
        if old == APPEND:
            text += new
        else:
            assert text.count(old) == 1, f"edit target {old!r} is not unique in BASE"
            text = text.replace(old, new)
    return text


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text("def build(): ...\n")
    return tmp_path.resolve()


def problems(text: str, root: Path) -> list[tuple]:
    with pytest.raises(RecipeError) as ei:
        parse_recipe(text, root / "r.yaml")
    return [(p.key, p.line, p.message, p.hint) for p in ei.value.problems]


REL = "paths are relative to the recipe's folder ({root})"
SHAPE_ENTRY = "a size (an integer >= 1) or a dim name ([A-Za-z_][A-Za-z0-9_]*, declared under dims)"

# (edits, [(key, line, message, hint), ...]); "{root}" is the recipe's folder.
ERRORS = {
    "top-level typo": (
        [("dims:", "dimz:")],
        [("dimz", 9, "unknown key 'dimz'", "did you mean 'dims'?")],
    ),
    "top-level unknown, no close match": (
        [(APPEND, "zzz: 1\n")],
        [
            (
                "zzz",
                14,
                "unknown key 'zzz'",
                "remove it; known keys: data, dims, generation, inputs, name, outputs, parity, postprocess, preprocess, select, serve, source, targets, task, tokenizer, version",
            )
        ],
    ),
    "source.factroy": (
        [("factory:", "factroy:")],
        [("source.factroy", 4, "unknown key 'factroy'", "did you mean 'factory'?")],
    ),
    "targets[1].opsett": (
        [("kind: aoti", "kind: onnx\n    name: o2\n    opsett: 17")],
        [("targets[1].opsett", 15, "unknown key 'opsett'", "did you mean 'opset'?")],
    ),
    "parity.per_target.x.cosin": (
        [(APPEND, "parity:\n  per_target:\n    onnx: {cosin: 0.9}\n")],
        [("parity.per_target.onnx.cosin", 16, "unknown key 'cosin'", "did you mean 'cosine'?")],
    ),
    "typos in two sections are both reported": (
        [("factory:", "factroy:"), ("kind: onnx", "kind: onnx\n    opsett: 17")],
        [("source.factroy", 4, "unknown key 'factroy'", "did you mean 'factory'?"), ("targets[0].opsett", 13, "unknown key 'opsett'", "did you mean 'opset'?")],
    ),
    "unknown target kind, close": (
        [("kind: aoti", "kind: onxx")],
        [("targets[1].kind", 13, "unknown kind 'onxx'", "did you mean 'onnx'?")],
    ),
    "unknown target kind, far": (
        [("kind: aoti", "kind: zzz")],
        [("targets[1].kind", 13, "unknown kind 'zzz'", "kind is one of: onnx, aoti, xla, savedmodel, tensorrt, genai")],
    ),
    "missing name": (
        [("name: tiny\n", "")],
        [("name", 1, "required key is missing", None)],
    ),
    "missing source.framework": (
        [("  framework: pytorch\n", "")],
        [("source.framework", 2, "required key is missing", None)],
    ),
    "framework typo": (
        [("framework: pytorch", "framework: pytorh")],
        [("source.framework", 3, "'pytorh' is not allowed", "use 'pytorch' or 'tensorflow'")],
    ),
    "uppercase name": (
        [("name: tiny", "name: Tiny")],
        [("name", 1, "'Tiny' does not match ^[a-z0-9][a-z0-9_-]*$", "use lowercase letters, digits, '-' and '_', starting with a letter or digit")],
    ),
    "path-like name": (
        [("name: tiny", "name: ../x")],
        [("name", 1, "'../x' does not match ^[a-z0-9][a-z0-9_-]*$", "use lowercase letters, digits, '-' and '_', starting with a letter or digit")],
    ),
    "factory without :callable": (
        [("m.py:build", "m.py")],
        [("source.factory", 4, "'m.py' is not of the form path/to/file.py:callable", None)],
    ),
    "dynamic dim without dims entry": (
        [("[batch, 4]", "[batch, seq]")],
        [("inputs[0].shape[1]", 8, "dynamic dimension 'seq' has no entry under dims", "add `dims: {seq: {min: 1, opt: 8, max: 64}}`")],
    ),
    "dims min > max": (
        [("{min: 1, opt: 2, max: 8}", "{min: 9, max: 8}")],
        [("dims.batch", 10, "needs min <= opt <= max (got 9, 9, 8)", None)],
    ),
    "duplicate target names": (
        [("kind: aoti", "kind: onnx")],
        [("targets[1].name", 13, "target name 'onnx' is used twice", "give one of them a distinct `name:`")],
    ),
    "per_target names a missing target": (
        [(APPEND, "parity:\n  per_target:\n    onxx: {atol: 0.1}\n")],
        [("parity.per_target.onxx", 16, "no target is named 'onxx'", "did you mean 'onnx'?")],
    ),
    "serve.triton.targets names a missing target": (
        [(APPEND, "serve:\n  triton:\n    targets: [onnx, aot]\n")],
        [("serve.triton.targets[1]", 16, "no target is named 'aot'", "did you mean 'aoti'?")],
    ),
    "max_batch_size with a static first dim": (
        [("[batch, 4]", "[1, 4]"), ("dims:\n  batch: {min: 1, opt: 2, max: 8}\n", ""), (APPEND, "serve:\n  triton:\n    max_batch_size: 8\n")],
        [
            (
                "serve.triton.max_batch_size",
                14,
                "batching needs a dynamic first dimension, but input 'x' has shape [1, 4]",
                "set max_batch_size: 0, or make the first dimension of every input a named dim such as `batch`",
            )
        ],
    ),
    "max_batch_size above dims max": (
        [(APPEND, "serve:\n  triton:\n    max_batch_size: 64\n")],
        [("serve.triton.max_batch_size", 16, "64 exceeds dims.batch.max (8)", "lower max_batch_size to at most 8 or raise dims.batch.max")],
    ),
    "a quoted number": (
        [(APPEND, "select: {tie: '0.05', rounds: 2.5}\n")],
        [
            ("select.rounds", 14, "2.5 is not an integer", "use an integer"),
            ("select.tie", 14, "'0.05' is not a number", "use a number (a quoted value is a string in YAML: remove the quotes)"),
        ],
    ),
    "a word for a number": (
        [(APPEND, "select: {tie: small}\n")],
        [("select.tie", 14, "'small' is not a number", "use a number")],
    ),
    "version_policy typo": (
        [(APPEND, "serve:\n  triton:\n    version_policy: lastest\n")],
        [("serve.triton.version_policy", 16, "'lastest' is not allowed", "use 'latest' or 'all'")],
    ),
    "factory file not found": (
        [("m.py:build", "models/nope.py:build")],
        [("source.factory", 4, "file not found: {root}/models/nope.py", REL)],
    ),
    "data.path not found": (
        [(APPEND, "data:\n  path: data/s.npz\n")],
        [("data.path", 15, "file not found: {root}/data/s.npz", REL)],
    ),
    "two sources": (
        [("  factory: m.py:build", "  factory: m.py:build\n  exported: m.pt2")],
        [("source", 2, "give exactly one of factory, exported, savedmodel, keras, transformers (got factory, exported)", None)],
    ),
    "weights without factory": (
        [("  factory: m.py:build", "  exported: m.pt2\n  weights: w.safetensors")],
        [("source", 2, "weights are loaded into a pytorch factory's module; use them with source.factory", None)],
    ),
    "signature without a savedmodel": (
        [("framework: pytorch", "framework: tensorflow"), ("  factory: m.py:build", "  factory: m.py:build\n  signature: predict")],
        [("source", 2, "signature names a signature of source.savedmodel; there is no savedmodel", None)],
    ),
    "xla target on a pytorch source": (
        [("kind: aoti", "kind: xla")],
        [("targets[1].kind", 13, "'xla' does not build from a pytorch source", "use one of: aoti, onnx, tensorrt")],
    ),
    "tfserving target that is not a SavedModel": (
        [("framework: pytorch", "framework: tensorflow"), ("kind: aoti", "kind: xla"), (APPEND, "serve:\n  tfserving:\n    targets: [onnx]\n")],
        [("serve.tfserving.targets[0]", 16, "TF Serving serves SavedModels; 'onnx' is a onnx target", "list xla or savedmodel targets here")],
    ),
    "tfserving batching above dims max": (
        [
            ("framework: pytorch", "framework: tensorflow"),
            ("kind: aoti", "kind: xla"),
            (APPEND, "serve:\n  tfserving:\n    targets: [xla]\n    batching: {max_batch_size: 64}\n"),
        ],
        [("serve.tfserving.batching.max_batch_size", 17, "64 exceeds dims.batch.max (8)", "lower max_batch_size to at most 8 or raise dims.batch.max")],
    ),
    "tfserving batching with a static first dim": (
        [
            ("framework: pytorch", "framework: tensorflow"),
            ("[batch, 4]", "[2, 4]"),
            ("kind: aoti", "kind: xla"),
            (APPEND, "serve:\n  tfserving:\n    targets: [xla]\n    batching: {max_batch_size: 8}\n"),
        ],
        [
            (
                "serve.tfserving.batching.max_batch_size",
                17,
                "batching needs a dynamic first dimension, but input 'x' has shape [2, 4]",
                "remove serve.tfserving.batching, or make the first dimension of every input a named dim such as `batch`",
            )
        ],
    ),
    "tfserving allowed_batch_sizes not ending at max_batch_size": (
        [
            ("framework: pytorch", "framework: tensorflow"),
            ("kind: aoti", "kind: xla"),
            (APPEND, "serve:\n  tfserving:\n    targets: [xla]\n    batching: {max_batch_size: 8, allowed_batch_sizes: [4, 2]}\n"),
        ],
        [("serve.tfserving.batching", 17, "allowed_batch_sizes must increase and end with max_batch_size (8); got [4, 2]", None)],
    ),
    "triton python backend for a SavedModel target": (
        [
            ("framework: pytorch", "framework: tensorflow"),
            ("kind: aoti", "kind: savedmodel"),
            (APPEND, "serve:\n  triton:\n    backend: python\n    targets: [onnx, savedmodel]\n"),
        ],
        [
            (
                "serve.triton.backend",
                16,
                "backend: python has no model.py for the savedmodel target 'savedmodel'",
                "use backend: native (tensorflow_savedmodel), or serve the onnx target",
            )
        ],
    ),
    "fallback on fp16": (
        [("kind: aoti", "kind: onnx\n    name: h\n    quantize: fp16\n    fallback: auto")],
        [("targets[1]", 13, "fallback: auto applies to quantize: int8, int8-dynamic, int4 or int8-weight only", None)],
    ),
    "calibration without int8": (
        [("kind: aoti", "kind: onnx\n    name: h\n    calibration: entropy")],
        [("targets[1]", 13, "calibration applies to quantize: int8 only", None)],
    ),
    "tensorrt calibration without int8": (
        [("kind: aoti", "kind: tensorrt\n    calibration: entropy")],
        [("targets[1]", 13, "calibration applies to precision: int8 only", None)],
    ),
    "unknown quantize mode": (
        [("kind: aoti", "kind: onnx\n    name: h\n    quantize: int2")],
        [("targets[1].quantize", 15, "'int2' is not allowed", "use 'int8', 'int8-dynamic', 'fp16', 'int4' or 'int8-weight'")],
    ),
    "onnx_tensorrt with the python backend": (
        [(APPEND, "serve:\n  triton:\n    backend: python\n    onnx_tensorrt: fp16\n")],
        [("serve.triton", 15, "onnx_tensorrt applies to Triton's onnxruntime backend; it needs backend: native", None)],
    ),
    "shape entry that is neither a size nor a dim name": (
        [("[batch, 4]", "[batch, bat-ch]")],
        [("inputs[0].shape[1]", 8, f"'bat-ch' is not {SHAPE_ENTRY}", "did you mean 'batch'?")],
    ),
    "shape size 0": (
        [("[batch, 4]", "[batch, 0]")],
        [("inputs[0].shape[1]", 8, f"0 is not {SHAPE_ENTRY}", "a size is at least 1; a size that varies is one of the dims declared: batch")],
    ),
    "dynamic dim close to a declared one": (
        [("[batch, 4]", "[btach, 4]")],
        [
            (
                "inputs[0].shape[0]",
                8,
                "dynamic dimension 'btach' has no entry under dims",
                "did you mean 'batch'? or add `dims: {btach: {min: 1, opt: 8, max: 64}}`",
            )
        ],
    ),
    "preferred batch size above max_batch_size": (
        [(APPEND, "serve:\n  triton:\n    max_batch_size: 4\n    dynamic_batching: {preferred_batch_size: [2, 8]}\n")],
        [
            (
                "serve.triton.dynamic_batching.preferred_batch_size[1]",
                17,
                "preferred batch size 8 exceeds max_batch_size (4); Triton refuses to load such a config",
                "lower it to at most 4, or raise serve.triton.max_batch_size to 8",
            )
        ],
    ),
    "dynamic_batching with max_batch_size 0": (
        [(APPEND, "serve:\n  triton:\n    dynamic_batching: {max_queue_delay_microseconds: 100}\n")],
        [
            (
                "serve.triton.dynamic_batching",
                16,
                "dynamic_batching needs max_batch_size > 0 (Triton batches nothing at 0)",
                "set serve.triton.max_batch_size, or remove dynamic_batching",
            )
        ],
    ),
    "GPU instances for a CPU AOTI package": (
        [(APPEND, "serve:\n  triton:\n    instance_group: {kind: gpu}\n    targets: [onnx, aoti]\n")],
        [
            (
                "serve.triton.instance_group.kind",
                16,
                "kind: gpu puts 'aoti' on GPU instances, but its aoti artifact runs on the CPU only (device: cpu)",
                "use kind: auto (each model on the device its artifact needs) or cpu, or leave 'aoti' out of serve.triton.targets",
            )
        ],
    ),
    "CPU instances for a TensorRT plan": (
        [("kind: aoti", "kind: tensorrt"), (APPEND, "serve:\n  triton:\n    instance_group: {kind: cpu}\n    targets: [onnx, tensorrt]\n")],
        [
            (
                "serve.triton.instance_group.kind",
                16,
                "kind: cpu puts 'tensorrt' on CPU instances, but its tensorrt artifact runs on a GPU only",
                "use kind: auto (each model on the device its artifact needs) or gpu, or leave 'tensorrt' out of serve.triton.targets",
            )
        ],
    ),
    "version_policy neither a name nor a mapping": (
        [(APPEND, "serve:\n  triton:\n    version_policy: [1]\n")],
        [("serve.triton.version_policy", 16, "[1] is not allowed", "use 'latest' or 'all', or a mapping")],
    ),
    "data.parity neither a path nor a mapping": (
        [(APPEND, "data:\n  parity: 5\n")],
        [("data.parity", 15, "5 is not allowed", "use a string, or a mapping")],
    ),
    "data.parity mapping without a path": (
        [(APPEND, "data:\n  parity: {rows: [0, 4]}\n")],
        [("data.parity.path", 15, "required key is missing", None)],
    ),
    "exported path with a NUL byte": (
        [("  factory: m.py:build", '  exported: "m\\0.pt2"')],
        [("source.exported", 4, "not a usable path: embedded null byte", REL)],
    ),
    "invalid YAML": (
        [("dtype: float32", "dtype: float32: x")],
        [("", 7, "not valid YAML: mapping values are not allowed here", "fix the YAML syntax at that line")],
    ),
}


@pytest.mark.parametrize("edits, expected", list(ERRORS.values()), ids=list(ERRORS))
def test_error_table(root, edits, expected):
    def fill(s):
        return s and s.replace("{root}", str(root))

    want = [(k, line, fill(msg), fill(hint)) for k, line, msg, hint in expected]
    assert problems(edit(*edits), root) == want


def test_top_level_list_is_rejected(root):
    assert problems("- name: tiny\n- kind: onnx\n", root) == [
        ("", 1, "a recipe is a YAML mapping (name:, source:, inputs:, targets: ...)", "see the complete example in docs/recipe.md")
    ]


def test_render_names_file_line_key_and_fix(root):
    with pytest.raises(RecipeError) as ei:
        parse_recipe(edit(("factory:", "factroy:"), ("kind: aoti", "kind: xla")), root / "r.yaml")
    f = root / "r.yaml"
    # Pydantic problems stop validation before cross checks, so only the typo shows.
    assert ei.value.render() == (f"invalid recipe {f} (1 problem):\n  {f}:4: source.factroy: unknown key 'factroy'\n    fix: did you mean 'factory'?")
    assert ei.value.exit_code == EXIT_USAGE


def test_cross_check_problems_are_all_reported(root):
    text = edit(("kind: aoti", "kind: xla"), (APPEND, "parity:\n  per_target:\n    nope: {atol: 1}\n"))
    assert [(k, line) for k, line, _, _ in problems(text, root)] == [("targets[1].kind", 13), ("parity.per_target.nope", 16)]


def test_missing_recipe_file_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="recipe not found"):
        load_recipe(tmp_path / "absent.yaml")


# ------------------------------------------------------------ valid recipes


def test_defaults(root):
    (root / "r.yaml").write_text(BASE)
    r = load_recipe(root / "r.yaml")
    assert (r.name, r.version, r.source.framework, r.source.kwargs) == ("tiny", 1, "pytorch", {})
    assert [t.target_name for t in r.targets] == ["onnx", "aoti"]
    assert [t.required for t in r.targets] == [False, False]
    assert r.targets[0].opset == 18 and r.targets[0].timeout == 1800
    assert (r.dims["batch"].min, r.dims["batch"].opt, r.dims["batch"].max) == (1, 2, 8)
    assert (r.parity.samples, r.parity.seed) == (16, 0)
    assert r.parity.tolerance_for("onnx").model_dump() == {"atol": 1e-4, "rtol": 1e-3, "cosine": None, "top1": None, "tokens": None, "perplexity": None}
    assert r.serve.triton is None and r.serve.tfserving is None and r.data is None
    assert r.root == root and r.resolve("m.py") == root / "m.py"


def test_dims_opt_defaults_to_min(root):
    r = parse_recipe(edit(("{min: 1, opt: 2, max: 8}", "{min: 3, max: 8}")), root / "r.yaml")
    assert r.dims["batch"].opt == 3


def test_named_target_and_lookup(root):
    r = parse_recipe(edit(("kind: aoti", "kind: onnx\n    name: onnx-int8\n    quantize: int8\n    required: true")), root / "r.yaml")
    assert [t.target_name for t in r.targets] == ["onnx", "onnx-int8"]
    assert r.target("onnx-int8").quantize == "int8" and r.target("onnx-int8").required is True
    with pytest.raises(KeyError):
        r.target("aoti")


def test_tolerance_for_merges_key_by_key(root):
    parity = "parity:\n  default: {atol: 1.0e-5, cosine: 0.99}\n  per_target:\n    onnx: {rtol: 0.01, top1: 0.9}\n"
    r = parse_recipe(edit((APPEND, parity)), root / "r.yaml")
    assert r.parity.tolerance_for("onnx").model_dump() == {"atol": 1e-5, "rtol": 0.01, "cosine": 0.99, "top1": 0.9, "tokens": None, "perplexity": None}
    # No override: the default, with the documented rtol filled in.
    assert r.parity.tolerance_for("aoti").model_dump() == {"atol": 1e-5, "rtol": 1e-3, "cosine": 0.99, "top1": None, "tokens": None, "perplexity": None}


def test_quantized_targets_get_their_own_budget(root):
    parity = "parity:\n  default: {atol: 1.0e-5, cosine: 0.9}\n  per_target:\n    q: {cosine: 0.995}\n"
    r = parse_recipe(edit(("kind: aoti", "kind: onnx\n    name: q\n    quantize: int8"), (APPEND, parity)), root / "r.yaml")
    # parity.default (an FP32 budget) does not apply; per_target still overrides key by key.
    assert r.parity.tolerance_for("q", r.target("q").precision_mode).model_dump() == {
        "atol": None,
        "rtol": None,
        "cosine": 0.995,
        "top1": 0.95,
        "tokens": None,
        "perplexity": None,
    }
    assert r.parity.tolerance_for("onnx", r.target("onnx").precision_mode).model_dump() == {
        "atol": 1e-5,
        "rtol": 1e-3,
        "cosine": 0.9,
        "top1": None,
        "tokens": None,
        "perplexity": None,
    }
    assert r.parity.tolerance_for("x", "fp16").model_dump() == {"atol": None, "rtol": None, "cosine": 0.999, "top1": 0.99, "tokens": None, "perplexity": None}


@pytest.mark.parametrize(
    "target, mode",
    [
        ("kind: onnx\n    name: t", None),
        ("kind: onnx\n    name: t\n    quantize: int8-dynamic", "int8-dynamic"),
        ("kind: tensorrt\n    name: t", "fp16"),
        ("kind: tensorrt\n    name: t\n    precision: fp32", None),
        ("kind: tensorrt\n    name: t\n    precision: int8", "int8"),
        ("kind: aoti\n    name: t", None),
    ],
)
def test_precision_mode(root, target, mode):
    r = parse_recipe(edit(("kind: aoti", target)), root / "r.yaml")
    assert r.target("t").precision_mode == mode


# The example recipe from /work/shared/SPEC.md, verbatim.
SPEC_EXAMPLE = """\
name: resnet50               # [a-z0-9][a-z0-9_-]*, becomes the served model name
version: 1                   # serving version directory
source:
  framework: pytorch         # pytorch | tensorflow
  factory: models/resnet.py:build    # file:callable returning nn.Module / keras.Model / tf.Module
  kwargs: {depth: 50}                # passed to the factory
  # instead of factory, exactly one of:
  # exported: model.pt2        (torch.export ExportedProgram, torch.export.save)
  # savedmodel: saved/         (TensorFlow SavedModel directory)
  # keras: model.keras         (Keras 3 file)
  # weights: weights.safetensors   (optional, loaded into the factory's module)
inputs:
  - name: image
    dtype: float32           # float32 float16 bfloat16 int64 int32 bool uint8
    shape: [batch, 3, 224, 224]   # a string is a named dynamic dimension
    range: [0.0, 1.0]        # for generated samples (ints: [low, high) )
outputs: [logits]            # names for the outputs, in order (optional)
dims:
  batch: {min: 1, opt: 8, max: 64}
data:                        # real samples for calibration and parity (optional;
  path: data/samples.npz     #   else samples are generated from `inputs`, seeded)
targets:                     # each builds one artifact; `name` defaults to `kind`
  - kind: aoti               # torch.export + AOTInductor .pt2 package
    device: cpu              # cpu | cuda
  - kind: onnx
    opset: 18
  - kind: onnx
    name: onnx-int8
    quantize: int8           # int8 (static QDQ, calibrated on `data`) | int8-dynamic | fp16
    calibration: entropy     # minmax | entropy | percentile (int8 only)
    fallback: auto           # off | auto: keep the worst nodes in float until the budget holds
    optimize: true           # ONNX Runtime graph/transformer fusions, checked by the same gate
    timeout: 1800            # seconds for this step (any target)
  - kind: xla                # TensorFlow SavedModel whose serving function is jit_compile=True
  - kind: savedmodel         # plain SavedModel (TF sources; PyTorch via ONNX only if supported)
  - kind: tensorrt
    precision: fp16          # fp32 | fp16 | int8 (int8 from the QDQ ONNX)
    required: false
parity:
  samples: 16
  seed: 0
  default: {atol: 1.0e-4, rtol: 1.0e-3}
  per_target:                # overrides; any of atol rtol cosine top1
    onnx-int8: {cosine: 0.995, top1: 0.98}
serve:
  triton:
    max_batch_size: 64       # 0 = no batching dimension
    dynamic_batching: {preferred_batch_size: [8, 32], max_queue_delay_microseconds: 200}
    instance_group: {count: 1, kind: auto}   # auto = GPU where the artifact needs one
    targets: [onnx, onnx-int8, aoti]          # which artifacts get a Triton model
    backend: native          # native (onnxruntime, torch_aoti, tensorrt_plan, tensorflow_savedmodel)
                             # | python (a model.py that runs the artifact; for servers lacking the backend)
    version_policy: latest   # latest | all | {specific: [1, 3]}
  tfserving:
    targets: [xla]
    version_policy: latest
"""


@pytest.fixture
def spec_root(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models/resnet.py").write_text("def build(**kwargs): ...\n")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data/samples.npz", images=np.zeros((4, 3, 224, 224), np.float32))
    return tmp_path.resolve()


def test_spec_example_mixes_tf_only_targets_into_a_pytorch_recipe(spec_root):
    # The SPEC's example is a tour of every key: its xla and savedmodel targets
    # are TensorFlow kinds under `framework: pytorch`, which validation rejects.
    assert problems(SPEC_EXAMPLE, spec_root) == [
        ("targets[3].kind", 34, "'xla' does not build from a pytorch source", "use one of: aoti, onnx, tensorrt"),
        ("targets[4].kind", 35, "'savedmodel' does not build from a pytorch source", "use one of: aoti, onnx, tensorrt"),
        (
            "serve.tfserving",
            54,
            "TF Serving serves SavedModels, which only TensorFlow sources build; this recipe's source is pytorch",
            "serve it with serve.triton, or remove serve.tfserving",
        ),
    ]


def test_spec_example_validates_without_tf_only_targets(spec_root):
    text = SPEC_EXAMPLE
    for cut in (
        "  - kind: xla                # TensorFlow SavedModel whose serving function is jit_compile=True\n",
        "  - kind: savedmodel         # plain SavedModel (TF sources; PyTorch via ONNX only if supported)\n",
        "  tfserving:\n    targets: [xla]\n    version_policy: latest\n",
    ):
        assert text.count(cut) == 1
        text = text.replace(cut, "")
    r = parse_recipe(text, spec_root / "r.yaml")
    assert [t.target_name for t in r.targets] == ["aoti", "onnx", "onnx-int8", "tensorrt"]
    assert r.source.kwargs == {"depth": 50} and r.outputs == ["logits"]
    assert r.serve.triton.max_batch_size == 64 and r.serve.triton.targets == ["onnx", "onnx-int8", "aoti"]
    assert r.parity.tolerance_for("onnx-int8").model_dump() == {"atol": 1e-4, "rtol": 1e-3, "cosine": 0.995, "top1": 0.98, "tokens": None, "perplexity": None}


# ------------------------------------------------------------------- CLI


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain", "validate", str(path)], capture_output=True, text=True, timeout=120)


def test_cli_validate_typo_exits_2_with_hint(root):
    (root / "r.yaml").write_text(edit(("factory:", "factroy:")))
    p = _validate(root / "r.yaml")
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert f"{root / 'r.yaml'}:4: source.factroy" in out and "did you mean 'factory'?" in out
    assert "Traceback" not in out


def test_cli_validate_ok(root):
    (root / "r.yaml").write_text(BASE)
    p = _validate(root / "r.yaml")
    assert p.returncode == 0, p.stderr
    assert "ok - tiny v1, pytorch, targets: onnx (onnx), aoti (aoti)" in p.stderr


def test_cli_validate_missing_file_exits_2(tmp_path):
    p = _validate(tmp_path / "absent.yaml")
    assert p.returncode == 2 and "recipe not found" in p.stderr and "Traceback" not in p.stderr


def test_a_bare_off_means_the_string_off(root):
    """YAML 1.1 reads `off` as false; the keys whose value may be "off" take it as written."""
    text = edit(
        ("kind: aoti", "kind: onnx\n    name: q\n    quantize: int8\n    fallback: off"),
        (APPEND, "serve:\n  triton:\n    onnx_tensorrt: off\n    targets: [onnx]\n"),
    )
    r = parse_recipe(text, root / "r.yaml")
    assert r.target("q").fallback == "off" and r.serve.triton.onnx_tensorrt == "off"


def test_a_gpu_matrix_becomes_one_target_per_type(root):
    text = edit(("  - kind: onnx\n", "  - kind: onnx\n    gpus: [H100, L4]\n"),
                (APPEND, "parity:\n  per_target:\n    onnx: {atol: 0.01}\nserve:\n  triton: {targets: [onnx, aoti]}\n"))  # fmt: skip
    r = parse_recipe(text, root / "r.yaml")
    assert [(t.target_name, t.gpu, t.gpus) for t in r.targets] == [("onnx-h100", "H100", None), ("onnx-l4", "L4", None), ("aoti", None, None)]
    assert r.serve.triton.targets == ["onnx-h100", "onnx-l4", "aoti"]
    assert r.tolerance(r.target("onnx-l4")).atol == 0.01


@pytest.mark.parametrize(
    "targets, message",
    [
        ("  - kind: onnx\n    gpus: [L4, L4]\n", "gpus lists a type twice"),
        ("  - kind: onnx\n    gpus: [L4]\n    gpu: L4\n", "give gpu (one type) or gpus (a matrix), not both"),
        ("  - kind: onnx\n    gpus: ['bad type']\n", "'bad type' does not match"),
        ("  - kind: onnx\n    gpus: [L4]\n  - kind: onnx\n    name: onnx-l4\n", "the matrix target 'onnx-l4' is also another target's name"),
    ],
)
def test_gpu_matrix_mistakes(root, targets, message):
    text = BASE.replace("  - kind: onnx\n  - kind: aoti\n", targets)
    found = problems(text, root)
    assert any(message in m for _, _, m, _ in found), found


def test_cli_validate_names_a_bad_shape_entry_and_a_preferred_size_triton_refuses(root):
    (root / "shape.yaml").write_text(edit(("[batch, 4]", "[batch, 1.5]")))
    (root / "batching.yaml").write_text(edit((APPEND, "serve:\n  triton:\n    max_batch_size: 4\n    dynamic_batching: {preferred_batch_size: [2, 8]}\n")))
    for name, line in (
        ("shape.yaml", f"shape.yaml:8: inputs[0].shape[1]: 1.5 is not {SHAPE_ENTRY}\n    fix: use a size such as 4, or one of the dims declared: batch\n"),
        ("batching.yaml", "batching.yaml:17: serve.triton.dynamic_batching.preferred_batch_size[1]: preferred batch size 8 exceeds max_batch_size (4)"),
    ):
        p = _validate(root / name)
        out = p.stdout + p.stderr
        assert p.returncode == 2, out
        assert "(1 problem)" in out and line in out and "constrained-" not in out


def test_instance_kind_is_not_checked_for_the_python_backend(root):
    # model.py loads the artifact on its own device whatever the instance kind.
    r = parse_recipe(edit((APPEND, "serve:\n  triton:\n    backend: python\n    instance_group: {kind: gpu}\n    targets: [aoti]\n")), root / "r.yaml")
    assert r.serve.triton.instance_group.kind == "gpu"


# ------------------------------------------------------- the files of a source


def _write(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")


def test_a_factory_is_every_py_file_of_its_folder(root):
    _write(root, "models/net.py", "models/sub/layers.py", "models/.hidden.py", "models/notes.txt", "models/__pycache__/net.py",
           "models/.venv/lib.py", "models/artifacts/tiny/model.py", "w.safetensors")  # fmt: skip
    (root / "models/net.py").write_text("def build(): ...\n")
    text = edit(("m.py:build", "models/net.py:build\n  weights: w.safetensors"))
    r = parse_recipe(text, root / "r.yaml", check_files=False)
    factory, weights = r.source.files(r.root)
    assert (factory.key, factory.rel, factory.path, factory.is_dir, factory.tree) == (
        "factory",
        "models/net.py",
        root / "models/net.py",
        False,
        root / "models",
    )
    assert factory.members() == [root / f"models/{p}" for p in (".hidden.py", "artifacts/tiny/model.py", "net.py", "sub/layers.py")]
    # A build output inside the folder is left out (its generated model.py files change with every build).
    assert factory.named_members(skip=root / "models/artifacts") == {
        "factory/.hidden.py": root / "models/.hidden.py",
        "factory/net.py": root / "models/net.py",
        "factory/sub/layers.py": root / "models/sub/layers.py",
    }
    assert (weights.key, weights.tree, weights.members(), weights.named_members()) == (
        "weights",
        None,
        [root / "w.safetensors"],
        {"weights": root / "w.safetensors"},
    )
    assert r.files() == [factory, weights]


def test_skip_prunes_only_inside_the_folder(root):
    _write(root, "out/models/net.py")
    r = parse_recipe(edit(("m.py:build", "out/models/net.py:build")), root / "r.yaml", check_files=False)
    (factory,) = r.source.files(r.root)
    assert factory.members(skip=root / "out") == factory.members(skip=root / "out/models") == [root / "out/models/net.py"]


def test_a_savedmodel_is_every_file_of_its_folder_and_data_files_follow(root):
    _write(root, "saved/saved_model.pb", "saved/variables/variables.index", "saved/.git/HEAD", "saved/__pycache__/x.pyc", "d.npz", "c.npz")
    text = edit(("framework: pytorch", "framework: tensorflow"), ("  factory: m.py:build", "  savedmodel: saved"), ("kind: aoti", "kind: savedmodel"),
                (APPEND, "data:\n  parity: d.npz\n  calibration: {path: c.npz, rows: [0, 4]}\n"))  # fmt: skip
    r = parse_recipe(text, root / "r.yaml", check_files=False)
    saved, calibration, parity = r.files()
    assert (saved.key, saved.path, saved.is_dir, saved.tree) == ("savedmodel", root / "saved", True, root / "saved")
    assert saved.named_members() == {
        "savedmodel/saved_model.pb": root / "saved/saved_model.pb",
        "savedmodel/variables/variables.index": root / "saved/variables/variables.index",
    }
    assert [(f.key, f.rel, f.path) for f in (calibration, parity)] == [("data", "c.npz", root / "c.npz"), ("data", "d.npz", root / "d.npz")]
    assert {**calibration.named_members(), **parity.named_members()} == {"data/c.npz": root / "c.npz", "data/d.npz": root / "d.npz"}


def test_one_triton_model_name():
    assert triton.triton_model_name is triton_model_name
    assert triton_model_name("res-net", "onnx-int8") == "res_net_onnx_int8"


def test_bare_yaml_on_and_off_mean_the_strings(root):
    # YAML 1.1 reads `on` as true and `off` as false; the docs write `freezing: on | off`.
    r = parse_recipe(
        edit(("kind: aoti", "kind: aoti\n    freezing: on"), ("kind: onnx", "kind: onnx\n    name: o8\n    quantize: int8\n    fallback: off")), root / "r.yaml"
    )
    assert r.target("aoti").freezing == "on" and r.target("o8").fallback == "off"


def test_serve_cpus_names_known_classes_once(root):
    r = parse_recipe(edit((APPEND, "serve:\n  cpus: [avx2, amx]\n")), root / "r.yaml")
    assert r.serve.cpus == ["avx2", "amx"] and parse_recipe(BASE, root / "r.yaml").serve.cpus == []
    assert problems(edit((APPEND, "serve:\n  cpus: [avx2, avx2]\n")), root)[0][:3] == ("serve.cpus", 15, "each CPU class once; got ['avx2', 'avx2']")
    key, _, message, _ = problems(edit((APPEND, "serve:\n  cpus: [avx3]\n")), root)[0]
    assert key == "serve.cpus[0]" and "avx3" in message
