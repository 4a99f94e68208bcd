"""mlpack serve-check: load a build's repositories in a real server, replay the
parity samples over KServe v2 HTTP, and judge the answers with the build's gate.

Results come back as data and are recorded in the manifest, per target, under
`serving_check.<server>`; the CLI prints them and picks the exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from toolchain import manifest as mf
from toolchain.errors import UsageError, one_line
from toolchain.feeds import load_feeds
from toolchain.generation import GENERATION_FILE, load_references, stream_agreement
from toolchain.parity import judge_again
from toolchain.progress import Progress
from toolchain.records import Manifest, ParityData, ServedModel, TargetResult
from toolchain.serving.embedded_check import check_embedded
from toolchain.serving.pipeline_check import check_pipeline
from toolchain.serving.results import CheckStatus, ModelCheck, ServeCheckResult
from toolchain.serving.server import TritonServer, find_triton
from toolchain.serving.size_check import check_sizes, served_table
from toolchain.serving.standin import Served, native_backend, parse_config, prepare
from toolchain.serving.tfserving_check import check_tfserving
from toolchain.serving.triton import check_config_against_signature
from toolchain.serving.vllm import check_vllm

REQUEST_TIMEOUT = 120.0  # seconds per request; a model that takes longer is refused


def read_build(root: Path) -> tuple[Manifest, list[dict], list[dict]]:
    """(manifest, parity samples, reference outputs) of a published build."""
    path = root / "manifest.json"
    if not path.is_file():
        raise UsageError(f"no manifest.json in {root}", "pass <out>/<name>, the directory a build published")
    try:
        manifest = mf.read(path)
    except ValueError as e:
        raise UsageError(f"{path} is not an mlpack manifest ({e})", "rebuild it with mlpack build") from None
    data = manifest.parity_data or ParityData()
    try:
        samples = load_feeds(root / data.samples)
        reference = load_feeds(root / data.reference)
    except OSError as e:
        raise UsageError(f"{root}: the build's parity samples are missing ({e})", "rebuild it with mlpack build") from None
    return manifest, samples, reference


def http_client():
    """tritonclient's KServe v2 HTTP client, or a usage error naming the extra that provides it.

    tritonclient itself is a core dependency (its config proto); its HTTP client's
    packages come with mlpack[serve], and without them it raises RuntimeError."""
    try:
        import tritonclient.http as httpclient
    except (ImportError, RuntimeError) as e:
        raise UsageError(f"this command talks to Triton over HTTP and tritonclient's HTTP client is not installed ({one_line(e)})",
                         "pip install 'mlpack[serve]'") from None  # fmt: skip
    return httpclient


def serve_check(
    root: Path,
    server: Path | None = None,
    native: bool = False,
    targets: list[str] | None = None,
    progress: Progress | None = None,
    only: list[str] | None = None,
) -> ServeCheckResult:
    """Check every served model of the build at `root`; updates its manifest."""
    progress = progress or Progress()
    manifest, samples, reference = read_build(root)
    if manifest.serving.by("triton") and (not only or "triton" in only):
        http_client()  # before a server starts
    names = [t.name for t in manifest.targets]
    if targets:
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise UsageError(f"--target {', '.join(unknown)}: not in {root / 'manifest.json'}", f"targets are: {', '.join(names)}")
    models = [m for m in manifest.serving.models if (not targets or m.target in targets) and (not only or m.server in only)]
    result = ServeCheckResult(root, [], {})
    triton_models = [m for m in models if m.server == "triton"]
    if triton_models:
        _check_triton(result, triton_models, manifest, samples, reference, server, native, progress)
    elif only and "triton" not in only:
        pass  # not asked for: nothing to report
    else:
        result.skipped["triton"] = "this build has no Triton models (no serve.triton section, or none of its targets built)"
    for m in (m for m in models if m.server == "vllm"):
        result.models.append(check_vllm(root, m, progress))
    embedded, why = check_embedded(root, manifest, targets, only, progress)  # ORT GenAI folders: no server
    result.models += embedded
    result.skipped |= why
    tf_checks, tf_skip = check_tfserving(root, manifest, [m for m in models if m.server == "tfserving"], samples, reference, progress)
    result.models += tf_checks
    if tf_skip and (not only or "tfserving" in only):
        result.skipped["tfserving"] = tf_skip
    result.manifest = _record(root, manifest, result.models)
    return result


@contextlib.contextmanager
def open_triton(root: Path, models: list[ServedModel], manifest: Manifest, server: Path | None, native: bool, log: Path, progress: Progress):
    """A started Triton serving the build's models (stand-ins where a backend is missing).

    Yields (server, one Served per model); the server is stopped and the
    temporary repository removed however the block ends.
    """
    install = find_triton(server)
    log.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mlpack-serve-"))
    try:
        if native:
            repo = root / "triton"
            served = [Served(m.name, nb, nb) for m in models for nb in [native_backend((root / m.path / "config.pbtxt").read_text())]]
        else:
            repo = work / "repository"
            repo.mkdir()
            served = prepare(models, root, repo, install.available_backends(), manifest)
        progress.start("triton", f"starting tritonserver ({install.origin})")
        with TritonServer(install, repo, work, log) as srv:
            progress.end("triton", "ok", f"Triton {srv.version} ready in {srv.start_seconds:.1f}s on {srv.url}")
            yield srv, served
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_triton(result, models: list[ServedModel], manifest: Manifest, samples, reference, server, native, progress) -> None:
    root = result.root
    log = root / "logs" / "serve-check-triton.log"
    with open_triton(root, models, manifest, server, native, log, progress) as (srv, served):
        result.server_version, result.start_seconds = srv.version, srv.start_seconds
        for m, s in zip(models, served):
            if m.role in ("preprocess", "postprocess"):  # loaded and judged with their ensemble
                continue
            if m.role == "pipeline":
                check = check_pipeline(srv, m, s, manifest.target(m.target), root, progress)
            else:
                check = _check_model(srv, m, s, manifest.target(m.target), samples, reference, root, progress)
            check.log = log.relative_to(root).as_posix()
            result.models.append(check)


def _check_model(srv, m: ServedModel, s, target: TargetResult, samples, reference, root: Path, progress) -> ModelCheck:
    check = ModelCheck(m.target, "triton", m.name, s.backend, s.native_backend, server_version=srv.version)
    if s.skip_reason:
        check.reason = s.skip_reason
        progress.note(f"triton: {m.name}: skipped - {s.skip_reason}")
        return check
    text = (root / m.path / "config.pbtxt").read_text()
    sig = target.signature
    if s.backend != s.native_backend:  # served by a stand-in: check what the native backend enforces
        check.native_check = check_config_against_signature(text, sig, target.kind)
    progress.start(m.name, f"{m.name}: loading ({s.backend})")
    t0 = time.perf_counter()
    refusal = srv.load(m.name)
    check.load_seconds = time.perf_counter() - t0
    if refusal:
        check.status, check.reason = CheckStatus.REFUSED, f"Triton refused to load {m.name}: {refusal}"
        progress.end(m.name, "refused", refusal)
        return check
    cfg = parse_config(text)
    if cfg.model_transaction_policy.decoupled:  # a streaming generator (serving/generator.py): text in, tokens out
        return _check_generator(srv, m, check, root, progress)
    t0 = time.perf_counter()
    outputs, error, check.requests = replay(srv.url, cfg, sig, samples)
    check.infer_seconds = time.perf_counter() - t0
    if error:
        check.status, check.reason = CheckStatus.REFUSED, f"Triton refused a request to {m.name}: {error}"
        progress.end(m.name, "refused", error)
        return check
    check.parity = judge_again(target.parity, reference, outputs)
    model_py = next((root / m.path).glob("*/model.py"), root / m.path / "model.py")
    check.sizes = check_sizes(lambda feeds: replay(srv.url, cfg, sig, feeds), target, root, served_table(model_py), samples)
    abs_err, cos = check.parity.worst()
    if check.native_check:  # a config the native backend refuses explains any mismatch too
        check.status = CheckStatus.REFUSED
        check.reason = f"the native {s.native_backend} backend would refuse this config: " + "; ".join(check.native_check)
    elif not check.parity.passed:
        check.status, check.reason = CheckStatus.MISMATCH, "served outputs differ from the source model beyond the build's tolerance"
    elif check.sizes and not check.sizes["passed"]:
        check.status, check.reason = CheckStatus.MISMATCH, f"sizes: {check.sizes['problem']}"
    else:
        check.status = CheckStatus.OK
    said = ""
    if check.sizes:
        said += f", padded sizes cosine {check.sizes['pad']['worst_cosine']:.6f}" if check.sizes.get("pad") else ""
        said += f", {check.sizes['refused']['dim']} {check.sizes['refused']['size']} refused" if (check.sizes.get("refused") or {}).get("error") else ""
    progress.end(m.name, check.status.value, f"{check.requests} requests, max_abs_err {abs_err:.2e}, cosine {cos:.6f}{said}")
    return check


def _check_generator(srv, m: ServedModel, check: ModelCheck, root: Path, progress) -> ModelCheck:
    """Stream the prompts the build was judged on (generation.json beside model.py) as text over gRPC; every streamed
    token must be the source's greedy token (parity/generation.npz), in order, and the stream must close."""
    vdir = next(p for p in sorted((root / m.path).iterdir()) if p.is_dir())
    prompts = json.loads((vdir / "generation.json").read_text())["prompts"]
    refs = load_references(root / GENERATION_FILE)
    t0 = time.perf_counter()
    streams, error = stream_generate(srv.grpc_url, m.name, prompts, [len(r.tokens) for r in refs])
    check.infer_seconds, check.requests = time.perf_counter() - t0, len(streams)
    if error:
        check.status, check.reason = CheckStatus.REFUSED, f"Triton refused a request to {m.name}: {error}"
        progress.end(m.name, "refused", error)
        return check
    agreement = stream_agreement([got for got, _ in streams], refs)
    total, same, first = agreement.total, agreement.same, agreement.first
    check.generation = {"prompts": len(prompts), "tokens": total, "token_match": round(same / max(total, 1), 6),
                        "responses": sum(len(got) for got, _ in streams), "text": [t for _, t in streams],
                        "first_divergence": dict(zip(("prompt", "step", "served", "source"), first)) if first else None}  # fmt: skip
    if same == total:
        check.status = CheckStatus.OK
    else:
        check.status = CheckStatus.MISMATCH
        check.reason = (f"streamed tokens differ from the source's greedy tokens ({same}/{total} equal"
                        + ("; prompt {} step {}: {} where the source chose {})".format(*first) if first else
                           "; a stream's length differs from the source's)"))  # fmt: skip
        stage = _tokenizer_stage(vdir, prompts, refs)
        if stage:
            check.reason = f"{stage}; {check.reason}"
    progress.end(m.name, check.status.value, f"{len(prompts)} prompts streamed, {same}/{total} tokens as the source's greedy tokens")
    return check


