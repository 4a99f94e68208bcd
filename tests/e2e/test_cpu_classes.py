"""Artifacts proved per CPU class (issue 23): a recipe names its fleet (`serve.cpus`); CPU packages are compiled for the
lowest class, every artifact is re-judged with the ISA capped to each class this machine can emulate, and what
cannot be run is said, never passed. Selection names the fastest artifact offered to each class.

The INT8 saturation case is real: same-sign weights over inputs high in their range make the u8 x s8 products of
neighbouring inputs overflow 16 bits where oneDNN has no VNNI. Emulating a class without VNNI needs one with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from tests.e2e.conftest import mlpack
from tests.e2e.test_build_failures import write_recipe
from toolchain import classgate, cpuclass
from toolchain.feeds import load_feeds
from toolchain.manifest import schema
from toolchain.parity import compare
from toolchain.recipe import load_recipe
from toolchain.records import RunnerSpec

HERE = cpuclass.machine_class()
EMULATES_AVX2 = HERE is not None and cpuclass.rank(HERE) > cpuclass.rank("avx2")
NEEDS_VNNI = pytest.mark.skipif(
    HERE is None or cpuclass.rank(HERE) < cpuclass.rank("avx512_vnni"),
    reason=f"emulating avx512 (no VNNI) needs a machine with AVX-512 VNNI; this one is {HERE}",
)

FLEET = """\
name: fleet
source:
  framework: pytorch
  factory: cnn.py:build
  kwargs: {{channels: 8, classes: 5}}
inputs:
  - {{name: image, dtype: float32, shape: [batch, 3, 16, 16]}}
outputs: [logits]
dims:
  batch: {{min: 1, opt: 2, max: 4}}
targets:
  - kind: onnx
  - {{kind: aoti, freezing: on}}
  - {{kind: aoti, name: aoti-bf16, precision: bf16}}
  - {{kind: onnx, name: onnx-int8, quantize: int8-dynamic}}
parity:
  samples: 4
  scores: [logits]
select: {{metric: latency, batch: 1, rounds: 3}}
serve:
  cpus: {cpus}
"""

# gemm: aten: oneDNN's kernels, whose u8 x s8 pairs the capped ISA saturates (on AMX, Inductor's own GEMM would need AMX
# to run at all, so the capped class could not run the package: test_int8_attention checks that)
SATURATOR = """\
name: sat
source: {{framework: pytorch, factory: saturator.py:build}}
inputs:
  - {{name: x, dtype: float32, shape: [batch, 256], range: [0.5, 1.0]}}
outputs: [y]
dims:
  batch: {{min: 1, opt: 4, max: 8}}
targets:
  - {{kind: aoti, name: aoti-int8, precision: int8, gemm: aten}}
parity: {{samples: 4}}
serve:
  cpus: {cpus}
