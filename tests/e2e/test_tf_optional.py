"""TensorFlow is an optional extra: without it TF recipes exit 2 naming the extra, PyTorch recipes still build.

TensorFlow is installed in the dev environment, so the CLI runs in a subprocess
whose import system refuses it, as if `pip install mlpack` had left it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.e2e.conftest import ROOT
from tests.e2e.test_build_failures import cnn_recipe

HIDDEN = ("tensorflow", "tf2onnx", "keras", "tensorflow_serving", "tf_keras")

# The path finder is swapped for one that cannot see the hidden packages, so
# `importlib.util.find_spec` answers None and `import` raises ModuleNotFoundError,
# exactly as when they are not installed (torch probes find_spec("tensorflow")).
RUN_WITHOUT_TF = textwrap.dedent(f"""
    import importlib.machinery
    import sys

    class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in {HIDDEN!r}:
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    from toolchain.cli import main

    rc = main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {HIDDEN!r})
    assert not leaked, leaked
    sys.exit(rc)
""")


def mlpack_without_tf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_TF, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_tf_recipe_without_tensorflow_exits_2_naming_the_extra(tmp_path):
    recipe = ROOT / "recipes" / "tf-scorer.yaml"
    proc = mlpack_without_tf("build", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{recipe}: source.framework: tensorflow needs TensorFlow" in proc.stderr
    assert "fix: pip install 'mlpack[tensorflow]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "tf-scorer").exists() and not list((tmp_path / "out").glob(".tf-scorer.tmp-*"))


def test_tf_recipe_validates_without_tensorflow():
    proc = mlpack_without_tf("validate", str(ROOT / "recipes" / "keras-mobilenet.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "ok - keras-mobilenet v1, tensorflow" in proc.stderr


def test_pytorch_recipe_builds_without_tensorflow(tmp_path):
    proc = mlpack_without_tf("build", str(cnn_recipe(tmp_path / "r")), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "small" / "onnx" / "model.onnx").is_file()
