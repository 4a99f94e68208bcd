"""The one generation loop: a decoder artifact (any runner: ONNX Runtime, AOTInductor, the eager
source) driven with its KV cache as explicit tensors, and the gate for a generator.

The loop feeds what the artifact's signature names (recipe/decoder.py): the new tokens, the mask over
past and new, their positions, and the past keys and values; it keeps what the artifact returns as
`present` for the next call. The parity step runs it teacher-forced on the reference's tokens, so
every step is judged in the reference's context: the artifact's greedy choice at each step (does it
pick the reference's next token?) and its logits (against the reference's, by `parity.compare`).
Where every greedy choice agrees, free-running greedy decoding reproduces the reference's tokens
exactly. Pure numpy: the runners import their runtimes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.parity import compare
from toolchain.recipe import Recipe, Tolerance
from toolchain.records import Divergence, GenerationReport, Perplexity

GENERATION_FILE = "parity/generation.npz"  # the reference's prompts, greedy tokens and per-step logits
TEXT_FILE = "parity/text.npz"  # the perplexity sample: its token chunks and the source's per-token loss
TEXT_CHUNKS = 16  # chunks of generation.max_length tokens read from generation.text, at most
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # copied when beside the tokenizer.json


def package_tokenizer(recipe: Recipe, folder: Path) -> list[Path]:
    """Copy the recipe's tokenizer into an artifact's folder (a server or client needs it to send text); the copies."""
    given = recipe.tokenizer_file()
    copies = []
    for name in TOKENIZER_FILES:
        src = given if name == "tokenizer.json" else given.parent / name
        if src.is_file() and not (folder / name).exists():
            shutil.copyfile(src, folder / name)
            copies.append(folder / name)
    if recipe.decoder.audio and not (folder / "preprocessor_config.json").exists():  # a client turns audio into features with it
        shutil.copyfile(recipe.features_file(), folder / "preprocessor_config.json")
        copies.append(folder / "preprocessor_config.json")
    return copies


@dataclass(frozen=True)
class CacheLayout:
    """Names and shapes of a decoder artifact's cache tensors: `past` in, `present` out, pairwise."""

    past: list[str]
    present: list[str]
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, recipe: Recipe) -> CacheLayout:
        d = recipe.decoder
        return cls(d.past_names()[: len(d.present_names())], d.present_names(), d.kv_heads, d.head_dim)

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past}


class Decoder:
    """An opened runner (feed dict -> output dict) called one step at a time, its cache carried between calls."""

    def __init__(self, runner, layout: CacheLayout):
        self.runner, self.layout = runner, layout

    def start(self, batch: int = 1) -> None:
        self.past, self.length = self.layout.empty(batch), 0

    def begin(self, prompt: np.ndarray) -> np.ndarray:
        """A new generation from `prompt` [batch, n]: the logits [batch, n, vocab] whose last row picks the first new token."""
        self.start(prompt.shape[0])
        return self.step(prompt)

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed `ids` [batch, new] after the cached tokens; the logits of every new position [batch, new, vocab]."""
        batch, new = ids.shape
        feed = {
            "input_ids": np.ascontiguousarray(ids, dtype=np.int64),
            "attention_mask": np.ones((batch, self.length + new), np.int64),
            "position_ids": np.ascontiguousarray(np.broadcast_to(np.arange(self.length, self.length + new, dtype=np.int64), (batch, new))),
            **self.past,
        }
        return self._call(feed, new)

    def _call(self, feed: dict, new: int) -> np.ndarray:
        out = self.runner.infer(feed)
        self.past = {p: np.ascontiguousarray(out[q]) for p, q in zip(self.layout.past, self.layout.present)}
        self.length += new
        return np.asarray(out["logits"])

    def teacher_forced(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """The logits [len(continuation), vocab] that predict each token of `continuation`, given the prompt and the
        continuation's tokens before it: a prefill of the prompt, then one decode step per token."""
        rows = [self.begin(np.asarray([prompt]))[0, -1]]
        for token in continuation[:-1]:
            rows.append(self.step(np.asarray([[token]]))[0, -1])
        return np.stack(rows).astype(np.float32)

    def greedy(self, prompt: list[int], max_new: int, eos: tuple[int, ...] = ()) -> list[int]:
        """Free-running greedy decoding: up to `max_new` tokens, stopping after an end-of-sequence token."""
        logits = self.begin(np.asarray([prompt]))[0, -1]
        tokens: list[int] = []
        while True:
            tokens.append(int(np.argmax(logits)))
            if len(tokens) >= max_new or tokens[-1] in eos:
                return tokens
            logits = self.step(np.asarray([[tokens[-1]]]))[0, -1]


