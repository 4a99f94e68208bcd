"""`mlpack cache ls | prune | verify`: the local cache of an output root and a shared one.

Results are rows (dicts) for the CLI to print. Imports no framework.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from toolchain import cache
from toolchain.errors import UsageError
from toolchain.options import memory_bytes
from toolchain.records import CacheEntry
from toolchain.remote import RemoteCache

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(text)
    if not m:
        raise UsageError(f"--older-than {text!r} is not a duration", "give a number and a unit: 30m, 12h, 7d, 2w")
    return float(m.group(1)) * SECONDS[m.group(2)]


def parse_size(text: str) -> int:
    if text.strip().endswith("%"):
        raise UsageError(f"--max-size {text!r}: give a size, not a share", "e.g. 20GB or 500MiB")
    try:
        return memory_bytes(text)
    except ValueError as e:
        raise UsageError(f"--max-size: {e}", "e.g. 20GB or 500MiB") from None


def _what(result: dict) -> str:
    try:
        return CacheEntry.from_dict(result).what
    except (KeyError, TypeError, ValueError):
        return "reference outputs"


def _local_rows(out_root: Path) -> list[dict]:
    root = out_root / cache.CACHE_DIR
    rows = []
    if not root.is_dir():
        return rows
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        try:
            result = json.loads((entry / "result.json").read_text())
            used = (entry / "result.json").stat().st_mtime
        except (OSError, ValueError):
            result, used = {}, entry.stat().st_mtime
        rows.append({"where": "local", "key": entry.name, "what": _what(result), "bytes": size, "time": used})
    return rows


def _remote_rows(remote: RemoteCache) -> list[dict]:
    return [{"where": "remote", "key": e.key, "what": e.result.what, "bytes": e.bytes, "time": e.created} for e in remote.entries()]


def ls(out_root: Path, remote: RemoteCache | None) -> list[dict]:
    return _local_rows(out_root) + (_remote_rows(remote) if remote else [])


def prune(out_root: Path, remote: RemoteCache | None, max_size: int | None, older_than: float | None, dry_run: bool = False) -> list[dict]:
    """Remove entries unused for `older_than` seconds, then the least recently used until each
    store holds at most `max_size` bytes; and (remote) uploads no pointer names. Returns what went."""
    if max_size is None and older_than is None:
        raise UsageError("cache prune needs --max-size and/or --older-than", "e.g. mlpack cache prune --max-size 20GB --older-than 14d")
    now = time.time()
    removed: list[dict] = []
    stores = [("local", _local_rows(out_root))] + ([("remote", _remote_rows(remote))] if remote else [])
    for _where, rows in stores:
        rows.sort(key=lambda r: r["time"])  # oldest (least recently used) first
        keep = []
        for r in rows:
            (removed if older_than is not None and now - r["time"] > older_than else keep).append(r)
        total = sum(r["bytes"] for r in keep)
        while max_size is not None and keep and total > max_size:
            r = keep.pop(0)
            total -= r["bytes"]
            removed.append(r)
    if not dry_run:
        for r in removed:
            if r["where"] == "local":
                shutil.rmtree(cache.entry_dir(out_root, r["key"]), ignore_errors=True)
            else:
                remote.remove(r["key"])
    if remote:
        for path in remote.orphans(now):
            removed.append({"where": "remote", "key": path.rsplit("/", 2)[-2], "what": f"abandoned upload {path.rsplit('/', 1)[-1]}", "bytes": 0, "time": 0})
            if not dry_run:
                remote.fs.rm(path, recursive=True)
    return removed


def verify(out_root: Path, remote: RemoteCache | None) -> list[dict]:
    """Re-hash every entry (remote ones are fetched); corrupt entries are removed and returned."""
    bad = []
    for r in _local_rows(out_root):
        if cache.lookup(out_root, r["key"]) is None:  # lookup removes what fails its sha256
            shutil.rmtree(cache.entry_dir(out_root, r["key"]), ignore_errors=True)
            bad.append({**r, "why": "a file is missing or its sha256 differs from result.json"})
    if remote:
        with tempfile.TemporaryDirectory(prefix="mlpack-verify-") as scratch:
            for key in remote.keys():
                if remote.pointer(key) is None:
                    continue  # an upload in progress (or abandoned: prune removes those)
                why = remote.verify(key, Path(scratch))
                if why:
                    bad.append({"where": "remote", "key": key, "what": "", "bytes": 0, "time": 0, "why": why})
                    remote.remove(key)
    return bad
