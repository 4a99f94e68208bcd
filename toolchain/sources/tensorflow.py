"""TensorFlow sources: a factory's keras.Model or tf.Module, a .keras file, or a SavedModel.

Every target sees the same flat call: recipe inputs in recipe order in, a dict
of the recipe's outputs (in order) out. Where the recipe's input names differ
from the model's own, the mapping used is kept in `notes` and printed.
"""

from __future__ import annotations

import inspect

import numpy as np

from toolchain.errors import MlpackError, StepError, UsageError
from toolchain.recipe import Recipe
from toolchain.runners.tf import TFEagerRunner
from toolchain.samples import example_feed, model_failure
from toolchain.sources.factory import call_factory
from toolchain.sources.keras_patches import tracing as keras_tracing
from toolchain.tensors import NUMPY_DTYPE

INSTALL_HINT = "pip install 'mlpack[tensorflow]'"


# Keras preprocessing layers that hold a hash table: XLA compiles no table op, tf2onnx only string<->int64 ones.
LOOKUP_HINT = (
    "the model looks values up in a table (Keras IntegerLookup, StringLookup, TextVectorization or a tf.lookup table): build the "
    "savedmodel target, which serves it as it is, or apply the lookup in the client and feed the model its indices"
)


def require_tensorflow(recipe: Recipe):
    """The tensorflow module, or a usage error naming the recipe and the extra to install."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise UsageError(f"{recipe.path}: source.framework: tensorflow needs TensorFlow, which is not importable here ({e})", INSTALL_HINT) from None
    return tf


def load_savedmodel(path):
    """tf.saved_model.load, also for SavedModels Keras 2 wrote.

    Keras 2 saved optimizer slots that TensorFlow with Keras 3 cannot revive
    ("'_UserObject' object has no attribute 'add_slot'"); importing tf-keras
    registers Keras 2's revivers, after which the same load works.
    """
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(path))
    except Exception as e:
        if "add_slot" not in str(e):
            raise StepError(f"source.savedmodel: tf.saved_model.load({path}) failed: {type(e).__name__}: {e}") from e
        first = e
    try:
        import tf_keras  # noqa: F401  (registers Keras 2's revivers)
    except ImportError:
        raise StepError(f"source.savedmodel: {path} was written by Keras 2 and loads only with tf-keras installed ({type(first).__name__}: {first})",
                        hint=f"pip install tf-keras=={tf.__version__.rsplit('.', 1)[0]}.*  (the release matching TensorFlow {tf.__version__})") from None  # fmt: skip
    try:
        return tf.saved_model.load(str(path))
    except Exception as e:
        raise StepError(f"source.savedmodel: tf.saved_model.load({path}) failed even with tf-keras: {type(e).__name__}: {e}") from e


def _load(recipe: Recipe):
    """(model object, callable, its own input names or None, call style for TFSource._invoke)."""

    src = recipe.source
    if src.savedmodel:
        path = recipe.resolve(src.savedmodel)
        loaded = load_savedmodel(path)
        key = src.signature or "serving_default"
        if key not in loaded.signatures:
            raise StepError(f"source.signature: {path} has no signature '{key}' (it has: {', '.join(loaded.signatures) or 'none'})")
        fn = loaded.signatures[key]
        # Keyword-only, and their order does not survive saving: sorted is the only stable order.
        return loaded, fn, sorted(fn.structured_input_signature[1]), "signature"
    if src.keras:
        import keras

        path = recipe.resolve(src.keras)
        try:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)  # Lambda layers carry bytecode
        except Exception as e:
            raise StepError(f"source.keras: keras.saving.load_model({path}) failed: {type(e).__name__}: {e}") from e
    else:
        model = call_factory(recipe)
    return _callable(model, src.factory or src.keras)


def _callable(model, where: str):
    import keras
    import tensorflow as tf

    if isinstance(model, keras.Model):
        # Functional models are called with the structure they were built from.
        struct = getattr(model, "_inputs_struct", None)  # None for an unbuilt subclassed model
        if isinstance(struct, dict):
            return model, model, list(struct), "keras-dict"  # called by the dict's keys
        if struct is None:  # a subclassed model: call(self, a, b) takes one tensor per parameter
            kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            params = [p.name for p in inspect.signature(model.call).parameters.values() if p.kind in kinds and p.name not in ("training", "mask")]
            if len(params) > 1:
                return model, model, params, "keras-call"
        names = [t.name for t in model.inputs] if struct is not None else None
        return model, model, names, "keras-list" if isinstance(struct, (list, tuple)) else "keras"
    if isinstance(model, tf.Module):
        if callable(model):
            fn = model.__call__
        else:
            fns = [
                getattr(model, k) for k in dir(model) if not k.startswith("_") and isinstance(getattr(model, k, None), tf.types.experimental.GenericFunction)
            ]
            if len(fns) != 1:
                raise StepError(f"source: {where} returned a tf.Module without __call__ and with {len(fns)} public tf.functions; define __call__")
            fn = fns[0]
        py = getattr(fn, "python_function", fn)
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = [p.name for p in inspect.signature(py).parameters.values() if p.name != "self" and p.kind in kinds]
        return model, fn, params or None, "kwargs" if params else "positional"
    raise StepError(f"source: {where} returned {type(model).__name__}; expected a keras.Model or a tf.Module with a tf.function")


def _input_order(recipe_names: list[str], model_names: list[str] | None) -> tuple[list[str] | None, str | None]:
    """Model name per recipe input, and a note when the names differ."""
    if model_names is None:
        return None, None
    if sorted(model_names) == sorted(recipe_names):
        return list(recipe_names), None
    if len(model_names) != len(recipe_names):
        raise StepError(
            f"inputs: the recipe names {len(recipe_names)} inputs ({', '.join(recipe_names)}) but the model takes {len(model_names)} ({', '.join(model_names)})"
        )
    pairs = ", ".join(f"{r} -> {m}" for r, m in zip(recipe_names, model_names))
    return list(model_names), f"inputs mapped by position (names differ): {pairs}"


def _flatten(out, names: list[str] | None) -> tuple[list, list[str] | None]:
    """Tensor/list/dict -> (tensors, the model's own keys when it returned a dict)."""
    if isinstance(out, dict):
        if names and all(n in out for n in names):
            return [out[n] for n in names], list(names)
        return list(out.values()), list(out)
    if isinstance(out, (list, tuple)):
        flat: list = []
        for v in out:
            flat.extend(_flatten(v, None)[0])
        return flat, None
    return [out], None


class TFSource:
    """The source model behind one flat call, plus the input signature targets export with."""

    framework = "tensorflow"

    def __init__(self, recipe: Recipe):
        tf = require_tensorflow(recipe)
        self.recipe = recipe
        self.input_names = [i.name for i in recipe.inputs]
        self.rewrites: set[str] = set()  # Keras layers the traced function computes as an equivalent (sources/keras_patches.py)
        self.model, self._fn, self._own, self._style = _load(recipe)
        self._model_names, note = _input_order(self.input_names, self._own)
        self.notes = [note] if note else []
        if self._style == "signature":
            self._check_dtypes(self._fn.structured_input_signature[1])
        example = self.example_feed()
        try:
            result = self._invoke([tf.constant(example[n]) for n in self.input_names])
        except MlpackError:
            raise
        except Exception as e:
            raise model_failure(recipe, e, "the example input") from e
        flat, keys = _flatten(result, recipe.outputs)
        if recipe.outputs and len(flat) < len(recipe.outputs):
            raise StepError(f"outputs: the recipe names {len(recipe.outputs)} outputs but the model returns {len(flat)}")
        self.output_names = list(recipe.outputs or keys or [f"output_{i}" for i in range(len(flat))])
        if recipe.outputs and keys and keys[: len(recipe.outputs)] != list(recipe.outputs):
            pairs = ", ".join(f"{r} <- {m}" for r, m in zip(recipe.outputs, keys))
            self.notes.append(f"outputs mapped by position (names differ): {pairs}")
        for note in self.notes:
            print(f"source: {note}")  # into logs/reference.log; the build also shows it

    def _check_dtypes(self, specs: dict) -> None:
        for spec, own in zip(self.recipe.inputs, self._model_names):
            want = specs[own].dtype.name
            if want != NUMPY_DTYPE[spec.dtype]:
                raise StepError(f"inputs: '{spec.name}' is {spec.dtype} in the recipe but the signature's '{own}' takes {want}")

    def _invoke(self, args: list):
        """Call the model the way it takes its inputs (keywords, a dict, a list or one tensor)."""
        named = dict(zip(self._model_names, args)) if self._model_names else None
        if self._style == "signature":
            return dict(sorted(self._fn(**named).items()))
        if self._style == "kwargs":
            return self._fn(**named)
        if self._style == "keras-dict":
            return self._fn(named, training=False)
        if self._style == "keras-list":
            return self._fn([named[n] for n in self._own], training=False)
        if self._style == "keras-call":
            return self._fn(*[named[n] for n in self._own], training=False)
        if self._style == "keras":
            return self._fn(args[0] if len(args) == 1 else list(args), training=False)
        return self._fn(*args)

    def trackable(self):
        """What a saved module holds to keep the model's state: the model itself (its lookup tables and assets), or
        only its variables for a subclassed Keras model whose call takes several tensors (Keras traces a one-argument
        `serving_default` for an attached model, which such a call cannot take); and each Keras 3 variable's own
        tf.Variable. Without those, a Keras 3 model is saved with a second handle per variable: TF2's loader maps
        them, but the TF1 loader that TF Serving uses restores one while the serving function reads the other
        ("Could not find variable block_7_project_BN/moving_variance")."""
        import tensorflow as tf

        held = [v.value for v in getattr(self.model, "variables", []) if isinstance(getattr(v, "value", None), tf.Variable)]
        return [*(list(self.model.variables) if self._style == "keras-call" else [self.model]), *held]

    def call(self, *args) -> dict:
        """Recipe inputs positionally -> {output name: tensor} in the recipe's order."""
        flat, _ = _flatten(self._invoke(list(args)), self.recipe.outputs)
        return dict(zip(self.output_names, flat[: len(self.output_names)]))

    def input_signature(self) -> list:
        """One TensorSpec per recipe input, None for named (dynamic) dims."""
        import tensorflow as tf

        return [
            tf.TensorSpec([d if isinstance(d, int) else None for d in spec.shape], tf.as_dtype(NUMPY_DTYPE[spec.dtype]), name=spec.name)
            for spec in self.recipe.inputs
        ]

    def serving_function(self, jit_compile: bool = False):
        """The served tf.function: named inputs from the recipe, a dict of named outputs."""
        import tensorflow as tf

        def serve(*args):
            with self.tracing():
                return self.call(*args)

        return tf.function(serve, input_signature=self.input_signature(), jit_compile=jit_compile, autograph=False)

    def tracing(self):
        """The Keras patches (sources/keras_patches.py) for a trace of the model: the served function's,
        and the one tf.saved_model.save makes of the attached Keras model."""
        return keras_tracing(self.rewrites)

    def example_feed(self) -> dict:
        sizes = {n: d.opt for n, d in self.recipe.dims.items()}
        return example_feed(self.recipe, sizes, np.random.default_rng(self.recipe.parity.seed + 1))

    def reference_runner(self):
        return TFEagerRunner(self.call, self.input_names, self.output_names)
