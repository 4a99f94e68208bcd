"""What `serve-check` and `bench` tell a user before they run: where this machine differs from what an artifact was
proved or compiled for (its CPU class, the threads its code was split for)."""

from __future__ import annotations

from pathlib import Path

from toolchain import classgate, kinds
from toolchain import manifest as mf
from toolchain.errors import UsageError
from toolchain.records import Manifest


def host_warnings(root: Path, names: list[str] | None = None, threads: int | None = None, serving: bool = False) -> list[str]:
    """Warnings for the build at `root` (a directory or its manifest) run here with `threads` intra-op threads (default:
    torch's): artifacts never proved (or not offered) for this machine's class, and artifacts whose code was split for
    fewer threads than run. `serving`: a server runs them, whose configs give `serve.threads` where the recipe set it."""
    try:
        m = Manifest.from_dict(mf.read_raw(root / "manifest.json" if root.is_dir() else root))
    except (OSError, ValueError, KeyError):
        return []  # the command itself reports an unreadable manifest
    return classgate.host_warnings(m.targets, names) + thread_warnings(m.targets, names, threads, serving)


def thread_warnings(targets, names: list[str] | None, threads: int | None, serving: bool = False) -> list[str]:
    out = []
    for t in targets:
        try:
            kind = kinds.get(t.kind) if t.ok and (not names or t.name in names) else None
        except UsageError:  # a plugin kind not installed here: the command itself says so
            continue
        split = kind.thread_split(t.extra) if kind else None
        if split is None or (serving and split.by_serve_threads):
            continue
        if threads is None:  # torch's default, what a server or bench runs unless told (imported only for such artifacts)
            import torch

            threads = torch.get_num_threads()
        if threads > split.threads:
            out.append(f"{t.name}: its GEMMs were compiled split for {split.threads} thread(s) and use no more, here {threads} run; "
                       f"set serve.threads: {threads} and rebuild to use them")  # fmt: skip
    return out
