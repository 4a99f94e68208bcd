"""Encoder-decoder generation end to end: recipes/tiny-t5.yaml, tiny-bart.yaml and tiny-whisper.yaml (speech: audio clips
in) built as a user builds them, each artifact two programs (the prefill: encoder and start token; the decode step with
its cache and the encoder's keys and values), judged token by token against transformers' greedy generate, then driven
as a server would drive them."""

from __future__ import annotations

import functools
import json
import zipfile

import jsonschema
import numpy as np
import pytest

from tests.e2e.conftest import ROOT, build_recipe, mlpack
from toolchain.generation import Seq2SeqDecoder, decoder_for, load_references
from toolchain.manifest import schema
from toolchain.recipe import load_recipe
from toolchain.runners import TwoPrograms, open_runner

FILES = {"onnx": ["onnx/model.onnx", "onnx/prefill.onnx"], "aoti": ["aoti/decode.pt2", "aoti/prefill.pt2"]}
WEIGHT_ONLY = ["onnx-int8w", "aoti-int8w"]  # tiny-t5's (trained weights)


@pytest.fixture(scope="module", params=["tiny-t5", "tiny-bart", "tiny-whisper"])
def built(request, tmp_path_factory):
    return build_recipe(tmp_path_factory, f"{request.param}.yaml", request.param)


def test_every_target_generates_transformers_greedy_tokens(built):
    m = built.manifest
    jsonschema.validate(m, schema())
    refs = load_references(built.root / "parity" / "generation.npz")
    steps = sum(len(r.tokens) for r in refs)
    assert len(refs) == 2 and steps == 24 and len({t for r in refs for t in r.tokens}) > 6  # varied tokens, none cut by EOS
    names = [t["name"] for t in m["targets"]]
    assert names == {"tiny-bart": ["onnx", "onnx-fp16", "aoti"], "tiny-t5": ["onnx", *WEIGHT_ONLY, "aoti"]}.get(built.root.name, ["onnx", "aoti"])
    for name in [n for n in names if n not in WEIGHT_ONLY]:
        t, files = built.target(name), FILES.get(name, ["onnx-fp16/model.onnx", "onnx-fp16/prefill.onnx"])
        g = t["generation"]
        assert t["status"] == "ok" and g["passed"] and g["token_match"] == 1.0 and g["steps"] == steps, (name, g)
        assert g["logits"]["passed"] and min(g["step_cosine"]) > 0.9999
        assert set(files) <= {f["path"] for f in t["files"]} and (built.root / name / "tokenizer.json").is_file()
        # a speech model's client makes its features with the extractor settings shipped beside the artifact
        assert (built.root / name / "preprocessor_config.json").is_file() == (built.root.name == "tiny-whisper")
        assert set(t["export"]["phases"]) == {"prefill", "decode"}
    if "onnx-fp16" in names:  # both programs in FP16, held to every token like FP32
        assert built.target("onnx-fp16")["quantization"]["mode"] == "fp16"