class Seq2SeqDecoder(Decoder):
    """An encoder-decoder's two programs (recipe/decoder.py): the prefill encodes the prompt and decodes the start token,
    returning the cross-attention keys and values that every later step takes back unchanged."""

    def __init__(self, runner, layout: CacheLayout, start_token: int, cross: tuple[list[str], list[str]]):
        super().__init__(runner, layout)
        self.start_token, self.cross = start_token, cross

    def begin(self, prompt: np.ndarray) -> np.ndarray:
        """`prompt`: token ids [batch, n], or a speech model's log-mel features [batch, mels, frames] (no mask)."""
        batch = prompt.shape[0]
        start = np.full((batch, 1), self.start_token, np.int64)
        if np.issubdtype(prompt.dtype, np.floating):
            self.mask = None
            feed = {"input_features": np.ascontiguousarray(prompt, dtype=np.float32), "input_ids": start}
        else:
            self.mask = np.ones(prompt.shape, np.int64)
            feed = {"encoder_input_ids": np.ascontiguousarray(prompt, dtype=np.int64), "encoder_attention_mask": self.mask, "input_ids": start}
        out = self.runner.infer(feed)
        self.encoded = {p: np.ascontiguousarray(out[q]) for q, p in zip(*self.cross)}
        self.past, self.length = {p: np.ascontiguousarray(out[q]) for p, q in zip(self.layout.past, self.layout.present)}, 1
        return np.asarray(out["logits"])

    def step(self, ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64), **self.past, **self.encoded}
        if self.mask is not None:
            feed["encoder_attention_mask"] = self.mask
        return self._call(feed, ids.shape[1])


class RecurrentDecoder(Decoder):
    """A state-space decoder's one program (recipe/decoder.py): a step over one token with its fixed-size states. A prompt
    is fed a token at a time from zero states, which is the model's own recurrence."""

    def __init__(self, runner, layout: CacheLayout, shapes: dict[str, tuple[int, int]]):
        super().__init__(runner, layout)
        self.shapes = shapes

    def start(self, batch: int = 1) -> None:
        self.past, self.length = {n: np.zeros((batch, *shape), np.float32) for n, shape in self.shapes.items()}, 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        rows = [self._call({"input_ids": np.ascontiguousarray(ids[:, j : j + 1], dtype=np.int64), **self.past}, 1) for j in range(ids.shape[1])]
        return np.concatenate(rows, axis=1)


def decoder_for(runner, recipe: Recipe) -> Decoder:
    """The generation loop a recipe's artifacts take: a decoder-only's, an encoder-decoder's two programs, or a
    state-space decoder's step."""
    d, layout = recipe.decoder, CacheLayout.of(recipe)
    if d.recurrent:
        return RecurrentDecoder(runner, layout, d.state_shapes())
    return Seq2SeqDecoder(runner, layout, d.decoder_start, d.cross_names()) if d.encoder_decoder else Decoder(runner, layout)


@dataclass
class Reference:
    """The source's greedy generation for one prompt: its tokens and the logits that chose them."""

    prompt: list[int] | np.ndarray  # token ids, or a speech model's log-mel features [mels, frames]
    tokens: list[int]
    logits: np.ndarray  # [len(tokens), vocab]


def save_references(path, refs: list[Reference], texts: list[str] | None = None) -> None:
    """The references, and the prompts' text where they came from text (what servers that take text are sent)."""
    arrays = {f"text_{i}": np.asarray(t) for i, t in enumerate(texts or [])}
    for i, r in enumerate(refs):
        prompt = np.asarray(r.prompt, np.float32 if isinstance(r.prompt, np.ndarray) and r.prompt.dtype.kind == "f" else np.int64)
        arrays |= {f"prompt_{i}": prompt, f"tokens_{i}": np.asarray(r.tokens, np.int64), f"logits_{i}": r.logits.astype(np.float32)}
    np.savez(path, **arrays)


def load_references(path) -> list[Reference]:
    with np.load(path, allow_pickle=False) as data:
        n = sum(1 for k in data.files if k.startswith("prompt_"))
        # a prompt is token ids, or a speech model's log-mel features (kept an array)
        prompts = [data[f"prompt_{i}"] for i in range(n)]
        return [Reference(p.tolist() if p.dtype.kind == "i" else p, data[f"tokens_{i}"].tolist(), data[f"logits_{i}"]) for i, p in enumerate(prompts)]


@dataclass
class StreamAgreement:
    """Token ids a server or runtime generated, prompt by prompt, against the source's greedy tokens."""

    equal: int  # positions where both have a token and they are the same
    total: int  # the source's tokens
    complete: bool  # every stream as long as its reference
    first: tuple[int, int, int, int] | None  # (prompt, step, served, source) of the first difference

    @property
    def same(self) -> int:
        """Equal tokens, counted only when every stream is complete (a short stream is a failure by itself)."""
        return self.equal if self.complete else 0


def stream_agreement(streams: list[list[int]], refs: list[Reference]) -> StreamAgreement:
    equal = sum(a == b for got, r in zip(streams, refs) for a, b in zip(got, r.tokens))
    complete = all(len(got) == len(r.tokens) for got, r in zip(streams, refs))
    first = next(((i, j, a, b) for i, (got, r) in enumerate(zip(streams, refs)) for j, (a, b) in enumerate(zip(got, r.tokens)) if a != b), None)
    return StreamAgreement(equal, sum(len(r.tokens) for r in refs), complete, first)


