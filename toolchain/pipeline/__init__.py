"""Raw inputs to answers, judged end to end (recipe `preprocess:` and `postprocess:`).

The reference step runs the source framework's pipeline (reference.py) on the recipe's raw samples and
keeps, per sample, its tensors, the source model's outputs and its answer (parity/pipeline.npz), beside
parity/pipeline.json (the texts, or the images copied to parity/raw/, and the checks of mlpack's own
preprocessing and postprocessing, runtime.py, against the source's on the same samples). Each target
then runs the raw samples through runtime.py and its artifact, and its answers are judged against the
source's. Every check names its stage, so a tokenizer or normalisation mismatch is reported as one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.feeds import load_feeds, save_feeds
from toolchain.pipeline import runtime
from toolchain.pipeline.reference import SourcePipeline
from toolchain.records import PipelineReport, StageCheck

PIPELINE_JSON = "parity/pipeline.json"
PIPELINE_ARRAYS = "parity/pipeline.npz"
RAW_DIR = "parity/raw"
IMAGE_ATOL = 1e-4  # pixels after normalisation: the same PIL resize gives ~1e-7
POST_COSINE = 0.99999  # mlpack's pooling vs torch's, on the same outputs
SCORE_ATOL = 1e-5


@dataclass
class Stored:
    """What the reference step kept: the settings the served models read, the raw samples and the source's side."""

    config: dict  # pipeline.json
    root: Path

    @property
    def modality(self) -> str:
        return self.config["modality"]

    def raw(self) -> list:
        """Texts, or image bytes, in sample order."""
        if self.modality == "text":
            return list(self.config["texts"])
        return [(self.root / RAW_DIR / name).read_bytes() for name in self.config["images"]]

    def arrays(self) -> list[dict]:
        return load_feeds(self.root / PIPELINE_ARRAYS)

    def labels(self) -> list[str] | None:
        path = self.root / RAW_DIR / "labels.txt"
        return runtime.read_labels(path) if path.is_file() else None

    def checks(self) -> list[StageCheck]:
        return [StageCheck.from_dict(c) for c in self.config["checks"]]


def load(root: Path) -> Stored | None:
    path = Path(root) / PIPELINE_JSON
    return Stored(json.loads(path.read_text()), Path(root)) if path.is_file() else None


def served_config(recipe) -> dict:
    """The settings pre- and postprocessing run with: the recipe's sections, the model's input names and dtypes,
    and the sequence sizes the artifact accepts (padding reaches at least the smallest)."""
    inputs = {i.name: i for i in recipe.inputs}
    seq_min, seq_max = 1, None
    if recipe.preprocess.text is not None:
        dim = inputs["input_ids"].shape[1] if len(inputs["input_ids"].shape) > 1 else None
        if isinstance(dim, str) and dim in recipe.dims:
            seq_min, seq_max = recipe.dims[dim].min, recipe.dims[dim].max
        elif isinstance(dim, int) and dim > 0:
            seq_min = seq_max = dim
    first = recipe.inputs[0].shape[0] if recipe.inputs[0].shape else None
    batch_max = recipe.dims[first].max if isinstance(first, str) and first in recipe.dims else 1
    return {
        "modality": recipe.preprocess.modality,
        "answer": recipe.postprocess.answer,
        **recipe.preprocess.config(),
        **recipe.postprocess.config(),
        "inputs": [i.name for i in recipe.inputs],
        "dtypes": {i.name: i.dtype for i in recipe.inputs},
        "output_names": list(recipe.outputs or []),
        "seq_min": seq_min,
        "seq_max": seq_max,
        "batch_max": batch_max,
    }


def tokenizer_path(recipe) -> Path:
    path = recipe.resolve(recipe.preprocess.text.tokenizer)
    return path / "tokenizer.json" if path.is_dir() else path


