"""task: text-generation without a build: what a decoder recipe derives and refuses, and the token-by-token verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import RecipeError
from toolchain.generation import Reference, judge, load_references, save_references
from toolchain.recipe import Tolerance, parse_recipe
from toolchain.recipe.decoder import read_config

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "recipes" / "models" / "tiny-llama"

RECIPE = """\
name: gen
task: text-generation
source:
  framework: pytorch
  transformers: model
generation:
  prompts: ["one two three"]
  max_new_tokens: 4
  max_length: 32
  max_batch: 2
targets:
  - kind: onnx
  - kind: genai
    of: onnx
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(MODEL, tmp_path / "model")
    return tmp_path.resolve()


def problems(text: str, root: Path) -> list[tuple]:
    with pytest.raises(RecipeError) as ei:
        parse_recipe(text, root / "r.yaml")
    return [(p.key, p.message, p.hint) for p in ei.value.problems]


def test_inputs_outputs_and_dims_come_from_the_config(root):
    r = parse_recipe(RECIPE, root / "r.yaml")
    d = r.decoder
    assert (d.layers, d.heads, d.kv_heads, d.head_dim, d.vocab, d.eos) == (2, 2, 1, 32, 300, (2,))
    names = [i.name for i in r.inputs]
    assert names == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value",
                     "past_key_values.1.key", "past_key_values.1.value"]  # fmt: skip
    assert r.outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert r.inputs[3].shape == ["batch", 1, "past", 32]
    assert r.dims["past"].min == 0 and r.dims["past"].max == 31  # the prefill has no past; the context is max_length
    assert r.dims["batch"].max == 2 and r.dims["total"].max == 32
    assert r.tokenizer_file() == root / "model" / "tokenizer.json"
    assert ("transformers", "model", True) in [(f.key, f.rel, f.is_dir) for f in r.files()]


def test_eos_override(root):
    r = parse_recipe(RECIPE.replace("max_batch: 2", "max_batch: 2\n  eos: [5, 7]"), root / "r.yaml")
    assert r.decoder.eos == (5, 7)


@pytest.mark.parametrize(
    "old, new, key, message",
    [
        ("targets:", "inputs: []\ntargets:", "inputs", "derives its inputs, outputs and dims from the model's config"),
        ("max_length: 32", "max_length: 1000", "generation.max_length", "1000 is more than the model's 256 positions"),
        ("max_batch: 2", "max_batch: 2\n  eos: [300]", "generation.eos[0]", "token id 300 is outside the model's vocabulary of 300"),
        ("    of: onnx", "    of: nothing", "targets[1].of", "no target is named 'nothing'"),
        ("task: text-generation\n", "", "task", "says no task"),
        ("    of: onnx", "    of: onnx\n    builder: int4", "targets[1]", "give exactly one of `of:`"),
        ("    of: onnx", "    builder: int2", "targets[1].builder", "'int2' is not allowed"),
        ("    of: onnx", "    builder: int4\n    keep_float: ['/a/MatMul,x=1']", "targets[1].keep_float", "is not a node name of the builder's graph"),
    ],
)
def test_refused_with_key_and_fix(root, old, new, key, message):
    found = problems(RECIPE.replace(old, new), root)
    assert any(k == key and message in m and h for k, m, h in found), found


def test_builder_strategy_options_and_budgets(root):
    """builder: the precision picks the weight-only budget; the head stays float unless told otherwise."""
    r = parse_recipe(RECIPE.replace("    of: onnx", "    builder: int4\n    block_size: 64"), root / "r.yaml")
    spec = r.targets[1]
    assert (spec.builder, spec.block_size, spec.keep_float, spec.precision_mode) == ("int4", 64, ["/lm_head/MatMul"], "int4")
    assert r.tolerance(spec).tokens == 0.9 and r.tolerance(spec).perplexity == 0.1
    r = parse_recipe(RECIPE.replace("  - kind: onnx\n", "  - kind: onnx\n    quantize: int4\n"), root / "r.yaml")
    assert r.tolerance(r.targets[1]).tokens == 0.9 and r.tolerance(r.targets[1]).atol is None  # a folder of an int4 target: int4's budgets
    r = parse_recipe(RECIPE.replace("    of: onnx", "    builder: fp32"), root / "r.yaml")
    assert r.targets[1].precision_mode is None and r.tolerance(r.targets[1]).tokens is None  # None: every greedy token


