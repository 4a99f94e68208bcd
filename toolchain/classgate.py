"""Parity per CPU class: an artifact re-judged under each class of the recipe's fleet (`serve.cpus`) that this
machine can emulate, by capping the ISA oneDNN and ATen dispatch to (toolchain/cpuclass.py), in a fresh process.

What cannot be run is said, never passed: a class above this machine's, or a runtime with no ISA cap (ONNX
Runtime's MLAS dispatches on cpuid). For those the verdict rests on what is known of the arithmetic: an INT8 form
whose u8 x s8 pairs cannot overflow 16 bits (7-bit weights) computes the same integers everywhere; one that can
is not offered to the classes without VNNI. `python -m toolchain.classgate RUNNER.json BASE SAMPLES OUT` is the
child that runs an artifact's parity samples; this module imports no framework at import time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from toolchain import cpuclass
from toolchain.feeds import load_feeds, save_feeds
from toolchain.records import ClassCheck, CpuProof, RunnerSpec
from toolchain.runners import open_runner

_INT8 = {"int8", "int8-dynamic", "int8-static"}
_FAST = {"int8": ("amx_int8", "avx512_vnni", "avx_vnni"), "bf16": ("amx_bf16", "avx512_bf16")}
TIMEOUT_S = 900.0


def _precision_group(precision: str | None) -> str:
    if precision in _INT8 or (precision or "").startswith("int8"):
        return "int8"
    return precision or "fp32"


def needs_of(code: list[Path]) -> str | None:
    """The class an artifact's own compiled code needs (scanned); None for runtimes that dispatch at run time."""
    found = [cpuclass.package_needs(f) if f.suffix == ".pt2" else cpuclass.code_needs(f) for f in code if f.is_file()]
    found = [c for c in found if c]
    return max(found, key=cpuclass.rank) if found else None


def prove(recipe, precision: str | None, runner: RunnerSpec, base: Path, root: Path, code: list[Path], passed_here: tuple[bool, float, float],
          quantization: dict | None, compiled_for: str | None, judge=None, capped: bool = False, bf16_parts: bool = False) -> CpuProof:  # fmt: skip
    """The artifact's verdict per class. passed_here: (passed, worst cosine, worst abs error) of the gate that just ran
    natively; judge(outputs) -> (passed, cosine, abs error) judges outputs of the parity samples like that gate (None: the
    artifact is not re-run under other classes); code: its files of machine code; capped: its runtime obeys the ISA caps;
    bf16_parts: some of it computes in BF16 (an INT8 package's attention), so it is offered where BF16 is native only."""
    here = cpuclass.machine_class()
    group = _precision_group(precision)
    features = cpuclass.machine_features()
    needs = needs_of(code)
    checks = []
    for cls in recipe.serve.cpus or ([here] if here else []):
        checks.append(_check(cls, here, group, runner, base, root, needs, passed_here, quantization or {}, judge, capped, bf16_parts))
    fast = [f for f in _FAST.get(group, ()) + (_FAST["bf16"] if bf16_parts else ()) if f in features]
    return CpuProof(here, features, needs, compiled_for, fast, checks)


def _check(cls, here, group, runner, base, root, needs, passed_here, quantization, judge, capped, bf16_parts=False) -> ClassCheck:
    if cls != here and (group == "bf16" or bf16_parts) and cls not in cpuclass.NATIVE_BF16:  # never offered there: emulated BF16 is slower than FP32
        what = "an artifact with BF16 parts (attention)" if bf16_parts and group != "bf16" else "a BF16 artifact"
        return ClassCheck(cls, "untested", "none", False, f"not run: {cls} has no native BF16, so {what} is not offered there "
                          "(its BF16 kernels are emulated: 5.6x slower than FP32 on a Zen 3); FP32 or INT8 artifacts serve that class")  # fmt: skip
    if needs is not None and cpuclass.rank(needs) > cpuclass.rank(cls):
        return ClassCheck(cls, "failed", "code", False, f"its compiled code uses {needs} instructions, which {cls} does not have (it would die "
                          f"with an illegal instruction); list {cls} in serve.cpus to compile for it")  # fmt: skip
    if here is None or cpuclass.rank(cls) > cpuclass.rank(here):
        risky = _risk(cls, group, quantization, capped)
        return ClassCheck(cls, "untested", "none", risky is None, f"this machine is {here or 'below avx2'}: it cannot run {cls}'s kernels"
                          + (f"; {risky}" if risky else ""))  # fmt: skip
    if cls == here:
        ok, cos, err = passed_here
        return ClassCheck(cls, "passed" if ok else "failed", "native", ok, "" if ok else "the build's own gate failed", cos, err)
    if judge is None:  # a generator: its gate is the token-by-token judgement, run on this machine only
        return ClassCheck(cls, "untested", "none", False, f"not run: a generator is judged on the build machine's class only ({here})")
    if capped:
        return _emulated(cls, group, runner, base, root, judge)
    if group == "int8" and cls in cpuclass.SATURATING:
        if quantization.get("reduce_range"):
            return ClassCheck(cls, "derived", "exact-integer", True, "not run (onnxruntime has no ISA cap); its weights hold 7 bits, so the "
                              "16-bit pairs of u8 x s8 products cannot saturate and the class computes the integers gated here")  # fmt: skip
        return ClassCheck(cls, "untested", "none", False, f"onnxruntime cannot be capped to {cls}, where its u8 x s8 kernels pair products in "
                          f"16 bits that can saturate; list {cls} in serve.cpus to quantize in a form that cannot (reduce_range)")  # fmt: skip
    if group == "int8":
        return ClassCheck(cls, "derived", "exact-integer", True, f"not run ({runner.runner} has no ISA cap); {cls} accumulates u8 x s8 products "
                          "in 32 bits (VNNI, AMX): nothing saturates, and the class computes the integers gated here")  # fmt: skip
    risky = _risk(cls, group, quantization, capped)
    return ClassCheck(cls, "untested", "none", risky is None,
                      f"not run: {runner.runner} cannot be capped to {cls}" + (f"; {risky}" if risky else "; its float kernels differ there in summation order only"))  # fmt: skip