def _tokenizer_stage(vdir: Path, prompts: list[str], refs) -> str | None:
    """The stage at fault when the served tokenizer is not the build's: it encodes a prompt to other ids."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(vdir / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 (a tokenizer that does not load is the answer too)
        return f"stage tokenizer: the served {vdir / 'tokenizer.json'} does not load ({one_line(e)})"
    for i, (prompt, ref) in enumerate(zip(prompts, refs)):
        ids = tok.encode(prompt).ids
        if ids != list(ref.prompt):
            return (f"stage tokenizer: the served tokenizer.json encodes prompt {i} as {ids[:8]}{'...' if len(ids) > 8 else ''}, "
                    f"the build's as {list(ref.prompt)[:8]}{'...' if len(ref.prompt) > 8 else ''}")  # fmt: skip
    return None


def stream_generate(url: str, model: str, prompts: list[str], lengths: list[int]) -> tuple[list[tuple[list[int], str]], str | None]:
    """Each prompt sent as TEXT over a gRPC stream (MAX_TOKENS its reference's length); per prompt the token ids and
    the text pieces streamed back until the final flag, or the first error."""
    import queue

    import tritonclient.grpc as grpcclient

    done: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    out: list[tuple[list[int], str]] = []
    try:
        client.start_stream(callback=lambda result, error: done.put((result, error)), stream_timeout=REQUEST_TIMEOUT)
        for prompt, n in zip(prompts, lengths):
            text = grpcclient.InferInput("TEXT", [1], "BYTES")
            text.set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
            limit = grpcclient.InferInput("MAX_TOKENS", [1], "INT32")
            limit.set_data_from_numpy(np.array([n], np.int32))
            client.async_stream_infer(model, [text, limit], enable_empty_final_response=True)
            tokens, pieces = [], []
            while True:
                try:
                    result, error = done.get(timeout=REQUEST_TIMEOUT)
                except queue.Empty:
                    return out, f"no response within {REQUEST_TIMEOUT:.0f}s"
                if error is not None:
                    return out, (error.message() if hasattr(error, "message") else str(error)).strip()
                response = result.get_response()
                if result.as_numpy("TOKEN_ID") is not None:
                    tokens.append(int(result.as_numpy("TOKEN_ID").reshape(-1)[0]))
                    pieces.append(result.as_numpy("TEXT").reshape(-1)[0].decode("utf-8"))
                if response.parameters.get("triton_final_response") and response.parameters["triton_final_response"].bool_param:
                    break
            out.append((tokens, "".join(pieces)))
    finally:
        client.stop_stream()
        client.close()
    return out, None


def replay(url: str, cfg, sig, samples: list[dict]) -> tuple[list[dict], str | None, int]:
    """Send every sample over KServe v2 HTTP; (outputs per sample, first error, requests sent).

    Config tensors pair with the signature by position (torch_aoti renames them
    INPUT__i); samples larger than max_batch_size go in chunks, as a client must.
    """
    from tritonclient.utils import InferenceServerException

    httpclient = http_client()

    client = httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=REQUEST_TIMEOUT)
    out_pairs = [(c.name, t.name) for c, t in zip(cfg.output, sig.outputs)]
    outputs: list[dict] = []
    sent = 0
    try:
        for feed in samples:
            n = len(next(iter(feed.values())))
            step = cfg.max_batch_size if 0 < cfg.max_batch_size < n else n
            parts: list[dict] = []
            for lo in range(0, n, step):
                inputs = infer_inputs(cfg, sig, {k: v[lo : lo + step] for k, v in feed.items()} if step != n else feed)
                sent += 1
                try:
                    res = client.infer(cfg.name, inputs, outputs=[httpclient.InferRequestedOutput(c) for c, _ in out_pairs])
                except InferenceServerException as e:
                    return outputs, (e.message() or str(e)).strip(), sent
                parts.append({sname: res.as_numpy(cname) for cname, sname in out_pairs})
            outputs.append({k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]})
    finally:
        client.close()
    return outputs, None, sent


def infer_inputs(cfg, sig, feed: dict) -> list:
    """KServe v2 inputs named as the config names them, from a feed named by the signature."""
    from tritonclient.utils import np_to_triton_dtype

    httpclient = http_client()

    inputs = []
    for c, t in zip(cfg.input, sig.inputs):
        arr = np.ascontiguousarray(feed[t.name])
        inp = httpclient.InferInput(c.name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def _record(root: Path, manifest: Manifest, checks: list[ModelCheck]) -> Manifest:
    """Add serving_check.<server> to each checked target; replace the manifest atomically."""
    for c in checks:
        if c.target == "source":  # vLLM serves the source model itself (or its quantized weights), not a target's artifact
            manifest.serving.checks[c.key] = c.to_dict()
        else:
            manifest.target(c.target).record_serving_check(c.key, c.to_dict())
    path = root / "manifest.json"
    tmp = path.with_name(f".manifest.json.{os.getpid()}.tmp")
    mf.write(tmp, manifest)
    os.replace(tmp, path)  # a new file: never writes through a link into a cache
    return manifest
