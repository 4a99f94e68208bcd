"""serve.vllm.quantize without vLLM: the compressed-tensors tensors and config mlpack writes, and what it refuses.
That vLLM reads them (and answers as the floors ask) is tests/e2e/test_generation.py's, through a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from toolchain.errors import RecipeError
from toolchain.recipe import parse_recipe
from toolchain.serving import vllm_quant

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "recipes" / "models" / "tiny-llama"

RECIPE = """\
name: gen
task: text-generation
source: {framework: pytorch, transformers: model}
generation: {prompts: ["one two three"], max_new_tokens: 4, max_length: 32, max_batch: 2}
targets: [{kind: onnx}]
serve:
  vllm: {quantize: [w8a8, w4a16]}
"""


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """compressed-tensors' unpack_from_int32 for 4 bits along the input: word j, bits 4i..4i+3 hold value 8j+i, offset by 8."""
    words = packed.view(np.uint32)
    cols = [((words >> np.uint32(4 * i)) & np.uint32(0xF)).astype(np.int16) - 8 for i in range(8)]
    return np.stack(cols, axis=-1).reshape(packed.shape[0], -1).astype(np.int8)


def test_int4_packing_round_trips_every_value():
    q = np.array([list(range(-8, 8)) * 2, list(range(7, -9, -1)) * 2], np.int8)
    packed = vllm_quant.pack_int4(q)
    assert packed.dtype == np.int32 and packed.shape == (2, 4)
    assert np.array_equal(unpack_int4(packed), q)
    assert packed.view(np.uint32)[0, 0] == sum((v + 8) << (4 * i) for i, v in enumerate(range(-8, 0)))  # the first value in the low bits


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16"])
def test_folder_holds_the_quantized_layers_and_the_config_vllm_reads(tmp_path, scheme):
    dest = tmp_path / scheme
    shutil.copytree(MODEL, dest)
    info = vllm_quant.write_quantized(MODEL, dest, scheme, None)
    cfg = json.loads((dest / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["ignore"] == ["lm_head"]
    assert cfg["config_groups"]["group_0"]["targets"] == ["Linear"]
    src, got = load_file(str(MODEL / "model.safetensors")), load_file(str(dest / "model.safetensors"))
    layers = [k.removesuffix(".weight") for k, v in src.items() if v.ndim == 2 and ".layers." in k]
    assert info["layers"] == len(layers) == 14 and info["scheme"] == scheme
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert np.array_equal(got[k], src[k]), k  # embeddings, norms and the head stay float
    for base in layers:
        w = src[f"{base}.weight"].astype(np.float32)
        if scheme == "w8a8":
            q, s = got[f"{base}.weight"], got[f"{base}.weight_scale"]
            assert q.dtype == np.int8 and s.shape == (w.shape[0], 1) and np.abs(q).max() <= 127
            deq = q * s
        else:
            group = info["group_size"]
            assert f"{base}.weight" not in got and got[f"{base}.weight_shape"].tolist() == list(w.shape)
            q = unpack_int4(got[f"{base}.weight_packed"])
            s = got[f"{base}.weight_scale"]
            assert s.shape == (w.shape[0], w.shape[1] // group)
            deq = (q.reshape(w.shape[0], -1, group) * s[..., None]).reshape(w.shape)
        rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
        assert rel <= info["worst_weight_error"] + 1e-6 and rel < (0.01 if scheme == "w8a8" else 0.15), (base, rel)
    assert info["group_size"] == (64 if scheme == "w4a16" else None)  # 128 does not divide hidden 64


def test_group_size_must_divide_every_layer(tmp_path):
    weights = {"model.layers.0.mlp.down_proj.weight": np.zeros((64, 96), np.float32)}
    assert vllm_quant.group_size(weights, None) == 32
    with pytest.raises(vllm_quant.QuantizeError, match="group_size"):
        vllm_quant.group_size(weights, 64)


def test_families_without_linear_layers_and_repeats_are_refused(tmp_path):
    shutil.copytree(MODEL, tmp_path / "model")
    r = parse_recipe(RECIPE, tmp_path / "r.yaml")
    assert r.serve.vllm.quantize == ["w8a8", "w4a16"]
    with pytest.raises(RecipeError) as ei:
        parse_recipe(RECIPE.replace("[w8a8, w4a16]", "[w8a8, w8a8]"), tmp_path / "r.yaml")
    assert any(p.key == "serve.vllm.quantize" and "twice" in p.message for p in ei.value.problems)
    cfg = tmp_path / "model" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"model_type": "gpt2"}))
    with pytest.raises(RecipeError) as ei:
        parse_recipe(RECIPE, tmp_path / "r.yaml")
    assert [(p.key, "'gpt2'" in p.message, bool(p.hint)) for p in ei.value.problems] == [("serve.vllm.quantize", True, True)]


def test_a_quantized_folder_is_judged_by_its_floors():
    """serve-check's verdict for a quantized folder: top-1 agreement on the source's tokens and perplexity, each against its floor."""
    from toolchain.generation import TextSample, perplexity_check
    from toolchain.serving.results import ModelCheck
    from toolchain.serving.vllm import _judge_quantized

    quant = {"scheme": "w4a16", "floors": vllm_quant.FLOORS["w4a16"]}
    sample = TextSample([[1, 2, 3]], [np.array([1.0, 1.0])])
    check = ModelCheck("source", "vllm", "m-w4a16", "vllm", role="w4a16", generation={})
    assert _judge_quantized(check, quant, (46, 47, (0, 3, 0.2)), perplexity_check(sample, [np.array([1.05, 1.05])], 0.1)) == []
    assert check.generation["forced"]["first_miss"] == {"prompt": 0, "step": 3, "logprob_gap": 0.2} and check.key == "vllm_w4a16"
    failures = _judge_quantized(check, quant, (40, 47, (0, 3, 0.2)), perplexity_check(sample, [np.array([1.5, 1.5])], 0.1))
    assert len(failures) == 2 and "40/47" in failures[0] and "floor 0.9" in failures[0] and "perplexity" in failures[1], failures


def test_a_server_error_names_the_workers_root_cause(tmp_path):
    # vLLM answers HTTP 500 "EngineCore encountered an issue"; the cause is only in its log (seen with head_dim 16 on CPU).
    from toolchain.serving.vllm import VllmServer

    log = tmp_path / "serve.log"
    log.write_text(
        "(APIServer pid=1) WARNING 12-06 01:53:59 [system_utils.py:255] Found ulimit ... `OSError: [Errno 24] Too many open files`.\n"
        "(Worker pid=2) ERROR 12-06 01:54:36 [multiproc_executor.py:1063] Traceback (most recent call last):\n"
        "(Worker pid=2) ERROR 12-06 01:54:36 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2\n"
        "(EngineCore pid=3) ERROR 12-06 01:54:36 [core.py:1512] RuntimeError: Worker failed with error 'Unsupported ...'\n"
    )
    srv = VllmServer(tmp_path, tmp_path, log, "float32", 64)
    assert srv._root_cause() == "RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2"
    log.write_text("(APIServer pid=1) INFO 12-06 01:53:59 [api_server.py:1] started\n")
    assert srv._root_cause() is None
