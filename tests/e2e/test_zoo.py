"""The zoo's CI subset (recipes/zoo/zoo.yaml `ci: true`), built as a user would and as
scripts/zoo.py builds the whole zoo: every target of every model must pass."""

from __future__ import annotations

import sys

import pytest

from tests.e2e.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import zoo  # noqa: E402

CI = [name for name, entry in zoo.catalogue().items() if entry.get("ci")]
pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return zoo.run(CI, tmp_path_factory.mktemp("zoo"), jobs=1, parallel=2, timeout=900, progress=lambda line: None, targets=zoo.ci_targets())


def test_the_ci_subset_spans_the_failure_classes():
    families = {zoo.catalogue()[n]["family"] for n in CI}
    assert len(CI) >= 7 and {"embedding", "encoder-decoder", "rnn", "vision cnn", "io shapes", "keras application"} <= families
    assert any(zoo.catalogue()[n].get("real") for n in CI)  # real weights, judged on real data


@pytest.mark.parametrize("name", CI)
def test_every_target_passes(results, name):
    r = results[name]
    assert r["targets"], r.get("error")
    assert set(r["targets"]) == set(zoo.ci_targets()[name]) & set(zoo.recipe_targets(name))
    failed = {t: f"{c['stage']}: {c.get('reason')}" for t, c in r["targets"].items() if c["status"] != "ok"}
    assert not failed, failed
    assert r["exit"] == 0


def test_an_export_that_fails_eagerly_is_not_compiled(results):
    """The size-oblivious export of an LSTM asserts seq != 1: run eagerly at the dims' min first
    (seconds), it goes straight to the next export strategy instead of a compile that cannot work."""
    tried = results["lstm"]["targets"]["aoti"]["export"]["tried"]
    assert tried and all(t["stage"] == "run" and t["error"].startswith("the exported program fails") for t in tried), tried


def test_a_transformers_moe_exports_through_transformers_own_onnx_translations(results):
    """Mixtral's experts call transformers' custom op grouped_mm_fallback, which torch.onnx cannot
    lower: the dynamo exporter is tried again with the lowerings transformers ships. Its router
    counts tokens with torch.histc in float, kept FP32 in the FP16 model (ONNX Runtime failed)."""
    target = results["mixtral"]["targets"]["onnx-fp16"]
    assert target["export"]["strategy"] == "dynamo with transformers' ONNX translations", target["export"]
    assert "No ONNX function found" in target["export"]["tried"][0]["error"]
