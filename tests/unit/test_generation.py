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
    ],
)
def test_refused_with_key_and_fix(root, old, new, key, message):
    found = problems(RECIPE.replace(old, new), root)
    assert any(k == key and message in m and h for k, m, h in found), found


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
