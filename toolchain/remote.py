"""A shared cache on any fsspec filesystem (s3://, gs://, file:///nfs/...), behind the local one.

Layout under the URL:
    entries/<key>/ENTRY.json                 the pointer, written last: {"upload", "result", "created", "bytes"}
    entries/<key>/<upload>/files/<path>      the entry's files, under the upload that wrote them

A reader only trusts an entry whose pointer exists, and re-verifies every file it
fetches against the sha256 the pointer records: a half-uploaded entry has no
pointer yet, a corrupt one fails the check and is rebuilt. Each upload writes its
files under its own id and publishes the pointer with one atomic object write
(a rename on a POSIX filesystem), so two runners uploading one key concurrently
leave one complete entry (the last pointer wins; the other upload is garbage that
`mlpack cache prune` removes). Only entries that passed are uploaded.

The remote cache trusts its writers: whoever can write under the URL can plant an
entry whose digests match its own files. Give CI runners write access, others read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from toolchain.errors import UsageError
from toolchain.fsutil import sha256_file
from toolchain.records import CacheEntry, RemoteEntry

ENTRY = "ENTRY.json"
ORPHAN_AGE_S = 3600.0  # an upload without a pointer this old is abandoned, not in progress


class RemoteCache:
    """One fsspec URL. Errors reaching it are raised as RemoteError; callers degrade to a miss."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **_storage_options(self.url))
        except (ImportError, ValueError) as e:
            raise UsageError(f"--cache {url}: {e}", _hint(url)) from None
        self.root = root.rstrip("/")
        self.errors: list[str] = []  # failures reaching the store: a build reports them, never fails on them
        self.fetched: list[str] = []
        self.uploaded: list[str] = []
        self.corrupt: set[str] = set()  # entries that failed verification here: a new upload replaces them

    def try_fetch(self, key: str, dest: Path) -> bool:
        try:
            ok = self.fetch(key, dest)
        except Exception as e:  # network, credentials, a vanished object: a miss, reported
            self.errors.append(f"fetch {key[:12]}: {type(e).__name__}: {e}")
            return False
        if ok:
            self.fetched.append(key)
        return ok

    def try_upload(self, key: str, local_entry: Path) -> None:
        try:
            if self.upload(key, local_entry):
                self.uploaded.append(key)
        except Exception as e:
            self.errors.append(f"upload {key[:12]}: {type(e).__name__}: {e}")

    def _entry(self, key: str) -> str:
        return f"{self.root}/entries/{key}"

    # ------------------------------------------------------------ reading

    def pointer(self, key: str) -> RemoteEntry | None:
        try:
            data = json.loads(self.fs.cat_file(f"{self._entry(key)}/{ENTRY}"))
            return RemoteEntry.from_pointer(key, data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a damaged pointer: treated as absent (and rebuilt)
            return None

    def fetch(self, key: str, dest: Path) -> bool:
        """Download entry `key` into the local entry folder `dest`, verifying every file; False on a miss."""
        entry = self.pointer(key)
        if entry is None:
            return False
        tmp = dest.with_name(f".{key}.tmp-{os.getpid()}-remote")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            base = f"{self._entry(key)}/{entry.upload}/files"
            for f in entry.result.files:
                local = tmp / "files" / f.path
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(f"{base}/{f.path}", str(local))
                except FileNotFoundError:  # a partial entry (its pointer outlived a file)
                    self.corrupt.add(key)
                    return False
                if local.stat().st_size != f.bytes or sha256_file(local) != f.sha256:
                    self.corrupt.add(key)
                    return False  # corrupt or partial: ignored, the step rebuilds and its upload replaces it
            for rel in entry.result.aux:  # logs: best effort, not verified
                local = tmp / "files" / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(f"{base}/{rel}", str(local))
                except FileNotFoundError:
                    pass
            if not all((tmp / "files" / f.path).is_file() for f in entry.result.files):
                return False
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "result.json").write_text(json.dumps(entry.result.to_dict()))
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------ writing

    def upload(self, key: str, local_entry: Path) -> bool:
        """Upload a verified local entry unless the remote already has one; True when uploaded."""
        if key not in self.corrupt and self.pointer(key) is not None:
            return False
        result = json.loads((local_entry / "result.json").read_text())
        upload = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        base = f"{self._entry(key)}/{upload}/files"
        total = 0
        for rel in CacheEntry.from_dict(result).paths:
            src = local_entry / "files" / rel
            if src.is_file():
                self._mkdirs(f"{base}/{rel}")
                self.fs.put_file(str(src), f"{base}/{rel}")
                total += src.stat().st_size
        pointer = json.dumps(RemoteEntry(key, upload, CacheEntry.from_dict(result), time.time(), total).pointer())
        staged = f"{self._entry(key)}/.{ENTRY}.{upload}"
        self._mkdirs(staged)
        self.fs.pipe_file(staged, pointer.encode())
        self.fs.mv(staged, f"{self._entry(key)}/{ENTRY}")  # one atomic object write / rename
        return True

    def _mkdirs(self, path: str) -> None:
        """Parent folders, where the filesystem has them (local, NFS); object stores have none."""
        if not self.fs.protocol or "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)

    # ------------------------------------------------------------ maintenance

    def keys(self) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/entries", detail=False))
        except FileNotFoundError:
            return []

    def entries(self) -> list[RemoteEntry]:
        return [e for e in (self.pointer(k) for k in self.keys()) if e is not None]

    def remove(self, key: str) -> None:
        try:
            self.fs.rm(self._entry(key), recursive=True)
        except FileNotFoundError:
            pass

    def orphans(self, now: float | None = None) -> list[str]:
        """Upload folders no pointer names, older than ORPHAN_AGE_S (abandoned or lost a race)."""
        now = now or time.time()
        out = []
        for key in self.keys():
            entry = self.pointer(key)
            try:
                names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._entry(key), detail=False)]
            except FileNotFoundError:
                continue
            for name in names:
                if name == ENTRY or name.startswith("."):
                    continue
                stamp = name.split("-", 1)[0]
                old = stamp.isdigit() and now - int(stamp) > ORPHAN_AGE_S
                if (entry is None or name != entry.upload) and old:
                    out.append(f"{self._entry(key)}/{name}")
        return out

    def verify(self, key: str, scratch: Path) -> str | None:
        """Why entry `key` is corrupt, or None: fetches and hashes every file."""
        entry = self.pointer(key)
        if entry is None:
            return "no readable ENTRY.json"
        dest = scratch / key
        if not self.fetch(key, dest):
            return "a file is missing or its sha256 differs from ENTRY.json"
        shutil.rmtree(dest, ignore_errors=True)
        return None


def _storage_options(url: str) -> dict:
    """s3:// on an S3-compatible store: the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def _hint(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
    if package:
        return f"{scheme}:// needs {package}: pip install 'mlpack[distributed]' (s3fs) or pip install {package}"
    return "give an fsspec URL: s3://bucket/prefix, gs://bucket/prefix or file:///shared/path"


def open_remote(url: str | None) -> RemoteCache | None:
    """--cache URL, else MLPACK_CACHE, else no remote cache."""
    url = url or os.environ.get("MLPACK_CACHE") or None
    return RemoteCache(url) if url else None
