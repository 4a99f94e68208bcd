"""Facts about this machine that decide what a build may do, read without importing a framework."""

from __future__ import annotations

import subprocess
from functools import cache


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