def test_a_folder_that_would_run_code_is_refused(root):
    cfg = json.loads((root / "model" / "config.json").read_text())
    (root / "model" / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "modeling.MyLM"}}))
    found = problems(RECIPE, root)
    assert any(k == "source.transformers" and "custom code (auto_map)" in m for k, m, _ in found), found


def test_pickled_weights_are_refused(root):
    (root / "model" / "model.safetensors").rename(root / "model" / "pytorch_model.bin")
    found = problems(RECIPE, root)
    assert any("no .safetensors weights (only pytorch_model.bin" in m for _, m, _ in found), found


def test_missing_tokenizer_is_named(root):
    (root / "model" / "tokenizer.json").unlink()
    found = problems(RECIPE, root)
    assert any("tokenizer.json" in m for _, m, _ in found), found


def test_read_config_names_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "vocab_size": 10}))
    with pytest.raises(ValueError, match="no num_hidden_layers, num_attention_heads"):
        read_config(tmp_path / "config.json")


def _refs() -> list[Reference]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    return [Reference([1, 2], logits.argmax(-1).tolist(), logits)]


def test_judge_passes_identical_logits():
    refs = _refs()
    report = judge(refs, [refs[0].logits.copy()], Tolerance(atol=1e-4, rtol=1e-3), "test")
    assert report.passed and report.token_match == 1.0 and report.steps == 4 and not report.divergences


def test_judge_names_the_first_divergence():
    refs = _refs()
    got = refs[0].logits.copy()
    want = refs[0].tokens[2]
    other = (want + 1) % 10
    got[2, other] = got[2, want] + 1.0  # step 2 now picks another token
    report = judge(refs, [got], Tolerance(atol=10.0, rtol=0.0), "test")
    assert not report.passed and report.token_match == 0.75
    d = report.divergences[0]
    assert (d.prompt, d.step, d.expected, d.got) == (0, 2, want, other) and d.margin > 0
    assert "token agreement 0.7500 < floor 1" in report.failures[0] and f"at step 2: {other} where the source chose {want}" in report.failures[0]
    # a floor the recipe lowers lets the same tokens pass
    assert judge(refs, [got], Tolerance(atol=10.0, rtol=0.0, tokens=0.75), "test").passed


def test_judge_fails_on_logits_even_when_tokens_agree():
    refs = _refs()
    got = refs[0].logits + 1e-2
    report = judge(refs, [got], Tolerance(atol=1e-4, rtol=0.0), "test")
    assert report.token_match == 1.0 and not report.passed and report.failures[0].startswith("logits: ")


def test_references_round_trip(tmp_path):
    refs = _refs()
    save_references(tmp_path / "g.npz", refs)
    back = load_references(tmp_path / "g.npz")
    assert back[0].prompt == refs[0].prompt and back[0].tokens == refs[0].tokens and np.array_equal(back[0].logits, refs[0].logits)


def test_perplexity_of_uniform_logits_is_the_vocabulary():
    from toolchain.generation import perplexity, token_nll

    nll = token_nll(np.zeros((5, 40), np.float32), [1, 2, 3, 4, 5])
    assert nll.shape == (4,) and perplexity([nll]) == pytest.approx(40.0)
    sharp = np.full((3, 10), -20.0)
    sharp[[0, 1], [7, 8]] = 20.0  # predicts 7 then 8 with near certainty
    assert perplexity([token_nll(sharp, [0, 7, 8])]) == pytest.approx(1.0, abs=1e-6)


def test_perplexity_budget_passes_fails_and_survives_non_finite_logits():
    from toolchain.generation import TextSample, perplexity_check

    sample = TextSample([[1, 2, 3]], [np.log(np.full(2, 10.0))])  # the source: perplexity 10
    ok = perplexity_check(sample, [np.log(np.full(2, 10.4))], 0.05)
    bad = perplexity_check(sample, [np.log(np.full(2, 12.0))], 0.05)
    assert ok.passed and ok.delta == pytest.approx(0.04) and ok.tokens == 2
    assert not bad.passed and bad.delta == pytest.approx(0.2)
    assert perplexity_check(sample, [np.log(np.full(2, 12.0))], None).passed  # no budget: reported, not judged
    nan = perplexity_check(sample, [np.array([np.nan, 1.0])], 0.05)
    assert not nan.passed and nan.artifact is None and nan.delta is None
    refs = [Reference([1], [3, 4], np.eye(6, dtype=np.float32)[[3, 4]])]
    report = judge(refs, [refs[0].logits], Tolerance(cosine=0.99), "t", bad)
    assert not report.passed and report.failures == ["perplexity 12 is +20.00% from the source's 10 on 2 tokens (budget +5.00%)"]
    assert "perplexity" in report.to_dict() and type(report).from_dict(report.to_dict()).perplexity == bad


