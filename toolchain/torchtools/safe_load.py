"""Load a user's torch.export .pt2 without running code from it.

`torch.export.load` unpickles parts of the archive: tensor payloads through
`torch.load(weights_only=False)` after a failed safe try, custom objects through
`pickle.loads` and TorchScript's pickler. Any of those runs code a crafted file
carries, so by default all three are replaced here, for the duration of the load,
by loaders that accept plain tensors and containers only and refuse the rest,
naming what was refused. `source.allow_pickle: true` is the opt-in for trusted files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from pathlib import Path

from toolchain.errors import UsageError

REFUSED_HINT = (
    "re-export it with torch.export.save from a model whose buffers and constants are plain tensors; "
    "if you trust whoever made the file, set source.allow_pickle: true (loading it then runs code it holds)"
)


class Refused(Exception):
    """The archive holds something only an unrestricted unpickler could load."""


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # any global is a way to call code
        raise Refused(f"a pickled object of type {module}.{name}")


@contextlib.contextmanager
def _restricted():
    import torch
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            raise Refused(f"a payload torch.load(weights_only=True) rejects ({str(e).splitlines()[0][:200]})") from None

    def refuse_script_object(*_a, **_k):
        raise Refused("a TorchScript object (torchbind), which loads through TorchScript's pickler")

    class _Pickle:  # what _package sees as its `pickle` module
        loads = staticmethod(lambda data, **_: _NoGlobals(io.BytesIO(data)).load())

        def __getattr__(self, name):
            return getattr(pickle, name)

    saved = (torch.load, _package.pickle, torch._C._pickle_load_obj)
    torch.load, _package.pickle, torch._C._pickle_load_obj = weights_only_load, _Pickle(), refuse_script_object
    try:
        yield
    finally:
        torch.load, _package.pickle, torch._C._pickle_load_obj = saved


def load_exported(path: Path, allow_pickle: bool = False):
    """torch.export.load(path); refuses (UsageError, exit 2) what would need arbitrary unpickling."""
    import torch

    if allow_pickle:
        # torch logs its weights_only=False fallback with a malformed format string (a logging error).
        serde_log = logging.getLogger("torch._export.serde.serialize")
        level = serde_log.level
        serde_log.setLevel(logging.ERROR)
        try:
            return torch.export.load(str(path))
        finally:
            serde_log.setLevel(level)
    try:
        with _restricted():
            return torch.export.load(str(path))
    except Refused as e:
        raise UsageError(f"source.exported: {path} holds {e}; loading it would run code from the file, so mlpack refused it", REFUSED_HINT) from None