"""


def _fleet() -> list[str]:
    return ["avx2", HERE] if EMULATES_AVX2 else [HERE]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if HERE is None:
        pytest.skip("this CPU has no AVX2: no class to prove")
    folder = tmp_path_factory.mktemp("fleet")
    recipe = write_recipe(folder, FLEET.format(cpus=json.dumps(_fleet())))
    proc = mlpack("build", str(recipe), "--out", str(folder / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "out" / "fleet", json.loads(proc.stdout), proc


def _target(m: dict, name: str) -> dict:
    return next(t for t in m["targets"] if t["name"] == name)


def test_every_artifact_lists_each_class_of_the_fleet_and_how_it_was_proved(fleet):
    _, m, proc = fleet
    jsonschema.validate(m, schema())
    for t in m["targets"]:
        cpu = t["cpu"]
        assert cpu["built_on"] == HERE and [c["class"] for c in cpu["classes"]] == _fleet()
        native = next(c for c in cpu["classes"] if c["class"] == HERE)
        assert (native["status"], native["how"]) == ("passed", "native") and native["cosine"] > 0.99
    aoti = _target(m, "aoti")["cpu"]
    if EMULATES_AVX2:
        # The package's own code was compiled for the lowest class, and its instructions say so.
        assert aoti["compiled_for"] == "avx2" and _target(m, "aoti")["aoti"]["compiled_for"] == "avx2"
        assert aoti["needs"] in ("avx2", None)
        avx2 = aoti["classes"][0]
        assert avx2["status"] == "passed" and avx2["how"].startswith("emulated (ONEDNN_MAX_CPU_ISA=AVX2") and avx2["cosine"] > 0.9999
        # ONNX Runtime cannot be capped: never "passed" on a class it did not run on.
        onnx = _target(m, "onnx")["cpu"]["classes"][0]
        assert onnx["status"] == "untested" and "cannot be capped" in onnx["reason"]
        int8 = _target(m, "onnx-int8")
        assert int8["quantization"]["reduce_range"] and int8["cpu"]["classes"][0]["status"] == "derived"
        # BF16 on a class without native BF16 is not offered, whatever its emulated run gave.
        bf16 = _target(m, "aoti-bf16")["cpu"]["classes"][0]
        assert not bf16["offered"] and bf16["reason"]
        assert "CPU classes" in proc.stderr and "not offered" in proc.stderr


def test_selection_names_the_fastest_artifact_offered_to_each_class(fleet):
    _, m, _ = fleet
    sel = m["selection"]
    per = {c["class"]: c for c in sel["per_class"]}
    assert list(per) == _fleet() and per[HERE]["timed_on"] == HERE and per[HERE]["winner"] == sel["winner"]
    if EMULATES_AVX2:
        # Timed as avx2 (ISA capped): what obeys the caps and passed as avx2, against the eager source capped the same way ...
        avx2 = per["avx2"]
        bf16 = _target(m, "aoti-bf16")["cpu"]["classes"][0]
        timed = {"aoti", "aoti-bf16"} if bf16["status"] == "passed" else {"aoti"}
        assert avx2["timed_on"] == "avx2" and {r["target"] for r in avx2["ranking"]} == timed
        assert all(r["median_ms"] > 0 and r["vs_eager"] > 0 for r in avx2["ranking"])
        # ... ONNX Runtime cannot be capped, so it is said to be untimed; BF16 is never the winner of a class without it.
        assert {"onnx", "onnx-int8"} <= set(avx2["untimed"])
        assert avx2["winner"] == "aoti"


def test_inspect_shows_the_classes_and_bench_warns_on_a_class_never_checked(fleet):
    root, m, _ = fleet
    shown = mlpack("inspect", str(root))
    assert shown.returncode == 0 and "CPU classes" in shown.stdout and "code needs" in shown.stdout
    if not EMULATES_AVX2:
        pytest.skip(f"a class below this machine's ({HERE}) is needed to pose as one the fleet lacks")
    # A host of a class the fleet does not list: every artifact says it was not checked there.
    lower = cpuclass.CLASSES[cpuclass.rank(HERE) - 1]
    if lower == "avx2":
        pytest.skip("this machine's next class down (avx2) is in the fleet")
    proc = mlpack("bench", str(root), "--batch", "1", "--warmup", "0", "--iters", "1", "--seconds", "0.1", env={"MLPACK_CPU_CLASS": lower})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"this machine is {lower}, a class it was not checked for" in proc.stderr


@NEEDS_VNNI
def test_int8_for_a_fleet_without_vnni_holds_where_the_full_range_form_collapses(tmp_path):
    models = Path(__file__).parent / "models"
    shutil.copy(models / "saturator.py", tmp_path / "saturator.py")
    # Built for this machine only: full-range u8 activations pass here ...
    native = tmp_path / "native.yaml"
    native.write_text(SATURATOR.format(cpus=json.dumps([HERE])))
    proc = mlpack("build", str(native), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert "reduce_range" not in t["quantization"]
    # ... and collapse with the ISA capped to AVX-512 without VNNI (a Skylake-SP host): the gate catches it.
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(SATURATOR.format(cpus=json.dumps(["avx512", HERE])))
    root = tmp_path / "out" / "sat"
    reference = load_feeds(root / "parity" / "reference.npz")
    recipe = load_recipe(fleet)

    def judge(outputs):
        r = compare(reference, outputs, recipe.tolerance(recipe.targets[0]), [])
        return r.passed, r.worst_cosine, r.worst()[0]

    runner = RunnerSpec.model_validate(t["runner"])
    proof = classgate.prove(recipe, "int8", runner, root, root, [root / f["path"] for f in t["files"]], (True, 1.0, 0.0), t["quantization"], None, judge,
                            capped=True)  # fmt: skip
    avx512 = proof.check("avx512")
    assert (avx512.status, avx512.offered) == ("failed", False) and avx512.cosine < 0.9 and "capped to avx512" in avx512.reason
    # Built for the fleet: 7-bit activations, whose pairs cannot overflow, hold on the emulated class.
    proc = mlpack("build", str(fleet), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["quantization"]["reduce_range"] and t["quantization"]["reduce_range_for"] == ["avx512"]
    held = next(c for c in t["cpu"]["classes"] if c["class"] == "avx512")
    assert held["status"] == "passed" and held["how"].startswith("emulated") and held["cosine"] >= 0.999 and held["offered"]
    assert t["cpu"]["compiled_for"] == "avx512" and cpuclass.rank(t["cpu"]["needs"] or "avx2") <= cpuclass.rank("avx512")
