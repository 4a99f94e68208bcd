"""`mlpack validate` imports no ML framework (SPEC: "imports no framework")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime", "tensorrt", "keras", "tf2onnx", "tensorflow_serving")

RECIPE = """\
name: tiny
source: {framework: pytorch, factory: m.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, 4]}]
dims: {batch: {min: 1, max: 8}}
targets: [{kind: onnx}, {kind: aoti}]
serve: {triton: {max_batch_size: 8, targets: [onnx]}}
"""

TF_RECIPE = """\
name: tiny
source: {framework: tensorflow, factory: m.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, 4]}]
dims: {batch: {min: 1, max: 8}}
targets: [{kind: xla}, {kind: savedmodel}, {kind: onnx}]
serve:
  triton: {max_batch_size: 8, targets: [onnx, savedmodel]}
  tfserving: {targets: [xla], batching: {max_batch_size: 8, allowed_batch_sizes: [4, 8]}}
"""


@pytest.mark.parametrize("recipe", [RECIPE, TF_RECIPE], ids=["pytorch", "tensorflow"])
def test_validate_imports_no_framework(tmp_path: Path, recipe: str):
    (tmp_path / "m.py").write_text("import torch\nimport tensorflow\ndef build(): ...\n")  # must not be imported either
    (tmp_path / "r.yaml").write_text(recipe)
    code = textwrap.dedent(f"""
        import sys
        from toolchain.cli import main
        rc = main(["validate", {str(tmp_path / "r.yaml")!r}])
        heavy = {HEAVY!r}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print("rc", rc)
        print("loaded", loaded)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "rc 0" in p.stdout, p.stdout + p.stderr
    assert "loaded []" in p.stdout, f"validate imported ML frameworks: {p.stdout}"
