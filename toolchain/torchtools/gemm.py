"""INT8 and BF16 AOTI packages on AMX: each GEMM autotuned between Inductor's own C++ GEMM and oneDNN's qlinear (issue 23).

With `max_autotune` and the C++ backend, Inductor times each INT8 GEMM shape at compile time on its C++ template (AMX
tile micro-kernels, the bias, residual add and requantize fused into the GEMM) and on oneDNN's `qlinear_pointwise`,
and keeps the faster. BERT-base INT8 (batch 1, seq 128, one thread, Xeon with AMX, the packages timed side by side):
the template won 60 of the 72 GEMMs (oneDNN kept the FFN-up with its GELU), 31.5 ms against 41.8 ms, batch 8 197
against 255 ms, the same cosine (0.99976). oneDNN's qlinear costs about 180 us for a 128x768x768 product there, six
times the tile arithmetic; the template's is a third of that.

BF16 packages the same way (AMX BF16 tiles against oneDNN's BF16 linear), a smaller gain: BERT-base BF16 47.4 ms
against 50.9 at one thread, 26.5 against 29.2 at two, the same outputs.

Only on AMX, where it was measured. Elsewhere the template's INT8 kernel is AVX512-VNNI's, untimed against oneDNN, and
autotuning costs compile time (each GEMM shape is compiled and timed). A fleet with a class below AMX gets its code
compiled for that class (isa.py), which has no tiles, so it is not autotuned either.

The template splits each GEMM into as many parts as the threads it is compiled for, and no more threads ever share it:
a package compiled on a 2-CPU runner computed its GEMMs on 2 threads whatever the server gave it (BERT-base INT8 on
the Xeon with AMX, 2 threads: 26.7 ms compiled for 1 thread, 19.7 compiled for 2). `serve.threads` sets the count
(default: the build's intra-op threads). Where that differs from the machine's CPU count, Inductor would pin every
call to that many OpenMP threads, so its dynamic threads are turned on: fewer threads at serving then run the parts
in turn (BERT-base at 1 thread: 7% slower than without, at 2 threads the same). The manifest records the count and
`bench`/`serve-check` warn when they run more.
"""

from __future__ import annotations

import os

from toolchain import cpuclass
from toolchain.torchtools import isa

TEMPLATE_ON = ("amx",)  # the classes where the template was measured faster
CONFIGS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch's default intra-op thread count reads


def _not_tuned(recipe, option: str, precision: str) -> str | None:
    """Why an INT8 or BF16 CPU package is not autotuned on this machine, or None."""
    if option == "aten":
        return "gemm: aten"
    here = cpuclass.machine_class()
    if here not in TEMPLATE_ON:
        return f"this machine ({here or 'below avx2'}) has no AMX, where Inductor's C++ GEMM was measured faster"
    low = isa.portable_class(recipe, precision)
    if low is not None and low not in TEMPLATE_ON:
        return f"serve.cpus has {low}: the code is compiled for it, without AMX tiles"
    return None


def configs_for(recipe, option: str, precision: str) -> tuple[dict, str, dict | None]:
    """(Inductor configs, why, the split record) for an INT8 or BF16 CPU package: autotuned GEMMs, or oneDNN's kernel
    alone ({}, why, None: it uses the threads it is given). The split record is the manifest's `threads` and where
    they came from (`given`: serve.threads, whose count the Triton configs carry, or the build's)."""
    why = _not_tuned(recipe, option, precision)
    if why:
        return {}, why, None
    threads, configs = split_threads(recipe.serve.threads)
    given = "serve.threads" if recipe.serve.threads else "build"
    said = given if recipe.serve.threads else "the build's threads; set serve.threads to the serving instance's"
    why = f"AMX: each GEMM timed at compile time on Inductor's C++ GEMM and on oneDNN's, the faster kept; split for {threads} threads ({said})"
    return dict(CONFIGS) | configs, why, {"threads": threads, "given": given}


def cache_part(recipe, option: str, precision: str) -> dict:
    """What decides an autotuned package's split, for its cache key, without importing torch (keys stay instant):
    `serve.threads`, else this machine's CPU count and the variables torch's thread count reads."""
    if _not_tuned(recipe, option, precision):
        return {}
    return {"split": recipe.serve.threads or {"cpus": os.cpu_count(), **{k: os.environ.get(k) for k in THREAD_ENV}}}


def split_threads(requested: int | None) -> tuple[int, dict]:
    """(the threads the GEMMs are split for, the Inductor configs that do it): `serve.threads`, else the build's
    intra-op threads, as Inductor takes them. Inductor leaves the OpenMP thread count to the caller only when the split
    equals the machine's CPU count; otherwise dynamic threads keep a call from always starting that many (but one
    thread is serial code, as Inductor writes it for one)."""
    import torch

    threads = requested or torch.get_num_threads()
    if threads == 1:
        return 1, {"cpp.threads": 1}
    if threads == torch.get_num_threads() == os.cpu_count():
        return threads, {}  # Inductor's own default: split for them, the OpenMP count left to the caller
    return threads, {"cpp.threads": threads, "cpp.dynamic_threads": True}
