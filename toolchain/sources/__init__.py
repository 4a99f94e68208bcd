"""Sources: the recipe's model behind one flat call, loaded by its framework's module.

Every target sees the same shape: positional inputs in recipe order, outputs
in the recipe's `outputs` order, plus what exporters need (examples, dims).
"""

from __future__ import annotations

import importlib.util

from toolchain.errors import UsageError
from toolchain.recipe import Recipe
from toolchain.sources import decoder, pytorch, tensorflow

FRAMEWORKS = {"pytorch": pytorch.TorchSource, "tensorflow": tensorflow.TFSource}


def load_source(recipe: Recipe):
    """The recipe's source model (in a worker: this imports the framework)."""
    if recipe.generates:
        return decoder.DecoderSource(recipe)
    return FRAMEWORKS[recipe.source.framework](recipe)


def check_framework(recipe: Recipe) -> None:
    """Exit 2 before any step when the source's framework is not installed.

    Looked up with find_spec: the parent process never imports a framework.
    """
    if recipe.source.framework == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        raise UsageError(f"{recipe.path}: source.framework: tensorflow needs TensorFlow, which is not installed here", tensorflow.INSTALL_HINT)
