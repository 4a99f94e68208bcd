"""Models as teams write their own: plain torch.nn layers put together by hand, the shapes
and idioms the library architectures leave out (torch's fused Transformer layers and their
padding mask, transposed convs and skip concatenation, weight-normed dilated causal convs,
pixel shuffle, embedding bags, top-k expert routing, upsampling decoders, hand-written
attention with rotary positions, scatter-add message passing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _seeded(cls, seed: int, *args, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).eval()


class TransformerClassifier(nn.Module):
    """Token ids and a 0/1 attention mask [batch, seq] -> class logits, through
    nn.TransformerEncoder (whose eval fast path packs padded rows into nested tensors)."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 5, max_len: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        seq = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos[:seq]
        pad = (attention_mask == 0) & (torch.arange(seq, device=input_ids.device) > 0)  # the first token is never padding
        x = self.encoder(x, src_key_padding_mask=pad)
        return self.head(x[:, 0])


def transformer_classifier(seed: int = 0, **kwargs):
    return _seeded(TransformerClassifier, seed, **kwargs)


class UNet(nn.Module):
    """Image [batch, 3, H, W] -> per-pixel class logits: two poolings down, two transposed
    convs up, each concatenated with the skip connection of its level."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))  # fmt: skip

        w = width
        self.down1, self.down2, self.mid = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), block(2 * w, w)
        self.out = nn.Conv2d(w, classes, 1)

    def forward(self, image):
        d1 = self.down1(image)
        d2 = self.down2(F.max_pool2d(d1, 2))
        m = self.mid(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.out(u1)


def unet(seed: int = 0, size: int = 64, **kwargs):
    model = _seeded(UNet, seed, **kwargs)
    from vision import recalibrate_bn  # random BatchNorm statistics blow activations up: settle them as training would

    return recalibrate_bn(model, (4, 3, size, size))


class TCN(nn.Module):
    """Sensor series [batch, channels, time] -> a per-step forecast [batch, 1, time]: dilated
    causal Conv1d blocks (left padding chopped off the right), weight normalisation through
    torch.nn.utils.parametrizations, residual connections."""

    def __init__(self, channels: int = 6, hidden: int = 32, levels: int = 4, kernel: int = 3):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.blocks = nn.ModuleList()
        self.chomp = []
        cin = channels
        for i in range(levels):
            dilation = 2**i
            pad = (kernel - 1) * dilation
            self.blocks.append(nn.ModuleDict({
                "conv1": wn(nn.Conv1d(cin, hidden, kernel, padding=pad, dilation=dilation)),
                "conv2": wn(nn.Conv1d(hidden, hidden, kernel, padding=pad, dilation=dilation)),
                "skip": nn.Conv1d(cin, hidden, 1) if cin != hidden else nn.Identity(),
            }))  # fmt: skip
            self.chomp.append(pad)
            cin = hidden
        self.head = nn.Conv1d(hidden, 1, 1)

    def forward(self, series):
        x = series
        for block, pad in zip(self.blocks, self.chomp):
            y = F.relu(block["conv1"](x)[:, :, :-pad])
            y = F.relu(block["conv2"](y)[:, :, :-pad])
            x = F.relu(y + block["skip"](x))
        return self.head(x)


def tcn(seed: int = 0, **kwargs):
    return _seeded(TCN, seed, **kwargs)


class SuperResolution(nn.Module):
    """Luma [batch, 1, H, W] -> [batch, 1, 3H, 3W] (ESPCN: convs, then PixelShuffle)."""

    def __init__(self, scale: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(), nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(32, scale * scale, 3, padding=1), nn.PixelShuffle(scale))  # fmt: skip

    def forward(self, luma):
        return self.body(luma).clamp(0.0, 1.0)


def super_resolution(seed: int = 0, **kwargs):
    return _seeded(SuperResolution, seed, **kwargs)


class Recommender(nn.Module):
    """DLRM-style click model: dense features [batch, 13] float and categorical ids
    [batch, fields, bag] int64 -> click probability [batch, 1]. One EmbeddingBag per field
    (sum over the bag), a bottom MLP, pairwise dot interactions, a top MLP."""

    def __init__(self, fields: int = 6, rows: int = 1000, dim: int = 16, dense: int = 13):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(fields))
        self.bottom = nn.Sequential(nn.Linear(dense, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU())
        pairs = (fields + 1) * fields // 2
        self.top = nn.Sequential(nn.Linear(dim + pairs, 64), nn.ReLU(), nn.Linear(64, 1))
        self.register_buffer("upper", torch.triu_indices(fields + 1, fields + 1, offset=1), persistent=False)

    def forward(self, dense, ids):
        d = self.bottom(dense)
        feats = torch.stack([d] + [table(ids[:, i]) for i, table in enumerate(self.tables)], dim=1)
        inter = torch.bmm(feats, feats.transpose(1, 2))[:, self.upper[0], self.upper[1]]
        return torch.sigmoid(self.top(torch.cat([d, inter], dim=1)))


def recommender(seed: int = 0, **kwargs):
    return _seeded(Recommender, seed, **kwargs)


class MoE(nn.Module):
    """Token features [batch, seq, dim] -> [batch, seq, dim]: a mixture of experts whose
    router keeps each token's top 2 experts (topk, softmax over the kept scores, scatter
    into a dense gate), then a residual and LayerNorm."""

    def __init__(self, dim: int = 32, experts: int = 4, top: int = 2):
        super().__init__()
        self.top = top
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)) for _ in range(experts))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens):
        scores = self.router(tokens)
        kept, which = scores.topk(self.top, dim=-1)
        gate = torch.zeros_like(scores).scatter(-1, which, kept.softmax(dim=-1))
        mixed = sum(gate[..., i : i + 1] * expert(tokens) for i, expert in enumerate(self.experts))
        return self.norm(tokens + mixed)


def moe(seed: int = 0, **kwargs):
    return _seeded(MoE, seed, **kwargs)


class VAEDecoder(nn.Module):
    """Latent [batch, 16] -> image [batch, 3, 32, 32]: a linear stem, then nearest-neighbour
    upsampling, convs, GroupNorm and SiLU, a sigmoid out."""

    def __init__(self, latent: int = 16, width: int = 32):
        super().__init__()
        self.width = width
        self.stem = nn.Linear(latent, width * 4 * 4)

        def up(cin, cout):
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(up(width, width), up(width, width), up(width, 16))
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, latent):
        x = self.stem(latent).view(-1, self.width, 4, 4)
        return torch.sigmoid(self.out(self.body(x)))


def vae_decoder(seed: int = 0, **kwargs):
    return _seeded(VAEDecoder, seed, **kwargs)


class RotaryBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.gate_up = nn.Linear(dim, 2 * 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

        def rotate(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat([-t2, t1], dim=-1) * sin

        attn = F.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class TinyLM(nn.Module):
    """Token ids [batch, seq] -> next-token logits [batch, seq, vocab], written by hand: RMSNorm,
    rotary positions computed from the sequence length, causal scaled_dot_product_attention,
    SwiGLU, tied input and output embeddings."""

    def __init__(self, vocab: int = 512, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(RotaryBlock(dim, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        half = dim // heads // 2
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half)), persistent=False)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x) @ self.embed.weight.T


def tiny_lm(seed: int = 0, **kwargs):
    return _seeded(TinyLM, seed, **kwargs)


class GraphConv(nn.Module):
    """Node features [nodes, 16] and edges [2, edges] int64 -> node class logits: two rounds
    of mean-aggregated message passing by index_add (a scatter with a data-dependent target)."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 3):
        super().__init__()
        self.lin1, self.self1 = nn.Linear(features, hidden), nn.Linear(features, hidden)
        self.lin2, self.self2 = nn.Linear(hidden, classes), nn.Linear(hidden, classes)

    @staticmethod
    def aggregate(x, edges):
        src, dst = edges[0], edges[1]
        total = torch.zeros_like(x).index_add(0, dst, x[src])
        count = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device).index_add(0, dst, torch.ones_like(x[src, :1]))
        return total / count.clamp(min=1.0)

    def forward(self, nodes, edges):
        h = F.relu(self.lin1(self.aggregate(nodes, edges)) + self.self1(nodes))
        return self.lin2(self.aggregate(h, edges)) + self.self2(h)


def graph_conv(seed: int = 0, **kwargs):
    return _seeded(GraphConv, seed, **kwargs)
