"""Show the AOTInductor layout pitfall and that mlpack's runner avoids it.

Feeds a built package the parity samples as non-contiguous tensors, once raw
(straight into the package) and once through mlpack's AotiRunner (which makes
inputs contiguous), and prints each one's cosine to the eager reference.

    python scripts/check_aoti_layout.py artifacts/tiny-cnn aoti
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch._inductor

from toolchain.feeds import load_feeds
from toolchain.manifest import read
from toolchain.runners.aoti import AotiRunner


def non_contiguous(a: np.ndarray) -> np.ndarray:
    """Same values, different strides: a slice of an array twice as wide."""
    wide = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), dtype=a.dtype)
    wide[..., ::2] = a
    view = wide[..., ::2]
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main(build_dir: str, target: str) -> int:
    root = Path(build_dir)
    m = read(root / "manifest.json")
    t = m.target(target)
    names = [s.name for s in t.signature.inputs]
    outs = [s.name for s in t.signature.outputs]
    samples, refs = load_feeds(root / "parity/samples.npz"), load_feeds(root / "parity/reference.npz")
    pkg = torch._inductor.aoti_load_package(str(root / target / "model.pt2"))
    raw, safe = [], []
    with AotiRunner(root / target / "model.pt2", names, outs, t.device) as runner:
        for feed, ref in zip(samples, refs):
            nc = {k: non_contiguous(v) for k, v in feed.items()}
            with torch.no_grad():
                got = pkg(*[torch.from_numpy(nc[n]).to(t.device) for n in names])
            raw.append(cosine(got[0].float().cpu().numpy(), ref[outs[0]]))
            safe.append(cosine(runner.infer(nc)[outs[0]], ref[outs[0]]))
    print(f"{target} ({t.device}): non-contiguous inputs, min cosine to eager over {len(raw)} samples")
    print(f"  fed raw to the package : {min(raw):.6f}")
    print(f"  through AotiRunner     : {min(safe):.6f}")
    return 0 if min(safe) > 0.9999 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
