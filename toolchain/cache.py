"""Content-addressed build cache. Imports no ML framework.

A step's key hashes everything that determines its result: the source model's
files, the recipe sections it reads, mlpack's own code and every tool's
version. Entries live in `<out>/.mlpack-cache/<key>/`: copies of the published
files (reflinks where the filesystem shares blocks copy-on-write; never hard
links, so damage to one side never reaches the other) plus the step's result;
a hit is verified file by file against the recorded sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path

from toolchain import kinds
from toolchain.environment import tool_versions
from toolchain.fsutil import clone_file, sha256_file
from toolchain.recipe import Recipe

CACHE_DIR = ".mlpack-cache"
# Recipe sections every step's result depends on (targets add their own spec).
SOURCE_SECTIONS = ("source", "inputs", "outputs", "dims", "data")


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@cache
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(Path(path))


def file_digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path), st.st_mtime_ns, st.st_size)


def _tree_digest(root: Path, pattern: str, skip: Path | None = None) -> dict[str, str]:
    """Digests of the files under `root` matching `pattern`, leaving out caches,
    hidden folders (.venv, .git) and `skip` (the build output, when it lies inside)."""
    out = {}
    for p in sorted(root.rglob(pattern)):
        rel = p.relative_to(root)
        if not p.is_file() or "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts[:-1]):
            continue
        if skip is not None and p.is_relative_to(skip):
            continue
        out[rel.as_posix()] = file_digest(p)
    return out


@cache
def code_digest() -> str:
    """mlpack's own code: a change to a converter invalidates what it built."""
    root = Path(__file__).parent
    return _hash_json(_tree_digest(root, "*.py") | _tree_digest(root, "*.txt"))


def kind_digest(kind) -> str | None:
    """A plugin kind's own code (mlpack's kinds are in code_digest already)."""
    own = Path(__file__).parent
    files = [p for p in kind.fingerprint_files() if p.is_file() and not p.resolve().is_relative_to(own)]
    return _hash_json({str(p): file_digest(p) for p in files}) if files else None


def source_files(recipe: Recipe, out_root: Path | None = None) -> dict[str, str]:
    """Digests of the files that define the model.

    For a factory: every .py file under the factory's folder (what it can
    import from the recipe's tree), plus weights, exported programs, data.
    """
    src = recipe.source
    files: dict[str, str] = {}
    if src.factory:
        folder = recipe.resolve(src.factory.rsplit(":", 1)[0]).parent
        # The output may lie in that folder (artifacts/ beside the model code): its
        # generated model.py files must not change the key of the next build.
        files |= {f"factory/{k}": v for k, v in _tree_digest(folder, "*.py", out_root).items()}
    for key in ("exported", "weights", "keras"):
        rel = getattr(src, key)
        if rel:
            files[key] = file_digest(recipe.resolve(rel))
    if src.savedmodel:
        files |= {f"savedmodel/{k}": v for k, v in _tree_digest(recipe.resolve(src.savedmodel), "*").items()}
    if recipe.data:
        files |= {f"data/{rel}": file_digest(recipe.resolve(rel)) for rel in recipe.data.files()}
    return files


def source_key(recipe: Recipe, out_root: Path | None = None) -> str:
    """Key of the reference step: the model, its I/O and the parity samples."""
    dump = recipe.model_dump(mode="json")
    return _hash_json(
        {
            "sections": {k: dump[k] for k in SOURCE_SECTIONS},
            "samples": {"n": recipe.parity.samples, "seed": recipe.parity.seed},
            "files": source_files(recipe, out_root),
            "tools": sorted(tool_versions().items()),
            "code": code_digest(),
        }
    )


def target_key(recipe: Recipe, spec, src_key: str) -> str:
    kind = kinds.get(spec.kind)
    parts = {
        "source": src_key,
        "target": spec.model_dump(mode="json"),
        "tolerance": recipe.tolerance(spec).model_dump(mode="json"),
        "kind": kind_digest(kind),
        **kind.cache_parts(spec),  # e.g. the GPU an engine or CUDA kernel is bound to
    }
    return _hash_json(parts)


def selection_key(options: dict, target_keys: dict[str, str], machine: dict) -> str:
    """The selection's timings: the artifacts timed (by their keys), how, and on which machine type."""
    return _hash_json({"select": options, "targets": target_keys, "machine": machine, "code": code_digest(), "tools": sorted(tool_versions().items())})


# ------------------------------------------------------------------ entries


def entry_dir(out_root: Path, key: str) -> Path:
    return out_root / CACHE_DIR / key


def lookup(out_root: Path, key: str, remote=None) -> dict | None:
    """The cached result for `key` if every file is present and intact.

    Local first; on a miss, a remote cache (toolchain.remote) is asked, its
    files verified and installed as a local entry.
    """
    result = _local(out_root, key)
    if result is None and remote is not None and remote.try_fetch(key, entry_dir(out_root, key)):
        result = _local(out_root, key)
    return result


def _local(out_root: Path, key: str) -> dict | None:
    entry = entry_dir(out_root, key)
    try:
        result = json.loads((entry / "result.json").read_text())
    except (OSError, ValueError):
        return None
    for f in result.get("files", []):
        p = entry / "files" / f["path"]
        try:
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise OSError("hash mismatch")
        except OSError:
            shutil.rmtree(entry, ignore_errors=True)  # corrupted: never served
            return None
    try:
        os.utime(entry / "result.json")  # last use, for `mlpack cache prune`
    except OSError:
        pass
    return result


def _paths(result: dict) -> list[str]:
    """Verified artifact files, then the step's logs (kept, not verified)."""
    return [f["path"] for f in result.get("files", [])] + result.get("aux", [])


def restore(out_root: Path, key: str, result: dict, staging: Path) -> None:
    """Link the cached files into a new build tree at their manifest paths."""
    for rel in _paths(result):
        src = entry_dir(out_root, key) / "files" / rel
        if src.is_file():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            clone_file(src, dst)


def store(out_root: Path, key: str, result: dict, root: Path, aux: list[str] = (), remote=None) -> None:
    """Record a successful step: copy its files (and logs) from the published tree; upload it when a remote is set."""
    entry = entry_dir(out_root, key)
    tmp = entry.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result = {**result, "aux": [a for a in aux if (root / a).is_file()]}
    for rel in _paths(result):
        dst = tmp / "files" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        clone_file(root / rel, dst)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "result.json").write_text(json.dumps(result))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    if remote is not None:
        remote.try_upload(key, entry)


def upload_missing(out_root: Path, key: str, remote) -> None:
    """A local hit the remote lacks (built before the remote was set): share it."""
    if remote is not None and key not in remote.fetched and _local(out_root, key) is not None:
        remote.try_upload(key, entry_dir(out_root, key))


def cached_file(out_root: Path, parts: dict, dst: Path, produce) -> None:
    """Write `dst` with `produce(dst)`, or link it from the cache entry of `parts`.

    For derived files whose producer imports a framework (TF Serving warmup
    records need TensorFlow): an unchanged rebuild must not.
    """
    key = _hash_json({**parts, "code": code_digest(), "tools": sorted(tool_versions().items())})
    hit = lookup(out_root, key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if hit:
        clone_file(entry_dir(out_root, key) / "files" / hit["files"][0]["path"], dst)
        return
    produce(dst)
    entry = {"files": [{"path": dst.name, "sha256": sha256_file(dst), "bytes": dst.stat().st_size}]}
    store(out_root, key, entry, dst.parent)
