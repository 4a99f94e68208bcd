"""Content-addressed build cache. Imports no ML framework.

A step's key hashes everything that determines its result: the source model's
files, the recipe sections it reads, mlpack's own code and every tool's
version. Entries live in `<out>/.mlpack-cache/<key>/`: copies of the published
files (reflinks where the filesystem shares blocks copy-on-write; never hard
links, so damage to one side never reaches the other) plus the step's result;
a hit is verified file by file against the recorded sha256 before it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar

from toolchain import cpuclass, kinds
from toolchain.environment import tool_versions
from toolchain.fsutil import clean_stale, clone_file, sha256_file
from toolchain.recipe import Recipe
from toolchain.records import CacheEntry, FileEntry
from toolchain.remote import open_remote

F = TypeVar("F")

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
    """Digests of the files that define the model (Recipe.files: a factory's folder of .py files, what
    it can import; weights, exported programs, SavedModels, data), leaving out a build output inside."""
    return {name: file_digest(p) for f in recipe.files() for name, p in f.named_members(skip=out_root).items()}


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
        # a fleet's classes: which of them this machine could emulate decides the verdicts, and CPU packages' code
        **({"cpus": recipe.serve.cpus, "cpu_class": cpuclass.machine_class()} if recipe.serve.cpus else {}),
        **kind.recipe_cache_parts(spec, recipe),  # e.g. the threads an AOTI package's GEMMs are split for
        # without a fleet, INT8 is quantized for this machine's class when it saturates (7-bit forms)
        **({"saturating": own} if not recipe.serve.cpus and (own := cpuclass.saturating([])) else {}),
    }
    return _hash_json(parts)


def selection_key(options: dict, target_keys: dict[str, str], machine: dict) -> str:
    """The selection's timings: the artifacts timed (by their keys), how, and on which machine type."""
    return _hash_json({"select": options, "targets": target_keys, "machine": machine, "code": code_digest(), "tools": sorted(tool_versions().items())})


# ------------------------------------------------------------------ entries


def entry_dir(out_root: Path, key: str) -> Path:
    return out_root / CACHE_DIR / key


def lookup(out_root: Path, key: str, remote=None) -> CacheEntry | None:
    """The cached entry for `key` if every file is present and intact.

    Local first; on a miss, a remote cache (toolchain.remote) is asked, its
    files verified and installed as a local entry.
    """
    entry = _local(out_root, key)
    if entry is None and remote is not None and remote.try_fetch(key, entry_dir(out_root, key)):
        entry = _local(out_root, key)
    return entry


def _local(out_root: Path, key: str) -> CacheEntry | None:
    folder = entry_dir(out_root, key)
    try:
        entry = CacheEntry.from_dict(json.loads((folder / "result.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for f in entry.files:
        p = folder / "files" / f.path
        try:
            if p.stat().st_size != f.bytes or sha256_file(p) != f.sha256:
                raise OSError("hash mismatch")
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)  # corrupted: never served
            return None
    try:
        os.utime(folder / "result.json")  # last use, for `mlpack cache prune`
    except OSError:
        pass
    return entry


def restore(out_root: Path, key: str, entry: CacheEntry, staging: Path) -> None:
    """Link the cached files into a new build tree at their manifest paths."""
    for rel in entry.paths:
        src = entry_dir(out_root, key) / "files" / rel
        if src.is_file():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            clone_file(src, dst)


def store(out_root: Path, key: str, entry: CacheEntry, root: Path, remote=None) -> None:
    """Record a successful step: copy its files (and the logs that exist) from the build tree `root`;
    upload it when a remote is set."""
    folder = entry_dir(out_root, key)
    tmp = folder.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    entry = replace(entry, aux=[a for a in entry.aux if (root / a).is_file()])
    for rel in entry.paths:
        dst = tmp / "files" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        clone_file(root / rel, dst)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "result.json").write_text(json.dumps(entry.to_dict()))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    if remote is not None:
        remote.try_upload(key, folder)


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
        clone_file(entry_dir(out_root, key) / "files" / hit.files[0].path, dst)
        return
    produce(dst)
    store(out_root, key, CacheEntry([FileEntry(dst.name, sha256_file(dst), dst.stat().st_size)]), dst.parent)


# ------------------------------------------------------------------ one build's steps


@dataclass
class Outcome(Generic[F]):
    """A cached step's answer: the entry it produced or restored, or the step's own failure."""

    entry: CacheEntry | None
    hit: bool = False
    failure: F | None = None


class BuildCache:
    """The cache as one build uses it: the local store under <out>, a shared one behind it, and
    whether hits are allowed (--force). Steps run through `step`, from any scheduler thread."""

    def __init__(self, out_root: Path, remote=None, force: bool = False):
        self.out_root, self.remote, self.force = out_root, remote, force
        self._remote_lock = threading.Lock()  # one transfer at a time: fsspec clients are not all thread-safe
        if (out_root / CACHE_DIR).is_dir():
            clean_stale(out_root / CACHE_DIR, ".*.tmp-*")  # entries a killed build was writing

    @classmethod
    def open(cls, out_root: Path, url: str | None, force: bool) -> BuildCache:
        """--cache URL (else MLPACK_CACHE) behind the local cache of `out_root`."""
        return cls(out_root, open_remote(url), force)

    def step(self, key: str, staging: Path, run: Callable[[], CacheEntry | F], logs: Sequence[str] = ()) -> Outcome[F]:
        """Look `key` up; on a verified hit restore its files into `staging`. Else `run` the step: a
        CacheEntry it returns is stored (with `logs`, relative to `staging`) and uploaded; anything else
        is the step's failure, returned as it is and never cached."""
        if not self.force:
            with self._lock_remote():
                hit = lookup(self.out_root, key, self.remote)
                if hit is not None:
                    upload_missing(self.out_root, key, self.remote)
            if hit is not None:
                restore(self.out_root, key, hit, staging)
                return Outcome(hit, hit=True)
        produced = run()
        if not isinstance(produced, CacheEntry):
            return Outcome(None, failure=produced)
        produced = replace(produced, aux=list(logs))
        with self._lock_remote():
            store(self.out_root, key, produced, staging, self.remote)
        return Outcome(produced)

    def _lock_remote(self):
        return self._remote_lock if self.remote is not None else contextlib.nullcontext()

    def summary(self) -> str | None:
        """What the shared cache did in this build, when there is one."""
        r = self.remote
        if r is None:
            return None
        return f"shared cache {r.url}: {len(r.fetched)} entries fetched, {len(r.uploaded)} uploaded" + (
            f"; {len(r.errors)} errors, first: {r.errors[0]}" if r.errors else ""
        )
