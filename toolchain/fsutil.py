"""File operations a build relies on: digests, copy-on-write copies, atomic publish, log tails."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import uuid
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tail(path: Path, lines: int = 12) -> str:
    """The last `lines` lines of a log, or "" when it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


FICLONE = 0x40049409  # Linux ioctl: share the blocks copy-on-write (btrfs, XFS, bcachefs)


def clone_file(src: Path, dst: Path) -> None:
    """An independent copy of `src` at `dst`: a reflink where the filesystem can, else bytes.

    Never a hard link: published files and cache entries must not share an inode,
    or corrupting one corrupts the other at the same moment.
    """
    import fcntl

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        except OSError:  # no reflinks here (ext4, tmpfs, overlay, another filesystem)
            shutil.copyfileobj(fin, fout, 16 << 20)
    shutil.copystat(src, dst)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link within one output tree (an artifact and its serving repository copy): a
    multi-GB model is not stored twice. Never between an output and the cache (clone_file)."""
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links unsupported
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(staging: Path, final: Path) -> None:
    """Put `staging` at `final` so a reader sees the old tree or the new, never half."""
    if not final.exists():
        os.rename(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old tree
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out_root: Path, pattern: str) -> list[Path]:
    """Remove temporaries named `...tmp-<pid>-...` whose build process is gone."""
    removed = []
    for p in out_root.glob(pattern):
        try:
            pid = int(p.name.split("tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
