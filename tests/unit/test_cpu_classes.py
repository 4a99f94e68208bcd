"""CPU classes: naming a machine's class, reading what compiled code needs, each class's verdict on an artifact, and
selection per class (toolchain/cpuclass.py, toolchain/classgate.py, toolchain/selection.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from toolchain import classgate, cpuclass, selection
from toolchain.records import CacheRef, ClassCheck, CpuProof, Machine, Ranked, RunnerSpec, Selection, Status, TargetResult

ZEN3 = {"avx2", "fma", "sse4_2"}
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}
SPR = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    "flags, cls",
    [
        (ZEN3, "avx2"),
        (ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}, "avx512"),
        (ZEN4 - {"avx512_bf16"}, "avx512_vnni"),
        (ZEN4, "avx512_bf16"),
        (SPR, "amx"),
        ({"sse4_2"}, None),
        (ZEN3 | {"avx512_vnni"}, "avx2"),  # VNNI without AVX-512F is not an AVX-512 class
    ],
)
def test_class_of_a_machine_needs_every_feature_of_the_classes_below(flags, cls):
    assert cpuclass.class_of(flags) == cls


def test_emulation_caps_onednn_and_aten_to_the_class():
    assert cpuclass.emulation_env("avx2").items() >= {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}.items()
    assert cpuclass.emulation_env("avx512")["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    assert cpuclass.emulation_env("avx512_vnni")["ATEN_CPU_CAPABILITY"] == "avx512"


def test_int8_is_quantized_for_the_build_machine_when_no_fleet_is_named(monkeypatch):
    """No serve.cpus: the artifact is gated and served on this machine's class, so an AVX2 runner quantizes in the
    form that cannot saturate there (ONNX full-range INT8 fell to cosine 0.974 on a Zen 1 without it)."""
    monkeypatch.setattr(cpuclass, "machine_class", lambda: "avx2")
    assert cpuclass.saturating([]) == ["avx2"]
    assert cpuclass.saturating(["avx512_vnni", "amx"]) == []  # a named fleet decides, not the runner
    monkeypatch.setattr(cpuclass, "machine_class", lambda: "avx512_vnni")
    assert cpuclass.saturating([]) == [] and cpuclass.saturating(["avx512", "amx"]) == ["avx512"]
    monkeypatch.setattr(cpuclass, "machine_class", lambda: None)
    assert cpuclass.saturating([]) == []


def test_machine_class_can_be_capped_but_not_raised(monkeypatch):
    own = cpuclass.machine_class()
    if own is None:
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setenv("MLPACK_CPU_CLASS", "avx2")
    assert cpuclass.machine_class() == "avx2"
    monkeypatch.setenv("MLPACK_CPU_CLASS", "amx")
    assert cpuclass.machine_class() == own  # a cap never claims a class the machine does not have


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objdump") is None, reason="needs gcc and objdump (binutils)")
@pytest.mark.parametrize(
    "flags, needs",
    [("-msse4.2", None), ("-mavx2 -mfma", "avx2"), ("-mavx512f -mavx512bw -mavx512vl -mavx512dq -mprefer-vector-width=512", "avx512")],
)
def test_code_needs_is_read_from_the_instructions(tmp_path, flags, needs):
    src = tmp_path / "k.c"
    src.write_text("void axpy(float *a, const float *b, int n) { for (int i = 0; i < n; i++) a[i] += b[i] * 3.0f; }\n")
    so = tmp_path / "k.so"
    subprocess.run(["gcc", "-O3", *flags.split(), "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    assert cpuclass.code_needs(so) == needs


class _Recipe:
    def __init__(self, cpus):
        self.serve = type("Serve", (), {"cpus": cpus})()


def _prove(cpus, runner="onnxruntime", precision=None, quantization=None, here="amx", needs=None, monkeypatch=None, judge=None, bf16_parts=False):
    monkeypatch.setattr(cpuclass, "machine_class", lambda: here)
    monkeypatch.setattr(classgate, "needs_of", lambda code: needs)
    spec = RunnerSpec(runner=runner, path="x", inputs=["x"], outputs=["y"])
    return classgate.prove(_Recipe(cpus), precision, spec, Path("."), Path("."), [], (True, 0.9999, 1e-3), quantization, None,
                           judge or (lambda outputs: (True, 1.0, 0.0)), capped=runner == "aoti", bf16_parts=bf16_parts)  # fmt: skip


def test_onnx_int8_that_can_saturate_is_not_offered_to_classes_without_vnni(monkeypatch):
    proof = _prove(["avx2", "avx512", "avx512_vnni", "amx"], precision="int8-dynamic", monkeypatch=monkeypatch)
    by = {c.cls: c for c in proof.classes}
    assert by["amx"].status == "passed" and by["amx"].how == "native" and by["amx"].offered
    for cls in ("avx2", "avx512"):
        assert (by[cls].status, by[cls].offered) == ("untested", False) and "saturate" in by[cls].reason and "reduce_range" in by[cls].reason
    assert (by["avx512_vnni"].status, by["avx512_vnni"].how) == ("derived", "exact-integer") and by["avx512_vnni"].offered  # not run: never "passed"
    assert proof.offered_to() == ["avx512_vnni", "amx"]


def test_onnx_int8_with_seven_bit_weights_holds_by_its_arithmetic(monkeypatch):
    proof = _prove(["avx2", "amx"], precision="int8", quantization={"reduce_range": True}, monkeypatch=monkeypatch)
    avx2 = proof.check("avx2")
    assert (avx2.status, avx2.how, avx2.offered) == ("derived", "exact-integer", True) and "cannot saturate" in avx2.reason


def test_a_class_above_the_machine_is_untested_and_bf16_is_not_offered_without_native_bf16(monkeypatch):
    proof = _prove(["avx2", "avx512_bf16", "amx"], runner="onnxruntime", precision="bf16", here="avx512_bf16", monkeypatch=monkeypatch)
    amx = proof.check("amx")
    assert (amx.status, amx.offered) == ("untested", True) and "cannot run amx" in amx.reason
    avx2 = proof.check("avx2")
    assert (avx2.status, avx2.offered) == ("untested", False) and "no native BF16" in avx2.reason


def test_int8_with_bf16_attention_is_offered_where_bf16_is_native_only(monkeypatch):
    monkeypatch.setattr(classgate, "_emulated", lambda cls, *a: ClassCheck(cls, "passed", "emulated", True, ""))
    proof = _prove(["avx512_vnni", "avx512_bf16", "amx"], runner="aoti", precision="int8", monkeypatch=monkeypatch, bf16_parts=True)
    vnni = proof.check("avx512_vnni")
    assert (vnni.status, vnni.offered) == ("untested", False) and "BF16 parts (attention)" in vnni.reason
    assert proof.check("avx512_bf16").offered and proof.check("amx").offered


def test_code_compiled_above_a_class_fails_it_without_running(monkeypatch):
    proof = _prove(["avx2", "amx"], runner="aoti", precision="fp32", needs="avx512", monkeypatch=monkeypatch, judge=lambda o: (True, 1.0, 0.0))
    avx2 = proof.check("avx2")
    assert (avx2.status, avx2.how, avx2.offered) == ("failed", "code", False) and "illegal instruction" in avx2.reason
    assert "serve.cpus" in avx2.reason


def test_proof_round_trips_through_its_dict():
    proof = CpuProof("amx", ["avx2"], "avx2", "avx2", ["amx_int8"], [ClassCheck("avx2", "passed", "emulated", True, "", 0.9999, 1e-3)])
    assert CpuProof.from_dict(proof.to_dict()) == proof


def test_selection_per_class_skips_what_a_class_is_not_offered():
    def result(name, offered):
        checks = [ClassCheck(c, "passed" if ok else "failed", "native", ok, "" if ok else f"{name} misses on {c}") for c, ok in offered.items()]
        return TargetResult(name, "aoti", Status.OK, extra={"cpu": CpuProof("amx", [], None, None, [], checks).to_dict()})

    results = [result("aoti-int8", {"avx2": False, "amx": True}), result("onnx", {"avx2": True, "amx": True})]
    ranked = [Ranked("aoti-int8", "aoti", 1.0, 1.0, 1.0, 1000.0, 3.0), Ranked("onnx", "onnx", 2.0, 2.0, 2.0, 500.0, 1.5)]
    chosen = Selection("latency", Machine("cpu", 2, []), CacheRef("k", False), ranked)
    per = {c.cls: c for c in selection.per_class(chosen, results, ["avx2", "amx"], "amx")}
    assert per["amx"].winner == "aoti-int8" and per["avx2"].winner == "onnx"
    assert per["avx2"].excluded == {"aoti-int8": "aoti-int8 misses on avx2"} and per["avx2"].timed_on == "amx"
    assert Selection.from_dict(chosen.to_dict()).per_class == [] and chosen.to_dict().get("per_class") is None


def test_a_bf16_package_is_not_emulated_below_native_bf16_and_is_compiled_for_the_lowest_bf16_class(monkeypatch):
    """An AOTInductor BF16 package is never run capped to a class without native BF16 (the judge would fail the test)
    and its code targets the fleet's lowest native-BF16 class, not the fleet's lowest class."""
    from toolchain.torchtools import isa

    def never(outputs):
        raise AssertionError("a BF16 package was run capped to a class without native BF16")

    proof = _prove(["avx2", "avx512_vnni", "avx512_bf16", "amx"], runner="aoti", precision="bf16", needs="avx512", monkeypatch=monkeypatch, judge=never)
    for cls in ("avx2", "avx512_vnni"):
        c = proof.check(cls)
        assert (c.status, c.offered) == ("untested", False) and "no native BF16" in c.reason
    assert proof.check("amx").status == "passed"
    fleet = _Recipe(["avx2", "avx512_vnni", "avx512_bf16", "amx"])
    assert isa.portable_class(fleet, "bf16") == "avx512_bf16"
    assert isa.portable_class(fleet, "int8") == isa.portable_class(fleet) == "avx2"