def test_weight_only_quantizes_both_programs_and_holds_the_token_budget(built):
    """tiny-t5's INT8 weights (ONNX: MatMulNBits; AOTI: _weight_int8pack_mm) in the prefill and the decode program, judged on the pair by the generation
    gate, each program's quantized MatMuls counted in the manifest as in its file."""
    if built.root.name != "tiny-t5":
        pytest.skip("weight-only targets are built on the trained T5 only")
    import onnx

    for name, bits in (("onnx-int8w", 8),):
        t = built.target(name)
        g, w = t["generation"], t["quantization"]["weight_only"]
        assert t["status"] == "ok" and g["passed"] and g["token_match"] >= g["floor"], (name, g)
        assert w["bits"] == bits and "lm_head" in w["kept_float"]
        assert set(w["programs"]) == {"prefill.onnx", "model.onnx"} and min(w["programs"].values()) > 0, w["programs"]
        assert all(n.startswith(("prefill.onnx:", "model.onnx:")) for n in t["excluded_nodes"])
        for program in ("prefill.onnx", "model.onnx"):
            nodes = onnx.load(str(built.root / name / program), load_external_data=False).graph.node
            kinds = [n.op_type for n in nodes]
            assert kinds.count("MatMulNBits") == w["programs"][program], (name, program)
            assert all(a.i == bits for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits")
        assert set(t["export"]["phases"]) == {"prefill", "decode"}
    # AOTInductor: both packages call _weight_int8pack_mm on int8 weights, every Linear but lm_head quantized once
    # (encoder, decoder self- and cross-attention, feed-forward: the prefill and the decode step share the model)
    t = built.target("aoti-int8w")
    g, q = t["generation"], t["quantization"]["weight_only"]
    assert t["status"] == "ok" and g["passed"] and g["token_match"] >= g["floor"] and t["aoti"]["precision"] == "int8-weight", g
    assert (q["bits"], q["quantized"], q["kept_float"]) == (8, 36, ["lm_head"]) and set(t["aoti"]["packages"]) == {"prefill", "decode"}
    for phase in ("prefill", "decode"):
        with zipfile.ZipFile(built.root / "aoti-int8w" / f"{phase}.pt2") as z:
            code = b"".join(z.read(n) for n in z.namelist() if n.endswith("wrapper.cpp"))
        assert b"_weight_int8pack_mm" in code, phase


def test_reference_is_transformers_own_generate(built):
    """The references the artifacts are held to are transformers' greedy tokens, found here independently (a speech
    model's from its WAV files through transformers' WhisperFeatureExtractor and the base generate)."""
    import torch
    from transformers.generation.utils import GenerationMixin

    from toolchain.sources.factory import call_factory

    recipe = load_recipe(ROOT / "recipes" / f"{built.root.name}.yaml")
    model = call_factory(recipe)
    refs = load_references(built.root / "parity" / "generation.npz")
    if recipe.decoder.audio:
        inputs = [torch.from_numpy(f[None]) for f in _features(built.root / "onnx", [recipe.resolve(a) for a in recipe.generation.audio])]
        generate = functools.partial(GenerationMixin.generate, model)  # Whisper's own adds task tokens; the base is plain greedy
    else:
        inputs, generate = [torch.tensor([r.prompt]) for r in refs], model.generate
    with torch.no_grad():
        for x, ref in zip(inputs, refs, strict=True):
            out = generate(x, max_new_tokens=len(ref.tokens), do_sample=False, num_beams=1, forced_eos_token_id=None)
            assert out[0, 1:].tolist() == ref.tokens  # after the decoder's start token


def _features(folder, clips) -> list[np.ndarray]:
    """Log-mel features as a client makes them: the WAV samples, and the extractor settings shipped in the artifact's folder."""
    import wave

    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(folder)
    out = []
    for clip in clips:
        with wave.open(str(clip), "rb") as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0
        out.append(fe(samples, sampling_rate=16000, return_tensors="np").input_features[0].astype(np.float32))
    return out


@pytest.mark.parametrize("name", ["onnx", "aoti"])
def test_two_programs_run_batched_as_a_server_runs_them(built, name):
    """open_runner gives the artifact's two programs; greedy decoding reproduces the tokens, and a batch of two equal
    rows gives the batch-of-one logits (batch, past and encoded length dynamic)."""
    recipe = load_recipe(ROOT / "recipes" / f"{built.root.name}.yaml")
    refs = load_references(built.root / "parity" / "generation.npz")
    with open_runner(built.target(name)["runner"], built.root) as active:
        assert isinstance(active, TwoPrograms)
        decoder = decoder_for(active, recipe)
        assert isinstance(decoder, Seq2SeqDecoder)
        prompts = [r.prompt for r in refs]
        if recipe.decoder.audio:  # from the audio, as a client holding only the artifact's folder
            prompts = _features(built.root / name, [recipe.resolve(a) for a in recipe.generation.audio])
        for prompt, ref in zip(prompts, refs, strict=True):
            assert decoder.greedy(prompt, len(ref.tokens)) == ref.tokens
        prompt, tokens = prompts[1], refs[1].tokens[:3]
        one = [decoder.begin(np.asarray([prompt]))[0, -1]] + [decoder.step(np.asarray([[t]]))[0, -1] for t in tokens]
        two = [decoder.begin(np.asarray([prompt, prompt]))[:, -1]] + [decoder.step(np.asarray([[t], [t]]))[:, -1] for t in tokens]
    for a, b in zip(one, two):
        np.testing.assert_allclose(b[0], a, atol=1e-4)
        np.testing.assert_allclose(b[1], a, atol=1e-4)


def test_select_times_a_speech_model_by_whole_generations(built, tmp_path):
    """`select:` on Whisper: each artifact's two programs generate from features of the encoder's one length, against
    transformers' base generate, ranked by tokens/s. Figures are not judged here."""
    if built.root.name != "tiny-whisper":
        pytest.skip("select is run on the speech model only: its prompt (features) is the case the text loop does not cover")
    text = (ROOT / "recipes" / "tiny-whisper.yaml").read_text().replace("name: tiny-whisper", "name: tiny-whisper-select")
    (tmp_path / "models").symlink_to(ROOT / "recipes" / "models")  # the same relative paths: the same cache keys
    (tmp_path / "r.yaml").write_text(text + "select: {metric: throughput, rounds: 3}\n")
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(built.root.parent), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert all(t["cache"]["hit"] for t in m["targets"])
    sel = m["selection"]
    assert sel["shape"] == {"batch": 1, "prompt_tokens": 50, "new_tokens": 12}
    assert sorted(r["target"] for r in sel["ranking"]) == ["aoti", "onnx"] and all(r["samples_per_s"] > 0 for r in sel["ranking"])
