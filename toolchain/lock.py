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


@contextmanager
def build_lock(path: Path, on_wait: Callable[[str], None] | None = None):
    """Hold the lock for the block; waits (saying for whom) if another build has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
