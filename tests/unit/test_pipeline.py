"""The raw-input pipeline without a server: recipe checks that name the key, mlpack's pre- and postprocessing
(pipeline/runtime.py, the code the served models run) and the ensemble configs Triton's proto accepts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import RecipeError
from toolchain.pipeline import runtime
from toolchain.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[2]

TEXT = """\
name: emb
source: {framework: pytorch, factory: m.py:make}
inputs:
  - {name: input_ids, dtype: int64, shape: [batch, seq]}
  - {name: attention_mask, dtype: int64, shape: [batch, seq]}
outputs: [states]
dims: {batch: {min: 1, max: 8}, seq: {min: 8, max: 64}}
preprocess:
  text: {tokenizer: tok.json, max_length: 64}
  samples: texts.txt
postprocess:
  embedding: {output: states}
targets: [{kind: onnx}]
"""

IMAGE = """\
name: cls
source: {framework: pytorch, factory: m.py:make}
inputs:
  - {name: image, dtype: float32, shape: [batch, 3, 224, 224]}
outputs: [logits]
dims: {batch: {min: 1, max: 8}}
preprocess:
  image: {resize: 256, crop: 224}
  samples: photos
postprocess:
  classify: {output: logits, top_k: 3, labels: labels.txt}
targets: [{kind: onnx}]
"""


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "eats", "food", "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text("def make():\n    return None\n")
    _tokenizer(tmp_path / "tok.json")
    (tmp_path / "texts.txt").write_text("A man eats food.\nfood\n")
    (tmp_path / "photos").mkdir()
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 30, 10)).save(tmp_path / "photos" / "red.jpg")
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    return tmp_path


def _problems(text: str, root: Path) -> list[tuple]:
    with pytest.raises(RecipeError) as ei:
        parse_recipe(text, root / "r.yaml")
    return [(p.key, p.message) for p in ei.value.problems]


def test_valid_pipelines_load(folder):
    r = parse_recipe(TEXT, folder / "r.yaml")
    assert r.pipeline and r.preprocess.modality == "text" and r.postprocess.answer == "embedding"
    r = parse_recipe(IMAGE, folder / "r.yaml")
    assert [p.name for p in r.raw_samples()] == ["red.jpg"]
    assert {f.key for f in r.files()} >= {"labels", "raw"}  # they are part of the cache key


@pytest.mark.parametrize(
    "recipe, old, new, key, words",
    [
        (TEXT, "postprocess:\n  embedding: {output: states}\n", "", "preprocess", "preprocess needs postprocess"),
        (TEXT, "name: attention_mask", "name: mask", "inputs[1].name", "not something a tokenizer gives"),
        (TEXT, "{output: states}", "{output: state}", "postprocess.embedding.output", "'state' is not one of the outputs"),
        (TEXT, "tokenizer: tok.json", "tokenizer: nope.json", "preprocess.text.tokenizer", "file not found"),
        (IMAGE, "[batch, 3, 224, 224]", "[batch, 3, 192, 192]", "inputs[0].shape", "preprocess.image gives [batch, 3, 224, 224]"),
        (IMAGE, "labels: labels.txt", "labels: none.txt", "postprocess.classify.labels", "file not found"),
        (IMAGE, "samples: photos", "samples: m.py", "preprocess.samples", "not a JPEG, PNG"),
        (IMAGE, "{resize: 256, crop: 224}", "{resize: 200, crop: 224}", "preprocess.image", "crop 224 is larger than resize 200"),
        (TEXT, "  text: {tokenizer: tok.json, max_length: 64}\n", "", "preprocess", "exactly one of preprocess.text"),
    ],
)
def test_bad_pipelines_name_the_key(folder, recipe, old, new, key, words):
    assert old in recipe
    found = _problems(recipe.replace(old, new), folder)
    assert any(k == key and words in msg for k, msg in found), found


def test_encode_texts_pads_to_the_artifacts_smallest_sequence(folder):
    tok = runtime.load_tokenizer(folder / "tok.json")
    cfg = {"text": {"max_length": 64, "truncation": True, "padding": "longest"}}
    feed = runtime.encode_texts(tok, cfg, ["A man eats food.", "food"], ["input_ids", "attention_mask"], {"input_ids": "int32"}, min_len=8)
    assert feed["input_ids"].shape == (2, 8) and feed["input_ids"].dtype == np.int32
    assert feed["input_ids"][0, :5].tolist() == [4, 5, 6, 7, 8] and feed["attention_mask"].sum(1).tolist() == [5, 1]
    assert feed["input_ids"][1, 1:].tolist() == [0] * 7  # [PAD]'s id, masked out
    cut = runtime.encode_texts(tok, {"text": {"max_length": 3, "truncation": True, "padding": "longest"}}, ["A man eats food."], ["input_ids"], {})
    assert cut["input_ids"].shape == (1, 3)


def test_decode_image_is_torchvision_resize_crop_normalise(folder):
    from PIL import Image

    cfg = {"image": {"resize": 20, "crop": 16, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "nchw"}}
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 128)).save(buf, format="PNG")
    x = runtime.decode_image(buf.getvalue(), cfg)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[:, 5, 5], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)
    nhwc = runtime.decode_image(buf.getvalue(), {"image": {**cfg["image"], "layout": "nhwc"}})
    assert nhwc.shape == (16, 16, 3) and np.array_equal(nhwc, x.transpose(1, 2, 0))


def test_postprocessing_pools_and_ranks():
    states = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[1, 1, 0]])
    emb = runtime.embed({"embedding": {"pool": "mean", "normalize": True}}, states, mask)
    assert np.allclose(emb, [[2 / np.hypot(2, 2), 2 / np.hypot(2, 2)]])  # the padded token is left out
    names, scores, ids = runtime.classify({"classify": {"softmax": True, "top_k": 2}}, np.array([[0.0, 3.0, 1.0]]), ["r", "g", "b"])
    assert ids.tolist() == [[1, 2]] and names.tolist() == [[b"g", b"b"]] and abs(float(scores.sum()) - 0.9575) < 1e-3


def test_ensemble_configs_parse_with_tritons_proto(folder, tmp_path):
    """serving/pipeline.py's three configs, from a stored pipeline.json: Triton's own proto reads them back, and the
    ensemble's steps map the artifact's config names (INPUT__i for a positional backend) to the pipeline's tensors."""
    from toolchain.pipeline import PIPELINE_JSON, RAW_DIR
    from toolchain.serving import protos
    from toolchain.serving.pipeline import write_pipeline_models

    build = tmp_path / "build"
    (build / RAW_DIR).mkdir(parents=True)
    (build / RAW_DIR / "tokenizer.json").write_text((folder / "tok.json").read_text())
    cfg = {"modality": "text", "answer": "embedding", "text": {"max_length": 64, "truncation": True, "padding": "longest"},
           "embedding": {"output": "states", "pool": "mean", "normalize": True}, "inputs": ["input_ids", "attention_mask"],
           "dtypes": {"input_ids": "int64", "attention_mask": "int64"}, "output_names": ["states"], "seq_min": 8, "seq_max": 64,
           "batch_max": 8, "texts": ["a"], "checks": []}  # fmt: skip
    (build / PIPELINE_JSON).write_text(json.dumps(cfg))
    artifact = """name: "emb_aoti" backend: "pytorch" max_batch_size: 8
      input { name: "INPUT__0" data_type: TYPE_INT64 dims: [-1] } input { name: "INPUT__1" data_type: TYPE_INT64 dims: [-1] }
      output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [-1, 4] }"""
    made = write_pipeline_models(build / "triton", "emb", "emb_aoti", 1, artifact, build, 1)
    parsed = {role: protos.parse((d / "config.pbtxt").read_text(), protos.model_config()) for role, d in made.items()}
    steps = parsed["pipeline"].ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["emb_pre", "emb_aoti", "emb_post"]
    assert dict(steps[1].input_map) == {"INPUT__0": "input_ids", "INPUT__1": "attention_mask"} and dict(steps[1].output_map) == {"OUTPUT__0": "states"}
    assert [i.name for i in parsed["postprocess"].input] == ["states", "attention_mask"] and list(parsed["postprocess"].input[0].dims) == [-1, 4]
    assert (made["preprocess"] / "1" / "mlpack_pipeline.py").read_text() == Path(runtime.__file__).read_text()
    assert "texts" not in json.loads((made["preprocess"] / "1" / "pipeline.json").read_text())