def test_text_is_cut_into_chunks_of_the_context():
    from toolchain.generation import chunk_text

    assert chunk_text(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_text(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a last chunk of one token predicts nothing


def test_weight_only_options_and_budgets(root):
    text = RECIPE.replace("  - kind: onnx\n", "  - kind: onnx\n  - kind: onnx\n    name: q4\n    quantize: int4\n    fallback: auto\n"
                          "    weights: {block_size: 64, keep_float: ['lm_head', 'model.layers.0.*']}\n")  # fmt: skip
    r = parse_recipe(text, root / "r.yaml")
    spec = r.target("q4")
    assert (spec.weights.block_size, spec.weights.symmetric, spec.weights.keep_float) == (64, True, ["lm_head", "model.layers.0.*"])
    tol = r.parity.tolerance_for("q4", spec.precision_mode)
    assert (tol.tokens, tol.perplexity, tol.atol) == (0.9, 0.1, None)
    assert r.parity.tolerance_for("onnx").perplexity is None  # FP32: every greedy token, no perplexity budget
    bad = RECIPE.replace("  - kind: onnx\n", "  - kind: onnx\n    weights: {block_size: 32}\n")
    assert problems(bad, root)[0][1].startswith("weights: applies to quantize: int4 or int8-weight only")
    odd = text.replace("block_size: 64", "block_size: 40")
    assert problems(odd, root)[0][0] == "targets[1].weights.block_size"


def test_blockwise_error_shrinks_with_bits():
    from toolchain.onnxtools.weights import _quantization_error

    w = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    e4, e8 = _quantization_error(w, 4, 32), _quantization_error(w, 8, 32)
    assert 0 < e8 < e4 < 0.2 and e8 < 0.01
    assert _quantization_error(np.zeros((32, 4), np.float32), 4, 32) == 0.0


def test_weight_only_layers_are_named_by_module_whichever_exporter_wrote_them():
    """An encoder-decoder's prefill may come from the TorchScript exporter (node names are scope paths) and its decode
    step from the dynamo exporter (name_scopes metadata): a module both hold gets one name, so keep_float and the
    search treat it as one layer."""
    from onnx import helper

    from toolchain.onnxtools.weights import _module_of

    script = helper.make_node("MatMul", ["a", "w"], ["b"], name="/inner/decoder/block.0/layer.0/SelfAttention/q/MatMul")
    dynamo = helper.make_node("MatMul", ["a", "w"], ["b"], name="node_linear_3")
    scopes = "['', 'inner', 'inner.decoder.block.0.layer.0.SelfAttention.q', 'linear_3']"
    dynamo.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    assert _module_of(script) == _module_of(dynamo) == "decoder.block.0.layer.0.SelfAttention.q"
    assert _module_of(helper.make_node("MatMul", ["a", "w"], ["b"], name="MatMul_7")) is None


def _graph(nodes, inits, outputs):
    from onnx import TensorProto, helper, numpy_helper

    tensors = [numpy_helper.from_array(np.ones((4, 4), np.float32), n) for n in inits]
    return helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                                               [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], tensors))  # fmt: skip


def test_weight_only_default_keeps_the_output_projection_whatever_it_is_named():
    """keep_float unset keeps the MatMul that writes an output through a bias, a scale and a reshape (Whisper's proj_out,
    T5's scaled lm_head); a MatMul behind a norm or a residual add writes no output of its own, so an encoder keeps none."""
    from onnx import helper

    from toolchain.onnxtools.weights import head_modules, layers_of

    scale = helper.make_node("Constant", [], ["s"], value=helper.make_tensor("s", 1, [], [0.5]))
    head = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="/inner/layer/MatMul"),
            helper.make_node("MatMul", ["h", "w1"], ["p"], name="/inner/proj_out/MatMul"), scale,
            helper.make_node("Mul", ["p", "s"], ["m"]), helper.make_node("Add", ["m", "w2"], ["logits"])]  # fmt: skip
    model = _graph(head, ["w0", "w1", "w2"], ["logits"])
    assert head_modules(model, layers_of(model)) == ["proj_out"]
    encoder = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="/inner/ffn/MatMul"), helper.make_node("Add", ["h", "x"], ["r"]),
               helper.make_node("LayerNormalization", ["r", "w1"], ["last_hidden_state"])]  # fmt: skip
    model = _graph(encoder, ["w0", "w1"], ["last_hidden_state"])
    assert head_modules(model, layers_of(model)) == []


