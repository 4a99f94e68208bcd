"""manifest.json: what was built, from what, with which tools, and how close it is.

`schema()` is the shipped JSON Schema (manifest.schema.json) completed from
the kind registry: the `kind` enum and the fields each kind adds to its
target entry. The shipped file alone accepts any kind (plugins included).
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files as package_files
from pathlib import Path

from toolchain import kinds
from toolchain.fsutil import sha256_file

SCHEMA_ID = "mlpack.manifest/1"

__all__ = ["SCHEMA_ID", "file_entries", "read", "schema", "sha256_file", "write"]


def file_entries(root: Path, paths: list[Path]) -> list[dict]:
    """sha256 and size of each file, paths relative to the build root."""
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(paths)]


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


def write(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def is_mlpack_output(folder: Path) -> bool:
    """Whether `folder` is a tree mlpack published (its manifest.json carries mlpack's schema id)."""
    path = Path(folder) / "manifest.json"
    try:
        if path.is_symlink() or path.stat().st_size > 64 << 20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("mlpack.manifest/")


def problems(manifest: dict) -> list[str]:
    """Where `manifest` breaks the schema, as 'path: message' lines (empty when it conforms)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in sorted(validator.iter_errors(manifest), key=str)][:5]
