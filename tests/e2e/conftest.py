"""Build the example recipes once per session, as a user would: the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mlpack(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "toolchain", *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class Built:
    def __init__(self, out: Path, name: str, proc: subprocess.CompletedProcess):
        self.root = out / name
        self.proc = proc
        self.manifest = json.loads(proc.stdout) if proc.stdout.strip() else None

    def target(self, name: str) -> dict:
        return next(t for t in self.manifest["targets"] if t["name"] == name)


def build_recipe(tmp_path_factory, recipe: str, name: str) -> Built:
    """Build recipes/<recipe> once into a fresh output root; it must pass."""
    out = tmp_path_factory.mktemp("out")
    proc = mlpack("build", f"recipes/{recipe}", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Built(out, name, proc)


@pytest.fixture(scope="session")
def cnn_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "cnn.yaml", "tiny-cnn")


@pytest.fixture(scope="session")
def bert_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "tiny-bert.yaml", "tiny-bert")


@pytest.fixture(scope="session")
def cnn_precision_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "cnn-precision.yaml", "tiny-cnn-precision")


@pytest.fixture(scope="session")
def bert_precision_build(tmp_path_factory) -> Built:
    return build_recipe(tmp_path_factory, "tiny-bert-precision.yaml", "tiny-bert-precision")
