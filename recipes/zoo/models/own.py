"""Models as teams write their own: plain torch.nn layers put together by hand, the shapes
and idioms the library architectures leave out (torch's fused Transformer layers and their
padding mask, transposed convs and skip concatenation, weight-normed dilated causal convs,
pixel shuffle, embedding bags, top-k expert routing, upsampling decoders, hand-written
attention with rotary positions, scatter-add message passing).
"""

from __future__ import annotations

import math

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


class DiffusionUNet(nn.Module):
    """A DDPM-style denoiser: noisy image [batch, 3, 32, 32] and timestep [batch] int64 -> predicted
    noise. Sinusoidal timestep embedding added inside each GroupNorm/SiLU residual block,
    self-attention at the lowest resolution, nearest-neighbour upsampling, skip concatenation."""

    class Res(nn.Module):
        def __init__(self, cin, cout, tdim):
            super().__init__()
            self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(tdim, cout)
            self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, t):
            h = self.c1(F.silu(self.n1(x))) + self.t(t)[:, :, None, None]
            return self.c2(F.silu(self.n2(h))) + self.skip(x)

    class Attn(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm, self.qkv, self.out = nn.GroupNorm(8, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))

    def __init__(self, width: int = 32):
        super().__init__()
        w, tdim = width, 4 * width
        self.width = w
        self.time = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3, w, 3, padding=1)
        self.d1, self.d2 = self.Res(w, w, tdim), self.Res(w, 2 * w, tdim)
        self.down = nn.Conv2d(w, w, 3, stride=2, padding=1)
        self.mid, self.attn = self.Res(2 * w, 2 * w, tdim), self.Attn(2 * w)
        self.u1 = self.Res(3 * w, w, tdim)
        self.out = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, 3, 3, padding=1))

    def embed(self, timestep):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timestep.device, dtype=torch.float32) / half)
        angles = timestep.float()[:, None] * freqs[None]
        return self.time(torch.cat([angles.sin(), angles.cos()], dim=-1))

    def forward(self, sample, timestep):
        t = self.embed(timestep)
        h1 = self.d1(self.inp(sample), t)
        h = self.attn(self.mid(self.d2(self.down(h1), t), t))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(self.u1(torch.cat([h, h1], dim=1), t))


def diffusion_unet(seed: int = 0, **kwargs):
    return _seeded(DiffusionUNet, seed, **kwargs)


class SpectrogramClassifier(nn.Module):
    """Raw audio [batch, samples] -> class logits, the front end inside the model: torch.stft
    (complex), power, a mel filterbank as a matmul, log, then a small CNN and global pooling."""

    def __init__(self, n_fft: int = 256, hop: int = 128, mels: int = 32, classes: int = 6):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        # a triangular filterbank over linear frequency bins (the shape of a mel bank, no librosa)
        bins, centers = n_fft // 2 + 1, torch.linspace(0, n_fft // 2, mels + 2)
        k = torch.arange(bins, dtype=torch.float32)[:, None]
        lo, mid, hi = centers[:-2][None], centers[1:-1][None], centers[2:][None]
        self.register_buffer("fbank", torch.clamp(torch.minimum((k - lo) / (mid - lo), (hi - k) / (hi - mid)), min=0.0))
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())  # fmt: skip
        self.head = nn.Linear(32, classes)

    def forward(self, audio):
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        power = spec.abs().pow(2).transpose(1, 2)  # [batch, frames, bins]
        logmel = torch.log(power @ self.fbank + 1e-6).unsqueeze(1)
        return self.head(self.cnn(logmel).mean(dim=(2, 3)))


def spectrogram_classifier(seed: int = 0, **kwargs):
    return _seeded(SpectrogramClassifier, seed, **kwargs)


class PointNet(nn.Module):
    """A point cloud [batch, points, 3] -> class logits: a learned 3x3 input transform (bmm),
    shared per-point MLPs (Conv1d k=1), a symmetric max over a dynamic number of points."""

    def __init__(self, classes: int = 8):
        super().__init__()
        self.tnet = nn.Sequential(nn.Conv1d(3, 32, 1), nn.ReLU(), nn.Conv1d(32, 64, 1), nn.ReLU())
        self.tfc = nn.Linear(64, 9)
        self.mlp = nn.Sequential(nn.Conv1d(3, 32, 1), nn.BatchNorm1d(32), nn.ReLU(), nn.Conv1d(32, 128, 1), nn.BatchNorm1d(128), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, points):
        x = points.transpose(1, 2)  # [batch, 3, points]
        transform = self.tfc(self.tnet(x).amax(dim=2)).view(-1, 3, 3) + torch.eye(3, device=points.device)
        x = torch.bmm(transform, x)
        return self.head(self.mlp(x).amax(dim=2))


def pointnet(seed: int = 0, **kwargs):
    return _seeded(PointNet, seed, **kwargs)


class FourierOperator(nn.Module):
    """A 1-D Fourier neural operator: a field [batch, 1, grid] -> [batch, 1, grid]; each layer
    multiplies the lowest modes of rfft by complex weights (stored as real pairs) and
    transforms back with irfft, plus a pointwise conv; the grid size is dynamic."""

    def __init__(self, width: int = 16, modes: int = 8, layers: int = 2):
        super().__init__()
        self.modes = modes
        self.lift, self.proj = nn.Conv1d(1, width, 1), nn.Conv1d(width, 1, 1)
        self.spectral = nn.ParameterList([nn.Parameter(torch.randn(width, width, modes, 2) / width) for _ in range(layers)])
        self.local = nn.ModuleList([nn.Conv1d(width, width, 1) for _ in range(layers)])

    def forward(self, field):
        x, n = self.lift(field), field.shape[-1]
        for weight, local in zip(self.spectral, self.local):
            modes = torch.fft.rfft(x)[..., : self.modes]
            mixed = torch.einsum("bim,iom->bom", modes, torch.view_as_complex(weight))
            x = F.gelu(torch.fft.irfft(mixed, n=n) + local(x))
        return self.proj(x)


def fourier_operator(seed: int = 0, **kwargs):
    return _seeded(FourierOperator, seed, **kwargs)


class SpatialTransformer(nn.Module):
    """A spatial transformer classifier: image [batch, 1, 28, 28] -> logits; a localisation net
    predicts an affine transform, F.affine_grid + F.grid_sample resample the image first."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.loc = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(8, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(10 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 6))  # fmt: skip
        nn.init.zeros_(self.loc[-1].weight)  # start at the identity transform, as the tutorial does
        with torch.no_grad():
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]) + 0.1 * torch.randn(6))
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(16, 32, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(32 * 4 * 4, classes))  # fmt: skip

    def forward(self, image):
        theta = self.loc(image).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return self.cnn(F.grid_sample(image, grid, align_corners=False))


def spatial_transformer(seed: int = 0, **kwargs):
    return _seeded(SpatialTransformer, seed, **kwargs)


class Tagger(nn.Module):
    """A sequence tagger that returns its decisions as well: token ids [batch, seq] ->
    per-token tag scores (float), the argmax tag ids (int64) and a per-sequence confidence."""

    def __init__(self, vocab: int = 500, dim: int = 32, tags: int = 7):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * dim, tags)

    def forward(self, tokens):
        scores = self.head(self.rnn(self.embed(tokens))[0])
        probs = scores.softmax(-1)
        return scores, probs.argmax(-1), probs.amax(-1).mean(-1)


def tagger(seed: int = 0, **kwargs):
    return _seeded(Tagger, seed, **kwargs)
