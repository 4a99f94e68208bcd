"""The recipe: typed, strict, and explained when wrong.

`load_recipe` returns a validated `Recipe` or raises `RecipeError` listing every
problem with its key path, YAML line and a fix. Imports no ML framework.
`schema` holds the models, `rules` the checks across sections and files,
`loading` the YAML and the messages.
"""

from toolchain.recipe.loading import MAX_DEPTH, MAX_RECIPE_BYTES, MAX_VALUES, accepted_dims, load_recipe, parse_recipe, with_dims
from toolchain.recipe.rules import gpu_slug
from toolchain.recipe.schema import (
    DIM_NAME_RE,
    DTYPE_BYTES,
    DTYPES,
    FP32_TOLERANCE,
    INT_BOUNDS,
    MAX_SAMPLE_BYTES,
    QUANTIZED_TOLERANCE,
    SOURCE_KEYS,
    TENSOR_NAME_RE,
    DataPart,
    DataSpec,
    DimSpec,
    DynamicBatching,
    InputSpec,
    InstanceGroup,
    Parity,
    Recipe,
    Select,
    Serve,
    Source,
    SourceFile,
    SpecificVersions,
    Target,
    TFServingBatching,
    TFServingServe,
    Tolerance,
    TritonServe,
    VersionPolicy,
    triton_model_name,
)

__all__ = [
    "DIM_NAME_RE", "DTYPE_BYTES", "DTYPES", "FP32_TOLERANCE", "INT_BOUNDS", "MAX_DEPTH", "MAX_RECIPE_BYTES", "MAX_SAMPLE_BYTES", "MAX_VALUES",
    "QUANTIZED_TOLERANCE", "SOURCE_KEYS", "TENSOR_NAME_RE", "DataPart", "DataSpec", "DimSpec", "DynamicBatching", "InputSpec", "InstanceGroup",
    "Parity", "Recipe", "Select", "Serve", "Source", "SourceFile", "SpecificVersions", "Target", "TFServingBatching", "TFServingServe",
    "Tolerance", "TritonServe", "VersionPolicy", "accepted_dims", "gpu_slug", "load_recipe", "parse_recipe", "triton_model_name", "with_dims",
]  # fmt: skip
