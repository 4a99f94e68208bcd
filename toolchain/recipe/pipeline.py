"""The recipe's `preprocess:` and `postprocess:` sections: what turns a client's raw text or image
bytes into the model's tensors, and its outputs into answers (an embedding, labels and scores).

They are typed here and carried as plain JSON (`config()`) into the served models, whose code
(toolchain/pipeline/runtime.py) imports nothing of mlpack. Imports no ML framework.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, FiniteFloat, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from toolchain.options import Strict

TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextPre(Strict):
    """A tokenizer: text in, token ids (and masks) out, as transformers' tokenizer(texts, padding=True, truncation=True) gives them."""

    tokenizer: str = Field(description="tokenizer.json, or the folder holding it (tokenizer_config.json beside it is read too)")
    max_length: Annotated[StrictInt, Field(ge=1, le=1 << 20)] = Field(128, description="truncate longer texts to this many tokens")
    truncation: StrictBool = True
    padding: Literal["longest", "max_length"] = Field("longest", description="pad a batch to its longest text, or always to max_length")


class ImagePre(Strict):
    """Image bytes (JPEG, PNG) in, a normalised float tensor out: torchvision's Resize(resize), CenterCrop(crop), ToTensor, Normalize."""

    resize: Annotated[StrictInt, Field(ge=1, le=16384)] = Field(256, description="the shorter side is resized to this many pixels")
    crop: Annotated[StrictInt, Field(ge=1, le=16384)] = Field(224, description="then a centred square of this side is cut")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat] = (0.485, 0.456, 0.406)
    std: tuple[FiniteFloat, FiniteFloat, FiniteFloat] = (0.229, 0.224, 0.225)
    layout: Literal["nchw", "nhwc"] = "nchw"

    @model_validator(mode="after")
    def _sizes(self) -> ImagePre:
        if self.crop > self.resize:
            raise PydanticCustomError("crop_size", "crop {c} is larger than resize {r}: the centre crop would pad", {"c": self.crop, "r": self.resize})
        if any(s <= 0 for s in self.std):
            raise PydanticCustomError("std_positive", "std values divide the pixels: each must be > 0 (got {s})", {"s": list(self.std)})
        return self


class Preprocess(Strict):
    """Exactly one of text or image, and the raw samples the pipeline is judged on end to end."""

    text: TextPre | None = None
    image: ImagePre | None = None
    samples: str | list[Annotated[str, Field(min_length=1)]] = Field(
        description="raw inputs: a UTF-8 text file (one text per line) for text; image files, or a folder of them, for images"
    )

    @model_validator(mode="after")
    def _one(self) -> Preprocess:
        if (self.text is None) == (self.image is None):
            raise PydanticCustomError("preprocess_one", "give exactly one of preprocess.text (a tokenizer) or preprocess.image", {})
        if self.text is not None and not isinstance(self.samples, str):
            raise PydanticCustomError("text_samples", "preprocess.samples for text is one UTF-8 text file, one text per line", {})
        return self

    @property
    def modality(self) -> str:
        return "text" if self.text is not None else "image"

    def config(self) -> dict:
        """What the served preprocessing model reads (pipeline.json); paths are left out."""
        if self.text is not None:
            return {"text": self.text.model_dump(exclude={"tokenizer"})}
        return {"image": self.image.model_dump(mode="json")}


class EmbeddingPost(Strict):
    """Token states pooled into one vector per text (sentence-transformers' mean pooling), L2-normalised."""

    output: str = Field(description="the model output to pool: [batch, seq, hidden] token states, or [batch, hidden] already pooled")
    pool: Literal["mean", "cls", "none"] = "mean"
    normalize: StrictBool = True
    cosine: Annotated[float, Field(gt=0, le=1)] = Field(0.9999, description="end to end, each embedding's cosine to the source pipeline's")


class ClassifyPost(Strict):
    """Scores into labels: softmax, then the top k labels and their scores."""

    output: str = Field(description="the model output holding the class scores (logits), [batch, classes]")
    softmax: StrictBool = True
    top_k: Annotated[StrictInt, Field(ge=1, le=1000)] = 5
    labels: str | None = Field(None, description="a UTF-8 text file, one label per line in class order (default: the class index)")
    agreement: Annotated[float, Field(ge=0, le=1)] = Field(1.0, description="end to end, the share of samples whose top-1 label must equal the source's")


class Postprocess(Strict):
    embedding: EmbeddingPost | None = None
    classify: ClassifyPost | None = None

    @model_validator(mode="after")
    def _one(self) -> Postprocess:
        if (self.embedding is None) == (self.classify is None):
            raise PydanticCustomError("postprocess_one", "give exactly one of postprocess.embedding or postprocess.classify", {})
        return self

    @property
    def answer(self) -> str:
        return "embedding" if self.embedding is not None else "classify"

    @property
    def spec(self) -> EmbeddingPost | ClassifyPost:
        return self.embedding if self.embedding is not None else self.classify

    def config(self) -> dict:
        """What the served postprocessing model reads (pipeline.json); the label file travels on its own."""
        if self.embedding is not None:
            return {"embedding": self.embedding.model_dump(exclude={"cosine"})}
        return {"classify": self.classify.model_dump(exclude={"labels", "agreement"}) | {"labels": "labels.txt" if self.classify.labels else None}}
