"""The source framework's own pipeline, what mlpack's (pipeline/runtime.py) is judged against:
transformers' tokenizer, torchvision's transforms (PIL and torch where torchvision is absent), and
pooling, softmax and top-k in torch. Runs in the reference step, beside the source model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class SourcePipeline:
    def __init__(self, recipe):
        self.recipe = recipe
        self.pre = recipe.preprocess
        self.post = recipe.postprocess
        self.notes: list[str] = []
        self._tok = None
        self._transform = None

    # --- preprocessing ---------------------------------------------------------------
    def tokenizer(self):
        """transformers' fast tokenizer: a folder through AutoTokenizer (its tokenizer_config.json; no remote code),
        a tokenizer.json through PreTrainedTokenizerFast."""
        if self._tok is None:
            from transformers import AutoTokenizer, PreTrainedTokenizerFast

            path = self.recipe.resolve(self.pre.text.tokenizer)
            if path.is_dir():
                self._tok = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True, trust_remote_code=False)
            else:
                self._tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
            self.notes.append(f"pipeline: the source tokenizer is transformers' {type(self._tok).__name__}")
        return self._tok

    def text(self, text: str, names: list[str], dtypes: dict) -> dict:
        t = self.pre.text
        padding = "max_length" if t.padding == "max_length" else False
        enc = self.tokenizer()([text], truncation=t.truncation, max_length=t.max_length, padding=padding, return_tensors="np")
        if "token_type_ids" in names and "token_type_ids" not in enc:
            enc["token_type_ids"] = np.zeros_like(enc["input_ids"])
        return {n: np.asarray(enc[n]).astype(dtypes.get(n, "int64")) for n in names}

    def transform(self):
        """torchvision's Resize, CenterCrop, ToTensor, Normalize where torchvision imports; else the same steps in PIL and torch."""
        if self._transform is None:
            img = self.pre.image
            try:
                from torchvision import transforms as T

                mode = getattr(T.InterpolationMode, img.interpolation.upper())
                self._transform = T.Compose([T.Resize(img.resize, interpolation=mode), T.CenterCrop(img.crop), T.ToTensor(), T.Normalize(img.mean, img.std)])
                self.notes.append("pipeline: the source image transforms are torchvision's")
            except Exception as e:  # noqa: BLE001 (absent, or a CUDA build that does not import beside the CPU torch)
                self._transform = self._plain_transform
                self.notes.append(f"pipeline: torchvision does not import here ({type(e).__name__}); the source image transforms are PIL and torch")
        return self._transform

    def _plain_transform(self, image):
        import torch
        from PIL import Image

        c = self.pre.image
        w, h = image.size
        new = (c.resize, int(c.resize * h / w)) if w <= h else (int(c.resize * w / h), c.resize)
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[c.interpolation]
        image = image.resize(new, resample)
        top, left = int(round((image.size[1] - c.crop) / 2.0)), int(round((image.size[0] - c.crop) / 2.0))
        image = image.crop((left, top, left + c.crop, top + c.crop))
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        return (x - torch.tensor(c.mean).view(3, 1, 1)) / torch.tensor(c.std).view(3, 1, 1)

    def image(self, path: Path, name: str) -> dict:
        from PIL import Image

        with Image.open(path) as img:
            x = self.transform()(img.convert("RGB"))
        if self.pre.image.layout == "nhwc":
            x = x.permute(1, 2, 0)
        return {name: np.ascontiguousarray(x.unsqueeze(0).numpy(), dtype=np.float32)}

    # --- postprocessing --------------------------------------------------------------
    def answer(self, outputs: dict, feed: dict) -> dict:
        """{'embedding': [1, hidden]} or {'scores': [1, k], 'ids': [1, k]} from the source model's outputs, in torch."""
        import torch

        spec = self.post.spec
        x = torch.from_numpy(np.asarray(outputs[spec.output], np.float32))
        if self.post.embedding is not None:
            e = self.post.embedding
            if e.pool == "mean" and x.dim() == 3:
                m = torch.from_numpy(np.asarray(feed["attention_mask"])).to(x.dtype).unsqueeze(-1)
                x = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            elif e.pool == "cls" and x.dim() == 3:
                x = x[:, 0]
            if e.normalize:
                x = torch.nn.functional.normalize(x, p=2, dim=-1)
            return {"embedding": x.numpy().astype(np.float32)}
        x = x.reshape(x.shape[0], -1)
        if spec.softmax:
            x = torch.softmax(x, dim=-1)
        top = torch.topk(x, min(spec.top_k, x.shape[-1]), dim=-1)
        return {"scores": top.values.numpy().astype(np.float32), "ids": top.indices.numpy().astype(np.int64)}