def test_a_text_sample_that_is_not_text_is_refused(root):
    (root / "t.txt").write_bytes(b"\xff\xfe\x00bad")
    text = RECIPE.replace("  max_batch: 2\n", "  max_batch: 2\n  text: t.txt\n")
    assert problems(text, root) == [("generation.text", f"{root / 't.txt'} is not UTF-8 text (byte 0)",
                                     "point at a plain UTF-8 text file (the sample perplexity is measured on)")]  # fmt: skip


def test_genai_config_names_the_cache_as_exported_and_a_type_ort_genai_reads_it_with(root):
    from toolchain.kinds.genai import genai_config

    c = genai_config(parse_recipe(RECIPE, root / "r.yaml"))["model"]
    assert c["type"] == "llama" and c["decoder"]["num_key_value_heads"] == 1 and c["decoder"]["head_size"] == 32
    assert c["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key" and c["decoder"]["outputs"]["present_value_names"] == "present.%d.value"
    cfg = json.loads((root / "model" / "config.json").read_text())
    (root / "model" / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    # ORT GenAI's gpt2 type expects one combined past per layer: the generic decoder type reads mlpack's names
    assert genai_config(parse_recipe(RECIPE, root / "r.yaml"))["model"]["type"] == "decoder"


SEQ2SEQ = (ROOT / "recipes" / "tiny-t5.yaml").read_text()


@pytest.mark.parametrize("config, layers, heads, head_dim, start", [("tiny-t5", 2, 4, 16, 0), ("tiny-bart", 2, 4, 16, 2)])
def test_encoder_decoder_is_two_programs_from_its_config(config, layers, heads, head_dim, start):
    """T5 (num_decoder_layers, d_kv) and BART (decoder_layers, decoder_attention_heads): the recipe's inputs are the
    decode program's, the cross-attention cache sized by the encoded prompt; the prefill takes the prompt."""
    r = parse_recipe(SEQ2SEQ.replace("tiny-t5", config), ROOT / "recipes" / "r.yaml")
    d = r.decoder
    assert r.seq2seq and (d.layers, d.heads, d.kv_heads, d.head_dim, d.decoder_start) == (layers, heads, heads, head_dim, start)
    names = [i.name for i in r.inputs]
    assert names[:4] == ["input_ids", "encoder_attention_mask", "past_key_values.0.decoder.key", "past_key_values.0.decoder.value"]
    assert names[-1] == f"past_key_values.{layers - 1}.encoder.value" and len(names) == 2 + 4 * layers
    assert r.inputs[-1].shape == ["batch", heads, "enc", head_dim] and r.inputs[2].shape == ["batch", heads, "past", head_dim]
    assert r.outputs == ["logits"] + [f"present.{i}.decoder.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert (r.dims["seq"].max, r.dims["past"].min, r.dims["enc"].max) == (1, 0, 48)
    inputs, outputs = d.prefill_io(48)
    assert [i["name"] for i in inputs] == ["encoder_input_ids", "encoder_attention_mask", "input_ids"]
    assert outputs[-1] == f"present.{layers - 1}.encoder.value" and len(outputs) == 1 + 4 * layers
    assert d.cross_names()[1] == names[2 + 2 * layers :]


@pytest.mark.parametrize(
    "old, new, key, message",
    [
        ("  - kind: onnx\n", "  - kind: onnx\n    quantize: int8\n", "targets[0].quantize", "FP32, FP16 or weight-only INT4/INT8"),
        ("  - kind: onnx\n", "  - kind: onnx\n    quantize: int8-dynamic\n", "targets[0].quantize", "quantize: int8-dynamic is not built for it"),
        ("    device: cpu\n", "    device: cpu\n    precision: int8\n", "targets[3].precision", "builds in fp32, bf16 or int8-weight here"),
        ("    device: cpu\n", "    device: cpu\n  - kind: genai\n    of: onnx\n", "targets[4].kind", "decoder-only models here, not encoder-decoders"),
    ],
)
def test_encoder_decoder_refuses_what_is_not_built_for_it(old, new, key, message):
    found = problems(SEQ2SEQ.replace(old, new), ROOT / "recipes")
    assert any(k == key and message in m and h for k, m, h in found), found


@pytest.mark.parametrize("precision", ["bf16", "int8-weight"])
def test_encoder_decoder_takes_the_aoti_precisions_decoders_take(precision):
    r = parse_recipe(SEQ2SEQ.replace("    device: cpu\n", f"    device: cpu\n    precision: {precision}\n"), ROOT / "recipes" / "r.yaml")
    assert r.seq2seq and r.targets[3].precision == precision


def test_a_decoders_gemms_are_not_autotuned_so_gemm_is_refused(tmp_path):
    found = problems(SEQ2SEQ.replace("    device: cpu\n", "    device: cpu\n    precision: bf16\n    gemm: aten\n"), ROOT / "recipes")
    assert any(k == "targets[3].gemm" and "not autotuned" in m and h for k, m, h in found), found


def test_encoder_decoder_config_without_a_start_token_is_named(tmp_path):
    for part in ("tiny-t5", "tiny-llama"):
        shutil.copytree(ROOT / "recipes" / "models" / part, tmp_path / "models" / part)
    shutil.copy(ROOT / "recipes" / "models" / "tiny_seq2seq.py", tmp_path / "models")
    cfg = json.loads((tmp_path / "models" / "tiny-t5" / "config.json").read_text())
    del cfg["decoder_start_token_id"]
    (tmp_path / "models" / "tiny-t5" / "config.json").write_text(json.dumps(cfg))
    found = problems(SEQ2SEQ, tmp_path)
    assert any(k == "generation.config" and "without decoder_start_token_id" in m and "T5: 0" in h for k, m, h in found), found


WHISPER = (ROOT / "recipes" / "tiny-whisper.yaml").read_text()


def test_speech_encoder_decoder_takes_features_of_its_one_length():
    """Whisper (num_mel_bins): the prefill takes log-mel features [batch, mels, 2 x max_source_positions] and no mask;
    the decode step's cross-attention cache has the encoder's one length."""
    r = parse_recipe(WHISPER, ROOT / "recipes" / "r.yaml")
    d = r.decoder
    assert d.audio and (d.mels, d.encoded, d.max_positions, d.decoder_start) == (16, 50, 64, 1)
    assert [i.name for i in r.inputs][:2] == ["input_ids", "past_key_values.0.decoder.key"]
    assert r.inputs[-1].shape == ["batch", 4, 50, 16] and "enc" not in r.dims
    inputs, _ = d.prefill_io(48)
    assert [(i["name"], i["shape"]) for i in inputs] == [("input_features", ["batch", 16, 100]), ("input_ids", ["batch", "seq"])]
    assert ("audio", "models/tiny-whisper/chirp.wav") in [(f.key, f.rel) for f in r.files()]
    assert r.features_file() == ROOT / "recipes" / "models" / "tiny-whisper" / "preprocessor_config.json"


def _speech_root(tmp_path: Path) -> Path:
    for part in ("tiny-whisper", "tiny-llama"):
        shutil.copytree(ROOT / "recipes" / "models" / part, tmp_path / "models" / part)
    shutil.copy(ROOT / "recipes" / "models" / "tiny_seq2seq.py", tmp_path / "models")
    return tmp_path


def _wav(path: Path, rate: int, channels: int) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(800 * channels, "<i2").tobytes())


@pytest.mark.parametrize(
    "change, key, message",
    [
        (
            lambda root: _wav(root / "models" / "tiny-whisper" / "chirp.wav", 8000, 1),
            "generation.audio[0]",
            "sampled at 8000 Hz; the feature extractor takes 16000",
        ),
        (lambda root: _wav(root / "models" / "tiny-whisper" / "chirp.wav", 16000, 2), "generation.audio[0]", "2 channels of 16-bit samples: mono"),
        (lambda root: (root / "models" / "tiny-whisper" / "tremolo.wav").write_bytes(b"RIFFxx"), "generation.audio[1]", "is not a PCM WAV file"),
        (lambda root: (root / "models" / "tiny-whisper" / "preprocessor_config.json").unlink(), "generation.config", "file not found"),
    ],
)
def test_speech_inputs_are_checked_before_a_build(tmp_path, change, key, message):
    root = _speech_root(tmp_path)
    change(root)
    found = problems(WHISPER, root)
    assert any(k == key and message in m and h for k, m, h in found), found


def test_speech_and_text_inputs_are_not_mixed(tmp_path):
    root = _speech_root(tmp_path)
    found = problems(WHISPER.replace("  audio: [", "  prompts: [x]\n  audio: ["), root)
    assert found[0][:2] == ("generation.prompts", "a speech encoder-decoder takes no text prompts here (its decoder starts from decoder_start_token_id)")
    found = problems(WHISPER.replace("  audio: [models/tiny-whisper/chirp.wav, models/tiny-whisper/tremolo.wav]\n", ""), root)
    assert found[0][0] == "generation.audio" and "judged on audio, not prompts" in found[0][1]
    found = problems(SEQ2SEQ.replace("  prompts:", "  audio: [models/tiny-whisper/chirp.wav]\n  prompts:"), ROOT / "recipes")
    assert found[0][0] == "generation.audio" and "this model takes text" in found[0][1]


def test_state_space_config_gives_a_step_over_its_states(tmp_path):
    """Mamba: per-layer conv [intermediate, conv_kernel] and recurrent [intermediate, state_size] states, one token a call,
    no past dim; read from the config alone, intermediate_size or expand x hidden_size."""
    cfg = {"model_type": "mamba", "num_hidden_layers": 3, "hidden_size": 32, "expand": 2, "state_size": 8, "conv_kernel": 4, "vocab_size": 50,
           "eos_token_id": 0}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    d = read_config(tmp_path / "config.json")
    assert d.recurrent and d.states == (64, 4, 8) and d.layers == 3 and d.eos == (0,)
    assert d.state_shapes()["past_state.2.ssm"] == (64, 8) and d.present_names()[:2] == ["present_state.0.conv", "present_state.0.ssm"]
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "state_size"}))
    with pytest.raises(ValueError, match="no state_size: not a state-space decoder's config"):
        read_config(tmp_path / "config.json")


