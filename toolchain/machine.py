"""Facts about this machine that decide what a build may do, read without importing a framework."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from pathlib import Path

# CPU features that decide which reduced precision is fast here (and so which artifact wins).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")


@cache
def gpu_identity() -> str:
    """GPU name and compute capability via nvidia-smi (no CUDA import); 'none' without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def cuda_missing() -> str | None:
    """Why torch cannot run on a CUDA GPU here, or None (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch {torch.__version__} sees no CUDA device"
        return f"device: cuda needs a CUDA GPU ({build})"
    return None


@cache
def cpu_flags() -> set[str]:
    """The first CPU's flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.split(":")[0].strip() == "flags"), set())
    except OSError:
        return set()


@cache
def cpu_identity() -> dict:
    """The CPU that timings are valid for: model, logical cores, and the features that matter here.

    MLPACK_MACHINE_TYPE overrides the model name (to tell CI runners of one pool apart, or in tests).
    """
    model, flags = platform.processor() or platform.machine(), cpu_flags()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
    except OSError:
        pass
    return {
        "model": os.environ.get("MLPACK_MACHINE_TYPE") or model,
        "cores": os.cpu_count(),
        "features": [f for f in CPU_FEATURES if f in flags],
        "gpu": gpu_identity(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM, which exec resets. ru_maxrss keeps the forking parent's peak
    across exec, so a step or a bench child would report at least its parent's memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # no /proc: an upper bound
