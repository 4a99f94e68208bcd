"""Plain torch.nn models for shapes the library architectures leave out:
recurrent layers with a dynamic sequence, bool and int inputs, dict and tuple outputs.
"""

from __future__ import annotations

import torch
from torch import nn


class RNNClassifier(nn.Module):
    """Token ids [batch, seq] -> class logits, through an LSTM or a bidirectional GRU."""

    def __init__(self, cell: str, vocab: int, hidden: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(hidden, hidden, num_layers=2, batch_first=True, bidirectional=cell == "gru")
        self.head = nn.Linear(hidden * (2 if cell == "gru" else 1), classes)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out.mean(dim=1))


def rnn(cell: str = "lstm", vocab: int = 500, hidden: int = 32, classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    return RNNClassifier(cell, vocab, hidden, classes).eval()


class MaskedPool(nn.Module):
    """Features [batch, seq, dim] float and a bool mask [batch, seq] -> a dict of pooled scores and the kept count.

    A bool input, an int output and a dict output in one model.
    """

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, classes))

    def forward(self, features, mask):
        keep = mask.unsqueeze(-1).to(features.dtype)
        pooled = (self.proj(features) * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return {"scores": pooled, "kept": mask.sum(dim=1)}


def masked_pool(dim: int = 16, classes: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    return MaskedPool(dim, classes).eval()


class TwoHeads(nn.Module):
    """Image [batch, 3, H, W] and an int32 class hint [batch] -> (box regression, class logits): a tuple out."""

    def __init__(self, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.hint = nn.Embedding(classes, 32)
        self.boxes = nn.Linear(32, 4)
        self.logits = nn.Linear(32, classes)

    def forward(self, image, hint):
        z = self.body(image) + self.hint(hint.long())
        return self.boxes(z).sigmoid(), self.logits(z)


def two_heads(classes: int = 7, seed: int = 0):
    torch.manual_seed(seed)
    return TwoHeads(classes).eval()
