"""The shape of toolchain/, checked from its source (no framework imported):

- no import cycle among toolchain modules, and every toolchain import at the top;
- no framework imported at module level (heavy imports live in the functions that need them);
- a kind's name appears as a string only in its own module, its runner and the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from toolchain import kinds

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "toolchain"
HEAVY = {"torch", "tensorflow", "onnx", "onnxruntime", "tensorrt", "keras", "tf2onnx", "transformers", "onnxconverter_common",
         "onnxscript", "tensorflow_serving", "tritonclient", "ray", "s3fs", "torchao", "safetensors"}  # fmt: skip
# Strings equal to a kind's name that do not mean the kind, each with why.
NOT_THE_KIND = {
    ("toolchain/kinds/onnx.py", "tensorrt"): "ONNX Runtime's TensorRT execution accelerator, named in a Triton config",
    ("toolchain/recipe/schema.py", "savedmodel"): "source.savedmodel, the recipe key for a SavedModel *source*",
    ("toolchain/recipe/rules.py", "savedmodel"): "source.savedmodel, the recipe key for a SavedModel *source*",
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path):
    """(imported module names, line, at module level) for every import, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.append(([a.name for a in child.names], child.lineno, top))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(([child.module] + [f"{child.module}.{a.name}" for a in child.names], child.lineno, top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for names, _, _ in imports(path):
            for name in names:
                if name in mods and name != mod:
                    edges[mod].add(name)
    return edges


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    assert cycles == [], f"import cycles among toolchain modules: {cycles}"


def test_toolchain_modules_import_each_other_at_the_top():
    local = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules().values()
        for names, line, top in imports(path)
        if not top and any(n == "toolchain" or n.startswith("toolchain.") for n in names)
    ]
    assert local == [], "function-local toolchain imports (import at the top instead): " + ", ".join(local)


def test_no_framework_at_module_level():
    heavy = [
        f"{path.relative_to(ROOT)}:{line} {names[0]}"
        for path in modules().values()
        for names, line, top in imports(path)
        if top and any(n.split(".")[0] in HEAVY for n in names[:1])
    ]
    assert heavy == [], "frameworks imported at module level: " + ", ".join(heavy)


def _strings(path: Path) -> list[tuple[str, int]]:
    return [(n.value, n.lineno) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.mark.parametrize("kind", [k for k, v in kinds.kinds().items() if type(v).__module__.startswith("toolchain.")])
def test_a_kind_is_named_only_in_its_module_and_runner(kind):
    k = kinds.get(kind)
    allowed = {Path(type(k).__module__.replace(".", "/") + ".py").as_posix()}
    allowed |= {target.split(":")[0].replace(".", "/") + ".py" for target in k.runners.values()}
    found = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed or (rel, kind) in NOT_THE_KIND:
            continue
        found += [f"{rel}:{line}" for value, line in _strings(path) if value == kind]
    assert found == [], f"the kind name {kind!r} appears outside its module ({sorted(allowed)}): {found}"


def test_every_builtin_kind_is_an_entry_point_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."mlpack.kinds"]', 1)[1].split("\n[", 1)[0]
    declared = {line.split("=")[0].strip() for line in section.strip().splitlines() if "=" in line and not line.startswith("#")}
    builtin = {k for k, v in kinds.kinds().items() if type(v).__module__.startswith("toolchain.")}
    assert declared == builtin


# Keys of a manifest, a target's entry, a cache entry or a worker's result: read through toolchain.records only.
RECORD_KEYS = {"targets", "serving", "selection", "parity_data", "environment", "recipe", "status", "stage", "parity", "files", "runner",
               "signature", "cache", "outputs", "tolerance", "ranking", "winner", "served_as", "machine", "models", "ok", "result", "payload",
               "step", "deps", "candidates", "figures", "peak_rss_mb", "build_seconds", "aux", "sha256", "tried", "strategy"}  # fmt: skip


# Dicts with such keys that are not records, each with why.
NOT_A_RECORD = {
    ("toolchain/recipe/loading.py", "targets"): "the recipe's parsed YAML, read to place its errors",
    ("toolchain/tensors.py", "outputs"): "Signature.from_dict, the tensor signature's own reader",
    ("toolchain/recipe/decoder.py", "outputs"): "the generator recipe's parsed YAML, given the outputs derived from its config",
}


def _record_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            first = node.args[0]
            key = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        if key in RECORD_KEYS and (path.relative_to(ROOT).as_posix(), key) not in NOT_A_RECORD:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} [{key!r}]")
    return found


def test_only_the_records_read_manifests_and_step_results_by_key():
    """Readers use attributes (manifest.target("onnx").parity.passed), never m["targets"]."""
    found = [hit for mod, path in modules().items() if not mod.startswith("toolchain.records") for hit in _record_reads(path)]
    assert found == [], "manifest / step-result dicts read by key outside toolchain.records: " + ", ".join(found)


def test_no_toolchain_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
