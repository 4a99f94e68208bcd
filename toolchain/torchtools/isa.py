"""Compile a package's own code for a CPU class below the build machine's.

Inductor compiles AOTInductor packages with gcc's -march=native and the widest vector ISA the build machine
has: a package built on an AVX-512 runner holds zmm instructions and dies (SIGILL) on an AVX2 host. For a
fleet with weaker classes (recipe `serve.cpus`), the code is compiled for the lowest one instead: its -march
level and only the vector ISAs it has. oneDNN kernels (INT8, BF16 matmuls) still dispatch at run time.
"""

from __future__ import annotations

import contextlib

from toolchain import cpuclass

# Inductor's vector ISAs (their str() tokens) each class may use
_ISA_TOKENS = {
    "avx2": {"avx2"},
    "avx512": {"avx2", "avx512"},
    "avx512_vnni": {"avx2", "avx512", "avx512_vnni"},
    "avx512_bf16": {"avx2", "avx512", "avx512_vnni"},
    "amx": {"avx2", "avx512", "avx512_vnni", "amx_tile"},
}


def portable_class(recipe, precision: str | None = None) -> str | None:
    """The class a CPU package's code is compiled for: the lowest of the recipe's `serve.cpus` when it is below this
    machine's class; None: this machine's (-march=native). A BF16 package is offered only where BF16 is native
    (classgate), so it is compiled for the lowest of those classes in the fleet."""
    cpus = recipe.serve.cpus
    here = cpuclass.machine_class()
    if not cpus or here is None:
        return None
    if precision == "bf16" and any(c in cpuclass.NATIVE_BF16 for c in cpus):
        cpus = [c for c in cpus if c in cpuclass.NATIVE_BF16]
    low = cpuclass.lowest(cpus)
    return low if cpuclass.rank(low) < cpuclass.rank(here) else None


@contextlib.contextmanager
def compile_for(cls: str | None):
    """Inductor's C++ code generated and compiled for `cls` (None: unchanged)."""
    if cls is None:
        yield
        return
    from torch._inductor import config
    from torch._inductor import cpu_vec_isa as vec

    allowed = _ISA_TOKENS[cls]
    original = vec.valid_vec_isa_list
    chosen = [isa for isa in original() if set(str(isa).split()) <= allowed]
    bf16 = {id(isa): isa._is_avx512_bf16_supported for isa in chosen if hasattr(isa, "_is_avx512_bf16_supported")}
    for isa in chosen:  # -mavx512bf16 only where the class has it
        if hasattr(isa, "_is_avx512_bf16_supported") and cls not in cpuclass.NATIVE_BF16:
            isa._is_avx512_bf16_supported = False
    vec.valid_vec_isa_list = lambda: chosen
    try:
        with config.patch({"cpp.march": cpuclass.MARCH[cls]}):
            yield
    finally:
        vec.valid_vec_isa_list = original
        for isa in chosen:
            if id(isa) in bf16:
                isa._is_avx512_bf16_supported = bf16[id(isa)]
