"""Every YAML block in the README and docs/ is a valid recipe, or a valid part of one.

A block with `name`, `source` and `targets` is validated as it stands; any
other block is laid over a minimal recipe of its framework and validated, so a
documented fragment cannot drift from what `mlpack validate` accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from toolchain.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASE = {
    "pytorch": {
        "name": "doc",
        "source": {"framework": "pytorch", "factory": "m.py:build"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "dims": {"batch": {"min": 1, "max": 64}},
        "targets": [{"kind": "onnx"}],
    },
    "tensorflow": {
        "name": "doc",
        "source": {"framework": "tensorflow", "factory": "m.py:build"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "dims": {"batch": {"min": 1, "max": 64}},
        "targets": [{"kind": "savedmodel"}],
    },
}


def blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M):
            line = text[: m.start()].count("\n") + 1
            out.append((f"{page.relative_to(ROOT)}:{line}", m.group(1)))
    return out


def test_the_docs_have_recipe_blocks():
    assert len(blocks()) >= 4


@pytest.mark.parametrize("where,text", blocks(), ids=[w for w, _ in blocks()])
def test_yaml_block_validates(where, text, tmp_path):
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{where}: not a YAML mapping"
    if not {"name", "source", "targets"} <= set(data):
        framework = (data.get("source") or {}).get("framework", "pytorch")
        data = {**BASE[framework], **data}
    # A generator derives its signature from its model's config.json: its blocks name the example models in recipes/.
    where = ROOT / "recipes" if data.get("task") == "text-generation" else tmp_path
    parse_recipe(yaml.safe_dump(data, sort_keys=False), where / "recipe.yaml", check_files=False)