def make_reference(recipe, source, root: Path) -> list[str]:
    """Run the source framework's pipeline on the raw samples; keep its side and check mlpack's pre- and
    postprocessing against it (those checks name their stage). Returns notes for the build's log."""
    root = Path(root)
    cfg = served_config(recipe)
    src = SourcePipeline(recipe)
    raw_dir = root / RAW_DIR
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw_dir.mkdir(parents=True)
    labels = None
    if recipe.postprocess.classify is not None and recipe.postprocess.classify.labels:
        shutil.copyfile(recipe.resolve(recipe.postprocess.classify.labels), raw_dir / "labels.txt")
        labels = runtime.read_labels(raw_dir / "labels.txt")
    names, dtypes = cfg["inputs"], cfg["dtypes"]
    if cfg["modality"] == "text":
        texts = [t for t in Path(recipe.raw_samples()[0]).read_text(encoding="utf-8").splitlines() if t.strip()]
        cfg["texts"] = texts
        tok = runtime.load_tokenizer(tokenizer_path(recipe))
        shutil.copyfile(tokenizer_path(recipe), raw_dir / "tokenizer.json")
        src_feeds = [src.text(t, names, dtypes) for t in texts]
        ours = [runtime.encode_texts(tok, cfg, [t], names, dtypes, cfg["seq_min"], cfg["seq_max"]) for t in texts]
        pre_check = compare_tokens(ours, src_feeds, texts)
    else:
        files = recipe.raw_samples()
        cfg["images"] = [f"{i:03d}-{p.name}" for i, p in enumerate(files)]
        for name, p in zip(cfg["images"], files):
            shutil.copyfile(p, raw_dir / name)
        src_feeds = [src.image(p, names[0]) for p in files]
        ours = [{names[0]: runtime.decode_images([p.read_bytes()], cfg)} for p in files]
        pre_check = compare_images(ours, src_feeds, cfg["images"])
    arrays, post_values = [], []
    with source.reference_runner() as model:
        for feed in src_feeds:
            out = model.infer(feed)
            answer = src.answer(out, feed)
            mine = _answer(cfg, out, feed, labels)
            post_values.append(answer_distance(cfg, mine, answer))
            spec_out = recipe.postprocess.spec.output
            arrays.append({**{f"pre.{k}": v for k, v in feed.items()}, f"out.{spec_out}": np.asarray(out[spec_out]),
                           **{f"answer.{k}": v for k, v in answer.items()}})  # fmt: skip
    save_feeds(root / PIPELINE_ARRAYS, arrays)
    post_stage = post_check(cfg, post_values)
    cfg["source_labels"] = (
        [[(labels[j] if labels and j < len(labels) else str(j)) for j in a["answer.ids"][0]] for a in arrays] if cfg["answer"] == "classify" else None
    )
    cfg["checks"] = [pre_check.to_dict(), post_stage.to_dict()]
    (root / PIPELINE_JSON).write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")
    return src.notes + [f"pipeline: {len(src_feeds)} raw samples; " + "; ".join(c.line() for c in (pre_check, post_stage))]


def files(root: Path) -> list[Path]:
    """The files the reference step wrote for the pipeline (for the cache)."""
    root = Path(root)
    return [root / PIPELINE_JSON, root / PIPELINE_ARRAYS] + sorted(p for p in (root / RAW_DIR).iterdir() if p.is_file())


def _answer(cfg: dict, outputs: dict, feed: dict, labels) -> dict:
    """mlpack's postprocessing of one batch of outputs: {'embedding'} or {'scores', 'ids'}."""
    out = outputs[cfg[cfg["answer"]]["output"]]
    if cfg["answer"] == "embedding":
        return {"embedding": runtime.embed(cfg, out, feed.get("attention_mask"))}
    _, scores, ids = runtime.classify(cfg, out, labels)
    return {"scores": scores, "ids": ids}


def answer_distance(cfg: dict, mine: dict, src: dict) -> tuple[float, float]:
    """(worst cosine, 0) for embeddings; (top-1 agreement, max score error) for classes, over the rows."""
    if cfg["answer"] == "embedding":
        a, b = mine["embedding"].astype(np.float64), src["embedding"].astype(np.float64)
        cos = (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30, None)
        return float(cos.min()), 0.0
    agree = float((mine["ids"][:, 0] == src["ids"][:, 0]).mean())
    k = min(mine["scores"].shape[1], src["scores"].shape[1])
    err = float(np.abs(mine["scores"][:, :1] - src["scores"][:, :1]).max()) if k else 0.0
    return agree, err


def compare_tokens(ours: list[dict], src: list[dict], texts: list[str], who: str = "mlpack's tokenizer") -> StageCheck:
    """Token ids equal where the mask keeps them (mlpack may pad further, to the artifact's smallest sequence)."""
    same = 0
    first = ""
    for i, (a, b) in enumerate(zip(ours, src)):
        ka = a["input_ids"][0][a["attention_mask"][0] == 1] if "attention_mask" in a else a["input_ids"][0]
        kb = b["input_ids"][0][b["attention_mask"][0] == 1] if "attention_mask" in b else b["input_ids"][0]
        extra = [n for n in a if n not in ("input_ids", "attention_mask") and not np.array_equal(a[n][0][: kb.size], b[n][0][: kb.size])]
        if np.array_equal(ka, kb) and not extra:
            same += 1
        elif not first:
            what = f"{extra[0]} differs" if np.array_equal(ka, kb) else f"{who} gives {ka[:8].tolist()}, the source's {kb[:8].tolist()}"
            first = f"text {i} ({texts[i][:40]!r}): {what}"
    return StageCheck("preprocess", same == len(src), "share of texts the tokenizer encodes as the source's", same / max(len(src), 1), 1.0, first)


