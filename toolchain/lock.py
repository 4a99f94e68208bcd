"""One build per output at a time: an flock on `<out>/.<name>.lock`.

The kernel drops the lock when its holder dies (even by SIGKILL), so a lock
is never stale; the file holds the holder's pid for the message.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import UsageError


@contextmanager
def build_lock(path: Path, on_wait: Callable[[str], None] | None = None):
    """Hold the lock for the block; waits (saying for whom) if another build has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_NOFOLLOW: a symlink planted at the lock path must not make mlpack write where it points.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        what = "a symbolic link" if path.is_symlink() else "not a regular file" if path.exists() else "not writable"
        raise UsageError(f"--out: the lock file {path} is {what} ({e.strerror})", f"remove {path}; mlpack creates it as a plain file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if on_wait:
                on_wait(f"another mlpack build (pid {holder}) holds {path}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
