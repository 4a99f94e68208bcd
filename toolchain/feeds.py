"""Feeds on disk: a list of {input or output name: array} saved as one .npz.

Keys are `<index>/<name>`; loading never unpickles (allow_pickle=False).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Feed = dict[str, np.ndarray]


def save_feeds(path: Path, feeds: list[Feed]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})


def load_feeds(path: Path) -> list[Feed]:
    """Inverse of save_feeds: the build's parity samples or reference outputs."""
    with np.load(path, allow_pickle=False) as data:
        feeds: dict[int, Feed] = {}
        for key in data.files:
            i, name = key.split("/", 1)
            feeds.setdefault(int(i), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]
