"""TF Serving raw input (issue 24, item 3): recipes/keras-photos.yaml's image pipeline and top-k labels as TF ops in
a SavedModel signature (`images`: JPEG bytes -> labels, scores, class_ids), loaded as TF Serving loads it (the TF1
SavedModel loader, warmup replayed) and judged on real photographs against the source pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, mlpack

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kp")
    proc = mlpack("build", str(ROOT / "recipes" / "keras-photos.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "keras-photos"


def _checks(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["targets"][0]["serving_check"]


def test_the_raw_model_is_listed_beside_the_tensor_model(photos):
    m = json.loads((photos / "manifest.json").read_text())
    roles = {s["name"]: s.get("role", "artifact") for s in m["serving"]["models"]}
    assert roles == {"keras-photos": "artifact", "keras-photos_pipeline": "pipeline"}
    config = (photos / "tfserving" / "models.config").read_text()
    assert 'name: "keras-photos_pipeline"' in config and 'name: "keras-photos"' in config
    assert (photos / "tfserving" / "keras-photos_pipeline" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_jpeg_bytes_in_the_source_pipelines_labels_out(photos, tmp_path):
    root = tmp_path / photos.name
    shutil.copytree(photos, root)
    proc = mlpack("serve-check", str(root), "--only", "tfserving")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(root)
    # The tensor model too: a Keras 3 SavedModel the TF1 loader could not restore failed here before (two handles per variable).
    assert checks["tfserving"]["status"] == "ok", checks["tfserving"]["reason"]
    raw = checks["tfserving_pipeline"]
    assert raw["status"] == "ok" and raw["pipeline"]["passed"], raw["reason"]
    assert [c["stage"] for c in raw["pipeline"]["checks"]] == ["preprocess", "answer"]
    cfg = json.loads((root / "parity" / "pipeline.json").read_text())
    assert [a[0] for a in raw["pipeline"]["answers"]] == [labels[0] for labels in cfg["source_labels"]]


def test_a_mismatched_normalisation_is_named_as_the_preprocess_stage(photos, tmp_path):
    from toolchain.serving import tfserving_pipeline as tfp

    root = tmp_path / photos.name
    shutil.copytree(photos, root)
    cfg = json.loads((root / "parity" / "pipeline.json").read_text())
    cfg["image"]["mean"], cfg["image"]["std"] = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's: a common wrong guess
    labels = (ROOT / "recipes" / "models" / "keras-photos-labels.txt").read_text().split("\n")
    vdir = root / "tfserving" / "keras-photos_pipeline" / "1"
    warmup = vdir / "assets.extra"
    kept = tmp_path / "warmup"
    shutil.copytree(warmup, kept)
    shutil.rmtree(vdir)
    tfp.write_raw_model(root / "tfserving" / "keras-photos" / "1", vdir, cfg, [x for x in labels if x], "serving_default")
    shutil.copytree(kept, warmup)
    proc = mlpack("serve-check", str(root), "--only", "tfserving")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    raw = _checks(root)["tfserving_pipeline"]
    assert raw["status"] == "mismatch" and "stage preprocess" in raw["reason"], raw["reason"]


def test_text_has_no_tf_serving_raw_model_and_says_which_step():
    from toolchain.serving import tfserving_pipeline as tfp

    with pytest.raises(ValueError, match="tokenizer is not a core TensorFlow op"):
        tfp.write_raw_model(Path("unused"), Path("unused"), {"modality": "text"}, None, "serving_default")