def _risk(cls: str, group: str, quantization: dict, capped: bool) -> str | None:
    """Why the artifact must not be handed to `cls` without a run there, or None."""
    if group == "bf16" and cls not in cpuclass.NATIVE_BF16:
        return f"{cls} has no native BF16: its kernels are emulated there (5.6x slower than FP32 measured on a Zen 3)"
    if group == "int8" and cls in cpuclass.SATURATING and not quantization.get("reduce_range") and not capped:
        return f"its u8 x s8 products can saturate on {cls} (no VNNI)"
    return None


def _emulated(cls, group, runner: RunnerSpec, base: Path, root: Path, judge) -> ClassCheck:
    env = {**os.environ, **cpuclass.emulation_env(cls)}
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    how = f"emulated (ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA']}, ATEN_CPU_CAPABILITY={env['ATEN_CPU_CAPABILITY']}, MKL_ENABLE_INSTRUCTIONS={env['MKL_ENABLE_INSTRUCTIONS']})"
    with tempfile.TemporaryDirectory(prefix="mlpack-class-") as tmp:
        out = Path(tmp) / "outputs.npz"
        cmd = [
            sys.executable,
            "-m",
            "toolchain.classgate",
            json.dumps(runner.model_dump(mode="json")),
            str(base),
            str(root / "parity" / "samples.npz"),
            str(out),
        ]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            return ClassCheck(cls, "failed", how, False, f"its parity samples did not finish in {TIMEOUT_S:g}s with the ISA capped to {cls}")
        if proc.returncode != 0 or not out.is_file():
            return ClassCheck(cls, "failed", how, False, f"the artifact fails with the ISA capped to {cls}: {error_line(proc.stderr, proc.returncode)}")
        ok, cos, err = judge(load_feeds(out))
    risky = _risk(cls, group, {}, True)
    reason = "" if ok else f"parity misses the budget with the ISA capped to {cls} (cosine {cos:.6f})"
    if ok and risky:
        reason = f"holds, but not offered: {risky}"
    return ClassCheck(cls, "passed" if ok else "failed", how, ok and risky is None, reason, cos, err)


def error_line(stderr: str, rc: int) -> str:
    """The line of a child's stderr that names its error (a C++ exception's message comes before its frames)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception): ", ln)] or [ln for ln in lines if "error:" in ln.lower() and "frame #" not in ln]
    return (named[-1] if named else lines[-1] if lines else f"exit status {rc}")[:300]


def _child(argv: list[str]) -> int:
    runner, base, samples, out = RunnerSpec.model_validate(json.loads(argv[0])), Path(argv[1]), Path(argv[2]), Path(argv[3])
    with open_runner(runner, base) as active:
        outputs = [active.infer(feed) for feed in load_feeds(samples)]
    save_feeds(out, outputs)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))


def host_warnings(targets, names: list[str] | None = None) -> list[str]:
    """What to tell a user who serves or times `targets` (TargetResult) on this machine: the ones never proved on its
    class, or not offered to it."""
    here = cpuclass.machine_class()
    out = []
    for t in targets:
        proof = t.cpu
        if proof is None or (names and t.name not in names) or not t.ok:
            continue
        check = proof.check(here)
        if check is None:
            proved = ", ".join(c.cls for c in proof.classes if c.status in ("passed", "derived")) or "no class"
            out.append(f"{t.name}: this machine is {here}, a class it was not checked for (proved on {proved}); "
                       f"add {here} to serve.cpus and rebuild to gate it here")  # fmt: skip
        elif not check.offered:
            out.append(f"{t.name}: not offered for this machine's class ({here}): {check.status}, {check.reason}")
    return out
