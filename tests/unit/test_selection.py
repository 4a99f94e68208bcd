"""Selection's tie rule: artifacts timed within `select.tie` of the fastest rank by closeness to the source."""

from __future__ import annotations

import pytest

from toolchain import selection
from toolchain.recipe import Select
from toolchain.records import CacheRef, ClassCheck, CpuProof, Machine, Ranked, Selection, Status, TargetResult
from toolchain.records.verdicts import GenerationReport, OutputDiff, ParityReport


def _result(name: str, cosine: float) -> TargetResult:
    return TargetResult(name, "onnx", Status.OK, parity=ParityReport(True, 4, {}, {"y": OutputDiff(cosine=cosine)}))


def _chosen(ms: dict[str, float], metric: str = "latency") -> Selection:
    ranked = [Ranked(n, "onnx", t, t, t, 1000.0 / t, 700.0 / t) for n, t in ms.items()]
    ranked.sort(key=lambda r: r.median_ms if metric == "latency" else -r.samples_per_s)
    return Selection(metric, Machine("cpu", 2, []), CacheRef("k", False), ranked)


# The Zen 1 (AVX2, no VNNI) BERT-base figures: INT8 no faster than FP32 there.
RESULTS = [_result("onnx-int8-dynamic", 0.999303), _result("aoti-int8", 0.999468), _result("onnx-fp32", 0.9999999)]
ZEN1 = {"onnx-int8-dynamic": 654.629, "aoti-int8": 660.722, "onnx-fp32": 661.212}


def test_int8_no_faster_than_fp32_loses_the_tie_to_fp32():
    out = selection.prefer_closest(_chosen(ZEN1), RESULTS, 0.03)
    # the winner first, the rest in speed order
    assert [r.target for r in out.ranking] == ["onnx-fp32", "onnx-int8-dynamic", "aoti-int8"] and out.winner == "onnx-fp32"
    assert out.tie == 0.03 and "onnx-fp32 is served: 1.0% slower than onnx-int8-dynamic" in out.tie_break
    assert "cosine 1 to within 1e-5 against 0.999303" in out.tie_break and "within select.tie (3%)" in out.tie_break
    again = Selection.from_dict(out.to_dict())
    assert (again.tie, again.tie_break, again.winner) == (0.03, out.tie_break, "onnx-fp32")


def test_a_real_speed_gain_is_kept_and_tie_zero_is_speed_alone():
    fast = {"onnx-int8-dynamic": 400.0, "aoti-int8": 660.7, "onnx-fp32": 661.2}
    out = selection.prefer_closest(_chosen(fast), RESULTS, 0.03)
    assert out.winner == "onnx-int8-dynamic" and out.tie_break is None
    # past the fastest's tie group the speed order stands: onnx-fp32, as close as it is, stays behind aoti-int8
    assert [r.target for r in out.ranking] == ["onnx-int8-dynamic", "aoti-int8", "onnx-fp32"]
    plain = selection.prefer_closest(_chosen(ZEN1), RESULTS, 0.0)
    assert plain.winner == "onnx-int8-dynamic" and plain.tie_break is None


def test_throughput_ties_and_equally_close_artifacts_keep_their_speed_order():
    results = [_result("onnx-fp32", 0.9999999), _result("aoti", 0.99999995), _result("onnx-int8", 0.9993)]
    out = selection.prefer_closest(_chosen({"onnx-int8": 100.0, "aoti": 101.0, "onnx-fp32": 102.0}, "throughput"), results, 0.05)
    assert [r.target for r in out.ranking] == ["aoti", "onnx-int8", "onnx-fp32"] and "samples/s" in out.tie_break


def test_an_artifact_without_a_parity_report_is_never_promoted():
    results = [_result("a", 0.99), TargetResult("b", "onnx", Status.OK)]
    assert selection.prefer_closest(_chosen({"a": 10.0, "b": 10.1}), results, 0.03).winner == "a"
    assert selection.prefer_closest(_chosen({"b": 10.0, "a": 10.1}), results, 0.03).winner == "a"


@pytest.mark.parametrize("tie", [-0.01, 0.6])
def test_select_tie_is_bounded(tie):
    with pytest.raises(ValueError):
        Select(tie=tie)