def load_prompt_texts(path) -> list[str]:
    """The prompts as text, in reference order; [] for a build that kept none (audio, or an older build)."""
    with np.load(path, allow_pickle=False) as data:
        return [str(data[f"text_{i}"]) for i in range(sum(1 for k in data.files if k.startswith("text_")))]


@dataclass
class TextSample:
    """The perplexity sample (generation.text, or the prompts) in chunks, and the source's loss on each token after the first."""

    chunks: list[list[int]]
    nll: list[np.ndarray]

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll)


def chunk_text(ids: list[int], max_length: int) -> list[list[int]]:
    """Token ids cut into chunks an artifact takes in one prefill (at least 2 tokens: one is predicted)."""
    chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)][:TEXT_CHUNKS]
    return [c for c in chunks if len(c) >= 2]


def token_nll(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Per token after the first, its negative log-likelihood under `logits` [len(tokens), vocab] (position i predicts i+1)."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return -logp[np.arange(len(tokens) - 1), tokens[1:]]


def perplexity(nll: list[np.ndarray]) -> float:
    flat = np.concatenate(nll) if nll else np.zeros(0)
    return float(np.exp(flat.mean())) if flat.size else float("nan")


def artifact_nll(decoder: Decoder, chunks: list[list[int]]) -> list[np.ndarray]:
    """The artifact's loss on each chunk: one prefill per chunk, from an empty cache."""
    return [token_nll(decoder.begin(np.asarray([chunk]))[0], chunk) for chunk in chunks]


def save_text_sample(path, sample: TextSample) -> None:
    arrays = {}
    for i, (c, n) in enumerate(zip(sample.chunks, sample.nll)):
        arrays |= {f"chunk_{i}": np.asarray(c, np.int64), f"nll_{i}": n.astype(np.float64)}
    np.savez(path, **arrays)


def load_text_sample(path) -> TextSample:
    with np.load(path, allow_pickle=False) as data:
        n = sum(1 for k in data.files if k.startswith("chunk_"))
        return TextSample([data[f"chunk_{i}"].tolist() for i in range(n)], [data[f"nll_{i}"] for i in range(n)])


def perplexity_check(sample: TextSample, nll: list[np.ndarray], budget: float | None) -> Perplexity:
    """The artifact's perplexity on the sample against the source's; `budget` is the largest relative rise allowed."""
    src, art, tokens = sample.perplexity, perplexity(nll), sum(len(c) - 1 for c in sample.chunks)
    if not (np.isfinite(art) and np.isfinite(src)):  # non-finite logits: no perplexity to report (JSON has no inf)
        return Perplexity(round(src, 6) if np.isfinite(src) else None, None, None, budget, tokens, False)
    delta = art / src - 1.0
    return Perplexity(round(src, 6), round(art, 6), round(delta, 6), budget, tokens, budget is None or delta <= budget)


def judge(refs: list[Reference], logits: list[np.ndarray], tol: Tolerance, how: str, ppl: Perplexity | None = None) -> GenerationReport:
    """The generator's verdict: per step, whether the artifact's greedy choice is the reference's token (floor
    `tol.tokens`, default every token) and its logits against the reference's (`tol`'s atol/rtol/cosine)."""
    floor = 1.0 if tol.tokens is None else tol.tokens
    agree = total = 0
    divergences = []
    steps = max((len(r.tokens) for r in refs), default=0)
    cosines = [1.0] * steps
    for i, (ref, got) in enumerate(zip(refs, logits)):
        picks = got.argmax(axis=-1)
        for step, (want, pick) in enumerate(zip(ref.tokens, picks.tolist())):
            total += 1
            agree += want == pick
            if want != pick and not any(d.prompt == i for d in divergences):
                top2 = np.sort(ref.logits[step])[-2:]
                divergences.append(Divergence(i, step, int(want), int(pick), float(top2[1] - top2[0])))
        for step in range(min(len(got), len(ref.logits))):
            a, b = ref.logits[step].astype(np.float64), got[step].astype(np.float64)
            cosines[step] = min(cosines[step], float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    report = compare([{"logits": r.logits} for r in refs], [{"logits": g} for g in logits], tol)
    rate = agree / total if total else 0.0
    failures = []
    if not total:
        failures.append("no tokens compared: the reference generated none")
    if rate < floor:
        first = divergences[0] if divergences else None
        where = f"; prompt {first.prompt} first differs at step {first.step}: {first.got} where the source chose {first.expected}" if first else ""
        failures.append(f"token agreement {rate:.4f} < floor {floor:g} ({total - agree} of {total} next tokens differ{where})")
    if not report.passed:
        failures.append(f"logits: {report.first_failure()}")
    if ppl is not None and not ppl.passed:
        if ppl.delta is None:
            failures.append(f"perplexity: not finite on the text sample ({ppl.tokens} tokens)")
        else:
            failures.append(f"perplexity {ppl.artifact:.4g} is {ppl.delta:+.2%} from the source's {ppl.source:.4g} on {ppl.tokens} tokens "
                            f"(budget +{ppl.budget:.2%})")  # fmt: skip
    return GenerationReport(not failures, len(refs), total, rate, floor, divergences, [round(c, 6) for c in cosines], report, how, failures, ppl)
