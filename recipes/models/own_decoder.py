"""A decoder of one's own, written as a step function with explicit cache tensors (the contract mlpack exports).

forward(input_ids [batch, new], attention_mask [batch, past + new], position_ids [batch, new],
        past_key_values.0.key, past_key_values.0.value, ... [batch, kv_heads, past, head_dim])
    -> (logits [batch, new, vocab], present.0.key, present.0.value, ... [batch, kv_heads, past + new, head_dim])

Its shape is in own-decoder.json (the recipe's generation.config), read as JSON: layers, heads, KV heads,
head_dim, hidden size, vocabulary, end-of-sequence id. Random weights, seeded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, heads * head_dim)
        self.kv = nn.Linear(hidden, 2 * kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x, mask, past_k, past_v):
        b, s, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # the cache grows by the new tokens
        rep = self.heads // self.kv_heads
        a = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), attn_mask=mask)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        return x + self.mlp(self.norm2(x)), k, v


class OwnDecoder(nn.Module):
    def __init__(self, vocab: int = 300, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 16, positions: int = 128):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
        self.layers = nn.ModuleList(Layer(hidden, heads, kv_heads, head_dim) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        x = self.embed(input_ids) + self.pos(position_ids)
        total = attention_mask.shape[1]
        keys = torch.arange(total, device=input_ids.device)
        # causal over absolute positions, and only where the mask lets a token be seen: [batch, 1, new, past + new]
        mask = (keys[None, None, None, :] <= position_ids[:, None, :, None]) & attention_mask[:, None, None, :].bool()
        present = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, mask, past[2 * i], past[2 * i + 1])
            present += [k, v]
        return (self.head(self.norm(x)), *present)


def build(seed: int = 0) -> OwnDecoder:
    torch.manual_seed(seed)
    model = OwnDecoder()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)  # varied greedy tokens from random weights
    return model.eval()
