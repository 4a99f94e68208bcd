"""serve-check of a raw-input ensemble (serving/pipeline.py): the build's raw samples (texts, image bytes) sent
as BYTES to <recipe>_pipeline, the answers judged against the source framework's pipeline (parity/pipeline.npz).

Each stage is also asked on its own through the same server, so a mismatch is named where it starts:
<recipe>_pre gets the raw samples (its tensors against the source's tokenizer or transforms), and
<recipe>_post gets the source model's own outputs (its answers against the source's pooling or top-k).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from toolchain import pipeline
from toolchain.errors import one_line
from toolchain.records import PipelineReport, ServedModel, TargetResult
from toolchain.serving.pipeline import pipeline_names
from toolchain.serving.results import CheckStatus, ModelCheck

REQUEST_TIMEOUT = 120.0


def check_pipeline(srv, m: ServedModel, s, target: TargetResult, root: Path, progress) -> ModelCheck:
    check = ModelCheck(m.target, "triton", m.name, s.backend, s.native_backend, server_version=srv.version, role="pipeline")
    stored = pipeline.load(root)
    if stored is None:
        check.status, check.reason = CheckStatus.REFUSED, f"{root / pipeline.PIPELINE_JSON} is missing; rebuild with mlpack build"
        return check
    cfg = stored.config
    names = pipeline_names(m.name.removesuffix("_pipeline"))
    progress.start(m.name, f"{m.name}: loading the raw-input ensemble")
    t0 = time.perf_counter()
    for model in (names["preprocess"], names["postprocess"], m.name):
        refusal = srv.load(model)
        if refusal:
            check.status, check.reason = CheckStatus.REFUSED, f"Triton refused to load {model}: {refusal}"
            progress.end(m.name, "refused", refusal)
            return check
    check.load_seconds = time.perf_counter() - t0
    src = stored.arrays()
    raw = stored.raw()
    built = target.pipeline
    answer_budget = built.get("answer").budget if built and built.get("answer") else 1.0
    client = _client(srv.url)
    t0 = time.perf_counter()
    try:
        mine, sent = _ask_pipeline(client, m.name, cfg, raw)
        pre = _ask_pre(client, names["preprocess"], cfg, raw, src)
        post = _ask_post(client, names["postprocess"], cfg, src, stored.labels())
    except RuntimeError as e:
        check.status, check.reason = CheckStatus.REFUSED, f"Triton refused a request: {e}"
        progress.end(m.name, "refused", str(e))
        return check
    finally:
        client.close()
    check.infer_seconds, check.requests = time.perf_counter() - t0, sent + len(raw) * 2
    answer = pipeline.judge_answers(cfg, answer_budget, mine, src)
    report = PipelineReport(len(raw), [pre, post, answer])
    check.pipeline = report.to_dict() | {"answers": pipeline.shown(cfg, mine)}
    bad = report.first_failure()
    if bad is None:
        check.status = CheckStatus.OK
    else:
        check.status = CheckStatus.MISMATCH
        stage = (
            bad.line()
            if bad.stage != "answer"
            else f"stage model: {bad.metric} {bad.value:.6g} (budget {bad.budget:g}) while the served preprocessing and postprocessing match the source's"
        )
        check.reason = f"the served pipeline's answers differ from the source pipeline's; {stage}"
    progress.end(m.name, check.status.value, f"{len(raw)} raw samples as {'text' if cfg['modality'] == 'text' else 'image bytes'}: {answer.metric} {answer.value:.6f}"
                 + (f"; {bad.line()}" if bad else ""))  # fmt: skip
    return check


def _client(url: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=REQUEST_TIMEOUT)


def _raw_input(cfg: dict, items: list) -> object:
    import tritonclient.http as httpclient

    blobs = np.array([x.encode("utf-8") if isinstance(x, str) else x for x in items], dtype=np.object_)
    arr = blobs.reshape(-1, 1) if cfg["batch_max"] > 0 else blobs
    inp = httpclient.InferInput("TEXT" if cfg["modality"] == "text" else "IMAGE", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def _infer(client, model: str, inputs: list, outputs: list[str]) -> dict:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    try:
        res = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
    except InferenceServerException as e:
        raise RuntimeError(f"{model}: {one_line(e.message() or str(e))}") from None
    return {o: res.as_numpy(o) for o in outputs}


def _answer_names(cfg: dict) -> list[str]:
    return ["EMBEDDING"] if cfg["answer"] == "embedding" else ["LABELS", "SCORES", "CLASS_IDS"]


def _as_answer(cfg: dict, got: dict, j: int) -> dict:
    if cfg["answer"] == "embedding":
        return {"embedding": got["EMBEDDING"][j : j + 1]}
    return {"scores": got["SCORES"][j : j + 1], "ids": got["CLASS_IDS"][j : j + 1], "labels": got["LABELS"][j : j + 1]}


def _ask_pipeline(client, model: str, cfg: dict, raw: list) -> tuple[list[dict], int]:
    """The raw samples in batches, as a client sends them; one answer per sample."""
    answers, sent = [], 0
    for rows in pipeline.batches(cfg, len(raw)):
        got = _infer(client, model, [_raw_input(cfg, [raw[i] for i in rows])], _answer_names(cfg))
        sent += 1
        answers += [_as_answer(cfg, got, j) for j in range(len(rows))]
    return answers, sent


def _ask_pre(client, model: str, cfg: dict, raw: list, src: list[dict]):
    """The served preprocessing, one raw sample per request, against the source's tensors."""
    ours = [_infer(client, model, [_raw_input(cfg, [x])], cfg["inputs"]) for x in raw]
    source = [pipeline.part(a, "pre") for a in src]
    if cfg["modality"] == "text":
        return pipeline.compare_tokens(ours, source, raw, f"the served {model}")
    return pipeline.compare_images(ours, source, cfg["images"], f"served {model}")


def _ask_post(client, model: str, cfg: dict, src: list[dict], labels):
    """The served postprocessing fed the source model's own outputs, against the source's answers."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    want = cfg[cfg["answer"]]["output"]
    values = []
    for a in src:
        feeds = {want: a[f"out.{want}"]}
        if cfg["answer"] == "embedding" and cfg["embedding"]["pool"] == "mean":
            feeds["attention_mask"] = a["pre.attention_mask"]
        inputs = []
        for n, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            inp = httpclient.InferInput(n, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        got = _as_answer(cfg, _infer(client, model, inputs, _answer_names(cfg)), 0)
        values.append(pipeline.answer_distance(cfg, got, pipeline.part(a, "answer")))
    return pipeline.post_check(cfg, values)