def test_streaming_generator_config_is_decoupled_text_in_tokens_out(root):
    """serve.triton on a generator: the config Triton's proto parses, decoupled, TEXT in, TEXT and TOKEN_ID out, and
    generation.json naming the programs and the cache as the recipe derived them."""
    from toolchain.serving.generator import generation_json, render_config
    from toolchain.serving.standin import parse_config

    r = parse_recipe(RECIPE + "serve:\n  triton:\n    targets: [onnx]\n", root / "r.yaml")
    cfg = parse_config(render_config("gen_onnx", r, "cpu", 2))
    assert cfg.model_transaction_policy.decoupled and cfg.backend == "python" and cfg.max_batch_size == 0
    assert [(i.name, i.optional) for i in cfg.input] == [("TEXT", False), ("MAX_TOKENS", True)] and [o.name for o in cfg.output] == ["TEXT", "TOKEN_ID"]
    assert cfg.instance_group[0].count == 2
    g = generation_json(r, "aoti")
    assert g["programs"] == {"prefill": "prefill.pt2", "decode": "decode.pt2"} and g["inputs"] == [i.name for i in r.inputs]
    assert g["past"][0] == "past_key_values.0.key" and g["present"][0] == "present.0.key" and g["prompts"] == ["one two three"]
    assert g["threads"] is None  # serve.threads unset: each runtime's default
    threaded = parse_recipe(RECIPE + "serve:\n  threads: 3\n  triton:\n    targets: [onnx]\n", root / "r.yaml")
    assert generation_json(threaded, "onnx")["threads"] == 3


@pytest.mark.parametrize(
    "text, key, message",
    [
        (RECIPE + "serve:\n  triton:\n    targets: [genai]\n", "serve.triton.targets[0]", "a genai target is not served by Triton yet"),
        (SEQ2SEQ + "serve:\n  triton:\n    targets: [onnx]\n", "serve.triton.targets[0]", "an encoder-decoder (t5) is not served yet"),
    ],
)
def test_a_generator_that_cannot_stream_is_refused_before_a_build(root, text, key, message):
    where = root if "tiny-t5" not in text else ROOT / "recipes"
    found = problems(text, where)
    assert any(k == key and message in m and h for k, m, h in found), found
