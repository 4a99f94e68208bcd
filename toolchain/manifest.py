"""manifest.json: what was built, from what, with which tools, and how close it is.

`schema()` is the shipped JSON Schema (manifest.schema.json) completed from
the kind registry: the `kind` enum and the fields each kind adds to its
target entry. The shipped file alone accepts any kind (plugins included).
"""

from __future__ import annotations

import copy
import json
import os
from importlib.resources import files as package_files
from pathlib import Path

from toolchain import kinds
from toolchain.environment import environment
from toolchain.fsutil import sha256_file
from toolchain.recipe import Recipe, accepted_dims
from toolchain.records import SCHEMA_ID, AcceptedDim, FileEntry, Manifest, ParityData, Selection, Serving, Status, TargetResult

__all__ = ["SCHEMA_ID", "file_entries", "read", "read_raw", "schema", "sha256_file", "write"]


def file_entries(root: Path, paths: list[Path]) -> list[FileEntry]:
    """sha256 and size of each file, paths relative to the build root."""
    return [FileEntry(p.relative_to(root).as_posix(), sha256_file(p), p.stat().st_size) for p in sorted(paths)]


def base_schema() -> dict:
    return json.loads(package_files("toolchain").joinpath("manifest.schema.json").read_text())


def schema() -> dict:
    """The manifest's JSON Schema for the kinds registered here."""
    s = copy.deepcopy(base_schema())
    target = s["$defs"]["target"]["properties"]
    target["kind"] = {"enum": list(kinds.names())}
    owner: dict[str, str] = {}
    for k in kinds.kinds().values():
        for name, fragment in k.manifest_fields.items():
            if name in target and target[name] != fragment:
                raise ValueError(f"kind {k.name} declares manifest field {name!r} differently from {owner.get(name, 'the base schema')}")
            target[name] = fragment
            owner[name] = k.name
    return s


def assemble(recipe: Recipe, results: list[TargetResult], serving: Serving, seconds: float, selection: Selection | None = None,
             fixed: dict[str, AcceptedDim] | None = None) -> Manifest:  # fmt: skip
    """The manifest of a build: what each target ended as, the serving repositories, the selection."""
    try:
        rel = os.path.relpath(recipe.path)
        rel = rel if not rel.startswith("..") else str(recipe.path)
    except ValueError:
        rel = str(recipe.path)
    cuda = [r for r in results if r.device == "cuda" and r.status is Status.OK]
    device = f"cuda ({cuda[0].device_name or 'GPU'})" if cuda else "cpu"
    parity = ParityData(source="data" if recipe.data else "generated") if any(r.parity for r in results) else None
    return Manifest(recipe.name, recipe.version, recipe.source.framework, rel, sha256_file(recipe.path), environment(device), results, serving,
                    seconds, parity, selection, task=recipe.task, dims=accepted_dims(recipe, fixed))  # fmt: skip


def write(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")


def read_raw(path: Path) -> dict:
    """The JSON as stored (for checking it against the schema)."""
    return json.loads(Path(path).read_text())


def read(path: Path) -> Manifest:
    """A published manifest; ValueError when the file is not one (OSError when it cannot be read)."""
    return Manifest.from_dict(read_raw(path))


def is_mlpack_output(folder: Path) -> bool:
    """Whether `folder` is a tree mlpack published (its manifest.json carries mlpack's schema id)."""
    path = Path(folder) / "manifest.json"
    try:
        if path.is_symlink() or path.stat().st_size > 64 << 20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return Manifest.claims(data)


def problems(manifest: dict) -> list[str]:
    """Where `manifest` breaks the schema, as 'path: message' lines (empty when it conforms)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in sorted(validator.iter_errors(manifest), key=str)][:5]