def compare_images(ours: list[dict], src: list[dict], names: list[str], who: str = "mlpack", atol: float = IMAGE_ATOL) -> StageCheck:
    errs = [float(np.abs(a[k] - b[k]).max()) if a[k].shape == b[k].shape else float("inf") for a, b in zip(ours, src) for k in a]
    worst = max(errs) if errs else 0.0
    i = int(np.argmax(errs)) if errs else 0
    detail = f"image {names[i]}: max |{who} - source| {worst:.3g} after normalisation" if worst > atol else ""
    return StageCheck("preprocess", worst <= atol, "max_abs_err of the image tensor", worst, atol, detail)


def post_check(cfg: dict, values: list[tuple[float, float]]) -> StageCheck:
    if cfg["answer"] == "embedding":
        worst = min(v for v, _ in values)
        return StageCheck("postprocess", worst >= POST_COSINE, "cosine of mlpack's pooling to the source's", worst, POST_COSINE,
                          "" if worst >= POST_COSINE else "pooling or normalisation differs from the source's")  # fmt: skip
    agree, err = min(v for v, _ in values), max(e for _, e in values)
    ok = agree >= 1.0 and err <= SCORE_ATOL
    return StageCheck("postprocess", ok, "top-1 class as the source's", agree, 1.0, "" if ok else f"scores differ by up to {err:.3g}")


def part(row: dict, prefix: str) -> dict:
    """One stored sample's arrays of one side (pre, out, answer), by their plain names."""
    return {k.removeprefix(f"{prefix}."): v for k, v in row.items() if k.startswith(f"{prefix}.")}


def judge_answers(cfg: dict, budget: float, mine: list[dict], src: list[dict]) -> StageCheck:
    """The final answers, per raw sample, against the source pipeline's: each embedding's cosine, or top-1 agreement."""
    values = [answer_distance(cfg, a, part(b, "answer")) for a, b in zip(mine, src)]
    if cfg["answer"] == "embedding":
        worst = min(v for v, _ in values)
        i = int(np.argmin([v for v, _ in values]))
        return StageCheck("answer", worst >= budget, "worst embedding cosine to the source pipeline's", worst, budget,
                          "" if worst >= budget else f"sample {i}")  # fmt: skip
    share = float(np.mean([v for v, _ in values]))
    bad = [i for i, (v, _) in enumerate(values) if v < 1.0]
    return StageCheck("answer", share >= budget, "top-1 labels as the source pipeline's", share, budget,
                      f"samples {bad[:5]} differ" if bad else "")  # fmt: skip


def batches(cfg: dict, n: int) -> list[range]:
    step = max(1, min(cfg["batch_max"], 8))
    return [range(lo, min(n, lo + step)) for lo in range(0, n, step)]


def run_ours(cfg: dict, stored: Stored, infer) -> list[dict]:
    """The raw samples through mlpack's preprocessing, `infer` (the artifact: feed -> outputs) and postprocessing,
    in batches as a client sends them; one answer per sample."""
    raw = stored.raw()
    labels = stored.labels()
    tok = runtime.load_tokenizer(stored.root / RAW_DIR / "tokenizer.json") if cfg["modality"] == "text" else None
    answers: list[dict] = []
    for rows in batches(cfg, len(raw)):
        part = [raw[i] for i in rows]
        if tok is not None:
            feed = runtime.encode_texts(tok, cfg, part, cfg["inputs"], cfg["dtypes"], cfg["seq_min"], cfg["seq_max"])
        else:
            feed = {cfg["inputs"][0]: runtime.decode_images(part, cfg)}
        ans = _answer(cfg, infer(feed), feed, labels)
        answers += [{k: v[j : j + 1] for k, v in ans.items()} for j in range(len(part))]
    return answers


def judge_target(recipe, spec, root: Path, infer) -> PipelineReport:
    """A target's artifact inside the pipeline, from raw samples to answers, against the source pipeline's answers;
    the preprocessing and postprocessing checks of the reference step come first."""
    stored = load(root)
    cfg = stored.config
    src = stored.arrays()
    mine = run_ours(cfg, stored, infer)
    budget = _budget(recipe, spec)
    answer = judge_answers(cfg, budget, mine, src)
    checks = stored.checks()
    if not answer.passed and all(c.passed for c in checks):
        answer.detail += ("; " if answer.detail else "") + "the preprocessing and postprocessing match the source's: the model stage differs"
    return PipelineReport(len(src), checks + [answer])


def _budget(recipe, spec) -> float:
    """The end-to-end budget: postprocess's, loosened to the target's own cosine budget for reduced precision."""
    post = recipe.postprocess
    if post.classify is not None:
        return post.classify.agreement
    tol = recipe.tolerance(spec)
    own = getattr(tol, "cosine", None)
    return min(post.embedding.cosine, own) if own else post.embedding.cosine


def shown(cfg: dict, answers: list[dict]) -> list:
    """What the manifest keeps of the served answers: the top labels, or the embeddings' first values."""
    if cfg["answer"] == "embedding":
        return [[round(float(v), 5) for v in a["embedding"][0][:4]] for a in answers[:8]]
    return [[x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in a["labels"][0][:3]] for a in answers[:8]]
