"""CPU classes: which x86 features an artifact was proved on, needs, and may be served to. Imports no framework.

A class names what decides reduced-precision numerics and speed on x86, ordered so that each one has every
feature of those before it (Zen 3: avx2; Skylake-SP: avx512; Ice Lake: avx512_vnni; Zen 4 and Cooper Lake:
avx512_bf16; Sapphire Rapids: amx). The build machine emulates a lower class by capping what oneDNN and
ATen dispatch to (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY); a higher one it cannot run at all.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from toolchain.machine import cpu_flags, cpu_identity

CLASSES = ("avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx")
# /proc/cpuinfo flags a class needs (each class also needs those of the classes before it)
_OWN_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"), "avx512_vnni": ("avx512_vnni",),
              "avx512_bf16": ("avx512_bf16",), "amx": ("amx_tile", "amx_int8", "amx_bf16")}  # fmt: skip
_ONEDNN_ISA = {"avx2": "AVX2", "avx512": "AVX512_CORE", "avx512_vnni": "AVX512_CORE_VNNI", "avx512_bf16": "AVX512_CORE_BF16", "amx": "AVX512_CORE_AMX"}
# How Inductor compiles a package's own code for a class: gcc's -march level and the vector width
MARCH = {"avx2": "x86-64-v3", "avx512": "x86-64-v4", "avx512_vnni": "x86-64-v4", "avx512_bf16": "x86-64-v4", "amx": "x86-64-v4"}
SIMD_BITS = {"avx2": 256, "avx512": 512, "avx512_vnni": 512, "avx512_bf16": 512, "amx": 512}
# The classes where u8 x s8 products go through 16-bit saturating pairs (vpmaddubsw): no VNNI
SATURATING = frozenset({"avx2", "avx512"})
NATIVE_BF16 = frozenset({"avx512_bf16", "amx"})


def rank(cls: str) -> int:
    return CLASSES.index(cls)


def class_of(flags: set[str] | list[str]) -> str | None:
    """The highest class whose flags (and those of every class before it) are all present; None below AVX2."""
    flags, best = set(flags), None
    for cls in CLASSES:
        if not set(_OWN_FLAGS[cls]) <= flags:
            break
        best = cls
    return best


def machine_class() -> str | None:
    """This machine's class (MLPACK_CPU_CLASS caps it, like the emulation does, for tests and for a build that
    must not prove anything above a class)."""
    import os

    own = class_of(cpu_flags())
    cap = os.environ.get("MLPACK_CPU_CLASS")
    if cap in CLASSES and own is not None and rank(cap) < rank(own):
        return cap
    return own


def saturating(cpus: list[str]) -> list[str]:
    """The classes INT8 must be quantized for so that u8 x s8 pairs cannot saturate: the fleet's classes without
    VNNI, or this machine's own when the recipe names no fleet (a build on an AVX2 runner is gated, and served, there:
    full-range INT8 fell to cosine 0.974 on a Zen 1 that way)."""
    fleet = list(cpus) or [c for c in (machine_class(),) if c]
    return [c for c in fleet if c in SATURATING]


def machine_features() -> list[str]:
    return list(cpu_identity()["features"])


def emulation_env(cls: str) -> dict[str, str]:
    """Environment that makes oneDNN, ATen and MKL (torch's FP32 GEMMs) dispatch as on `cls` (a class at or below this
    machine's)."""
    return {"ONEDNN_MAX_CPU_ISA": _ONEDNN_ISA[cls], "DNNL_MAX_CPU_ISA": _ONEDNN_ISA[cls], "ATEN_CPU_CAPABILITY": "avx2" if cls == "avx2" else "avx512",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2" if cls == "avx2" else "AVX512", "MLPACK_CPU_CLASS": cls}  # fmt: skip


def lowest(classes: list[str]) -> str:
    return min(classes, key=rank)


# ------------------------------------------------------------------ what compiled code needs

# Instruction evidence, from the most demanding class down: a mnemonic or register pattern in `objdump -d`.
_EVIDENCE = (
    ("amx", re.compile(r"\b(tile(loadd|stored|zero|release)|ldtilecfg|tdpb[su][su]d|tdpbf16ps)\b")),
    ("avx512_bf16", re.compile(r"\b(vcvtne2ps2bf16|vcvtneps2bf16|vdpbf16ps)\b")),
    ("avx512_vnni", re.compile(r"\bvpdp(busd|bssd|wssd|wssds|busds)\b[^\n]*%zmm")),
    ("avx512", re.compile(r"%zmm\d|%k[1-7]\b")),
    ("avx2", re.compile(r"%ymm\d")),
)


def code_needs(binary: Path) -> str | None:
    """The lowest class that can execute a shared object's instructions, read from its disassembly (the most
    demanding instruction found decides); None when the code uses nothing beyond SSE, or objdump is missing."""
    try:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for cls, pattern in _EVIDENCE:
        if pattern.search(text):
            return cls
    return None


def package_needs(package: Path) -> str | None:
    """The class a .pt2 package's compiled code needs (its shared objects, scanned)."""
    import tempfile
    import zipfile

    needs: list[str] = []
    with zipfile.ZipFile(package) as z, tempfile.TemporaryDirectory() as tmp:
        for name in z.namelist():
            if name.endswith(".so"):
                path = Path(z.extract(name, tmp))
                found = code_needs(path)
                if found:
                    needs.append(found)
    return max(needs, key=rank) if needs else None