def test_each_class_of_the_fleet_breaks_its_own_tie_among_what_it_is_offered():
    """avx2 is not offered onnx-fp32 (say, a BF16 part): of the two INT8 artifacts left, level in speed, the closer wins."""

    def offered(r: TargetResult, avx2: bool) -> TargetResult:
        checks = [ClassCheck("avx2", "passed" if avx2 else "failed", "native", avx2, "" if avx2 else "no"), ClassCheck("amx", "passed", "native", True, "")]
        r.extra["cpu"] = CpuProof("amx", [], None, None, [], checks).to_dict()
        return r

    results = [
        offered(_result("onnx-int8-dynamic", 0.999303), True),
        offered(_result("aoti-int8", 0.999468), True),
        offered(_result("onnx-fp32", 0.9999999), False),
    ]
    chosen = selection.prefer_closest(_chosen(ZEN1), results, 0.03)
    per = {c.cls: c for c in selection.per_class(chosen, results, ["avx2", "amx"], "amx", tie=0.03)}
    assert per["amx"].winner == chosen.winner == "onnx-fp32"
    assert per["avx2"].winner == "aoti-int8" and set(per["avx2"].excluded) == {"onnx-fp32"}
    assert {c.cls: c.winner for c in selection.per_class(chosen, results, ["avx2"], "amx")} == {"avx2": "onnx-int8-dynamic"}


def test_the_tie_window_is_measured_from_the_fastest_for_either_metric():
    results = [_result("int8", 0.9993), _result("fp32", 1.0)]
    assert selection.prefer_closest(_chosen({"int8": 100.0, "fp32": 102.9}), results, 0.03).winner == "fp32"
    assert selection.prefer_closest(_chosen({"int8": 100.0, "fp32": 103.2}), results, 0.03).winner == "int8"
    # throughput: samples/s = 1000 / ms, so 100 -> 10.0/s and 103.2 -> 9.69/s is 3.2% fewer: outside the tie
    assert selection.prefer_closest(_chosen({"int8": 100.0, "fp32": 102.9}, "throughput"), results, 0.03).winner == "fp32"
    assert selection.prefer_closest(_chosen({"int8": 100.0, "fp32": 103.2}, "throughput"), results, 0.03).winner == "int8"


def test_fp32_runtimes_apart_in_the_sixth_decimal_are_equally_close():
    results = [_result("onnx-fp32-fused", 0.9999949), _result("onnx-fp32", 0.9999951), _result("aoti-bf16", 0.999988)]
    out = selection.prefer_closest(_chosen({"onnx-fp32-fused": 100.0, "onnx-fp32": 102.0, "aoti-bf16": 99.0}), results, 0.03)
    assert out.winner == "onnx-fp32-fused" and "than aoti-bf16" in out.tie_break


def test_a_generator_ties_on_token_agreement_first():
    def gen(name: str, match: float, cosine: float) -> TargetResult:
        logits = ParityReport(True, 4, {}, {"logits": OutputDiff(cosine=cosine)})
        return TargetResult(name, "onnx", Status.OK, generation=GenerationReport(True, 4, 64, match, 0.95, [], [], logits, "mlpack"))

    results = [gen("onnx-int4", 0.97, 0.9999), gen("onnx", 1.0, 0.999), gen("aoti", 1.0, 0.9999)]
    out = selection.prefer_closest(_chosen({"onnx-int4": 100.0, "onnx": 101.0, "aoti": 102.0}, "throughput"), results, 0.03)
    assert out.winner == "aoti" and "token agreement 1.0000 against 0.9700" in out.tie_break


def test_an_empty_or_failed_selection_and_zero_timings_do_not_break_the_tie():
    empty = Selection("latency", Machine("cpu", 2, []), CacheRef("k", False), error="the select step failed")
    assert selection.prefer_closest(empty, [], 0.03).ranking == [] and selection.prefer_closest(empty, [], 0.03).winner is None
    zero = _chosen({"a": 1.0, "b": 2.0})
    zero.ranking[0].median_ms = 0.0
    assert selection.prefer_closest(zero, [_result("a", 0.9), _result("b", 1.0)], 0.03).winner == "a"


def test_triton_serves_the_winner_among_its_own_targets():
    """onnx wins the selection but is not a Triton target: of onnx-int8 and aoti, level in speed, aoti is closer."""
    results = [_result("onnx-int8", 0.9993), _result("onnx", 1.0), _result("aoti", 1.0)]
    chosen = selection.prefer_closest(_chosen({"onnx-int8": 100.0, "onnx": 101.0, "aoti": 102.0}), results, 0.03)
    winner, why = selection.served(chosen, results, ["onnx-int8", "aoti"])
    assert chosen.winner == "onnx" and winner == "aoti"
    # the reason names Triton's own tie: the selection's tie_break explains only the global winner
    assert chosen.tie_break.startswith("onnx is served") and why.startswith("aoti is served: 2.0% slower than onnx-int8") and "cosine" in why, why
    assert selection.served(selection.prefer_closest(chosen, results, 0.0), results, ["onnx-int8", "aoti"]) == ("onnx-int8", None)
    assert selection.served(chosen, results, ["onnx-int8"]) == ("onnx-int8", None) and selection.served(chosen, results, []) == (None, None)
