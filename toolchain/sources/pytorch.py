"""PyTorch sources: factory / exported program / weights, wrapped to a flat signature.

Every target sees the same `FlatModule`: positional inputs in recipe order,
a tuple of tensors out in the recipe's `outputs` order.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import MlpackError, StepError, UsageError
from toolchain.recipe import Recipe
from toolchain.runners.torch_eager import TorchEagerRunner
from toolchain.samples import example_feed, model_failure
from toolchain.sources.factory import import_factory
from toolchain.torchtools.safe_load import load_exported


def load_pytorch(recipe: Recipe):
    """The recipe's model as an eval-mode nn.Module (not yet wrapped)."""
    import torch

    src = recipe.source
    if src.exported:
        path = recipe.resolve(src.exported)
        try:
            ep = load_exported(path, src.allow_pickle)
        except UsageError:
            raise
        except Exception as e:
            raise StepError(f"source.exported: cannot load {path} with torch.export.load: {e}") from e
        return ep.module()
    factory = import_factory(recipe)
    try:
        model = factory(**src.kwargs)
    except Exception as e:
        raise StepError(f"source.factory: {src.factory}(**{src.kwargs}) raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise StepError(f"source.factory: {src.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if src.weights:
        _load_weights(model, recipe.resolve(src.weights))
    return model.eval()


def _load_weights(model, path: Path) -> None:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only: a state dict must not be able to run code on load.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise StepError(f"source.weights: {path} does not fit the factory's module: {e}") from e


def flatten_outputs(out: Any, names: list[str] | None) -> tuple:
    """Tuple/list/dict/ModelOutput -> tuple of tensors, in the recipe's order.

    Dict-like outputs are picked by key when every recipe name is a key,
    else by position; with fewer names than outputs, the first ones are kept.
    """
    import torch

    if isinstance(out, torch.Tensor):
        flat: list = [out]
    elif isinstance(out, dict) or hasattr(out, "to_tuple"):
        d = dict(out.items())
        if names and all(n in d for n in names):
            return tuple(d[n] for n in names)
        flat = _flatten_seq(list(d.values()))
    elif isinstance(out, (tuple, list)):
        flat = _flatten_seq(out)
    else:
        raise StepError(f"the model returned {type(out).__name__}; expected tensors, tuples, dicts or a ModelOutput")
    if names:
        if len(flat) < len(names):
            raise StepError(f"outputs: the recipe names {len(names)} outputs but the model returns {len(flat)}")
        flat = flat[: len(names)]
    return tuple(flat)


def _flatten_seq(seq) -> list:
    import torch

    out: list = []
    for v in seq:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict) or hasattr(v, "to_tuple"):
            out.extend(_flatten_seq(list(dict(v.items()).values())))
        elif isinstance(v, (tuple, list)):
            out.extend(_flatten_seq(v))
        elif v is None:
            continue
    return out


def wrap(model, recipe: Recipe):
    """A module taking recipe inputs positionally and returning a flat tuple."""
    import torch

    input_names = [i.name for i in recipe.inputs]
    try:
        params = inspect.signature(model.forward).parameters
        by_name = all(n in params for n in input_names)
    except (TypeError, ValueError):
        by_name = False

    class FlatModule(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, args: tuple):
            out = self.inner(**dict(zip(input_names, args))) if by_name else self.inner(*args)
            return flatten_outputs(out, recipe.outputs)

    # forward gets one named parameter per input: exporters match
    # dynamic_shapes and input names positionally against it (not *args).
    params_src = ", ".join(f"x{i}" for i in range(len(input_names)))
    scope: dict = {}
    exec(f"def forward(self, {params_src}):\n    return self.call(({params_src},))\n", scope)
    FlatModule.forward = scope["forward"]
    flat = FlatModule(model)
    # Not .eval(): it recurses into train(), which an ExportedProgram's module()
    # refuses. Factory modules were put in eval mode when loaded.
    flat.training = False
    return flat


def output_names(recipe: Recipe, count: int) -> list[str]:
    return list(recipe.outputs) if recipe.outputs else [f"output_{i}" for i in range(count)]


class TorchSource:
    """The wrapped source model plus what exporters need: examples and dims."""

    framework = "pytorch"

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.notes: list[str] = []  # what the build should tell the user about the source
        self.module = wrap(load_pytorch(recipe), recipe)
        self.input_names = [i.name for i in recipe.inputs]
        import torch

        with torch.no_grad():
            try:
                n_out = len(self.module(*self.example_args()))
            except MlpackError:
                raise
            except Exception as e:
                raise model_failure(recipe, e, "the example input") from e
        self.output_names = output_names(recipe, n_out)

    def reference_runner(self):
        return TorchEagerRunner(self.module, self.input_names, self.output_names)

    def export_sizes(self) -> dict[str, int]:
        """Example size per dim: opt, but at least 2 where the range allows (torch.export
        specialises a dim whose example size is 0 or 1); under other_example_sizes(), another
        size of each dynamic dim's range."""
        sizes = {n: d.nearest(max(d.opt, 2)) for n, d in self.recipe.dims.items()}
        if getattr(self, "_other_sizes", False):
            for n, d in self.recipe.dims.items():
                others = (d.nearest((d.min + d.max) // 2), d.max, d.nearest(d.min + 1))
                sizes[n] = next((c for c in others if c != sizes[n] and c >= 2 and d.accepts(c)), sizes[n])
        return sizes

    @contextlib.contextmanager
    def other_example_sizes(self):
        """Exports inside trace with other example sizes: a model with a fast path for one size
        (transformers' DINOv2 at its config's image size skips interpolating its position
        embeddings) makes export fix the dims to it when the example is that size."""
        self._other_sizes = True
        try:
            yield
        finally:
            self._other_sizes = False

    def example_feed(self) -> dict:
        return example_feed(self.recipe, self.export_sizes(), np.random.default_rng(self.recipe.parity.seed + 1))

    def example_args(self, device: str = "cpu") -> tuple:
        import torch

        feed = self.example_feed()
        return tuple(torch.from_numpy(feed[n]).to(device).contiguous() for n in self.input_names)

    def dynamic_shapes(self) -> tuple:
        """One {axis: Dim} per input; a dim with min == max stays static."""
        from torch.export import Dim

        dims = {n: _dim(Dim, n, d) for n, d in self.recipe.dims.items() if d.min < d.max}
        return tuple({j: dims[s] for j, s in enumerate(spec.shape) if isinstance(s, str) and s in dims} or None for spec in self.recipe.inputs)


def _dim(Dim, name: str, d):
    """torch.export's Dim for a recipe dim; `multiple: k` is k times a dim of its own, as export's suggested fixes write it."""
    k = d.multiple
    return k * Dim(f"_{name}", min=d.min // k, max=d.max // k) if k else Dim(name, min=d.min, max=d.max)
