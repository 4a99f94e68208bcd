"""INT8 AOTI packages on AMX: each GEMM autotuned between Inductor's own C++ GEMM and oneDNN's qlinear (issue 23).

With `max_autotune` and the C++ backend, Inductor times each INT8 GEMM shape at compile time on its C++ template (AMX
tile micro-kernels, the bias, residual add and requantize fused into the GEMM) and on oneDNN's `qlinear_pointwise`,
and keeps the faster. BERT-base INT8 (batch 1, seq 128, one thread, Xeon with AMX, the packages timed side by side):
the template won 60 of the 72 GEMMs (oneDNN kept the FFN-up with its GELU), 31.5 ms against 41.8 ms, batch 8 197
against 255 ms, the same cosine (0.99976). oneDNN's qlinear costs about 180 us for a 128x768x768 product there, six
times the tile arithmetic; the template's is a third of that.

Only on AMX, where it was measured. Elsewhere the template's INT8 kernel is AVX512-VNNI's, untimed against oneDNN, and
autotuning costs compile time (each GEMM shape is compiled and timed). A fleet with a class below AMX gets its code
compiled for that class (isa.py), which has no tiles, so it is not autotuned either.
"""

from __future__ import annotations

from toolchain import cpuclass
from toolchain.torchtools import isa

TEMPLATE_ON = ("amx",)  # the classes where the template was measured faster
CONFIGS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def configs_for(recipe, option: str) -> tuple[dict, str]:
    """(Inductor configs, why) for an INT8 CPU package: autotuned GEMMs, or oneDNN's kernel alone ({})."""
    if option == "aten":
        return {}, "gemm: aten"
    here = cpuclass.machine_class()
    if here not in TEMPLATE_ON:
        return {}, f"this machine ({here or 'below avx2'}) has no AMX, where Inductor's INT8 GEMM was measured faster"
    low = isa.portable_class(recipe, "int8")
    if low is not None and low not in TEMPLATE_ON:
        return {}, f"serve.cpus has {low}: the code is compiled for it, without AMX tiles"
    return dict(CONFIGS), "AMX: each GEMM timed at compile time on Inductor's C++ GEMM and on oneDNN's, the faster kept"
