"""The callable a recipe's `source.factory` names, imported from the recipe's folder.

A factory is code the user runs: importing it runs it (see the trust model in docs/).
"""

from __future__ import annotations

import importlib.util
import sys

from toolchain.errors import StepError
from toolchain.recipe import Recipe


def import_factory(recipe: Recipe):
    """The callable named by `source.factory`, imported from the recipe folder."""
    file, func = recipe.source.factory.rsplit(":", 1)
    path = recipe.resolve(file)
    mod_name = f"_mlpack_factory_{path.stem}_{abs(hash(str(path))) & 0xFFFF:x}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    # The factory imports its siblings from its folder, at import time or later (inside
    # the factory or the model's forward): the folder stays on sys.path for this
    # process, which is a step's own.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[mod_name] = module  # pickling and dataclasses look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise StepError(f"source.factory: importing {path} failed: {type(e).__name__}: {e}") from e
    if not hasattr(module, func):
        raise StepError(f"source.factory: {path} defines no '{func}'")
    return getattr(module, func)


def call_factory(recipe: Recipe):
    """What `source.factory` returns when called with `source.kwargs`; its failure as a StepError naming the call."""
    src = recipe.source
    try:
        return import_factory(recipe)(**src.kwargs)
    except StepError:
        raise
    except Exception as e:
        raise StepError(f"source.factory: {src.factory}(**{src.kwargs}) raised {type(e).__name__}: {e}") from e
