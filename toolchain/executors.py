"""Where a step's process runs: on this machine (the default) or as a Ray task on a node that fits it.

Either way the step itself is the same `python -m toolchain.worker` process with the same
time and memory limits (toolchain.steps.run_step); Ray only chooses the node and carries
the step's inputs there and its files back. The submitting build keeps the parity
bookkeeping, the manifest, the cache and the atomic publish.

Ray imports only inside RayExecutor, so local builds and cache hits never import it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from toolchain import cache
from toolchain.environment import tool_versions
from toolchain.errors import UsageError
from toolchain.options import memory_bytes
from toolchain.recipe import Recipe
from toolchain.records import StepSpec
from toolchain.steps import Children, StepOutcome, run_step

RAY_TIMEOUT_MARGIN_S = 120.0  # beyond the step's own timeout: scheduling, transfers
GPU_RESOURCE = "accelerator_type:{}"  # the resource Ray gives a node per GPU model (custom ones stand in for tests)


def local_gpu_names() -> list[str]:
    """This machine's GPU models from nvidia-smi (no framework import); [] without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class Executor(Protocol):
    """Where step processes run."""

    name: str

    def gpu_reason(self, gpu: str) -> str | None: ...
    def run(self, step: StepSpec, staging: Path, name: str, timeout: float, children: Children, memory: str,
            recipe: Recipe | None = None, resources: dict | None = None) -> StepOutcome: ...  # fmt: skip
    def close(self) -> None: ...


class LocalExecutor:
    name = "local"

    def gpu_reason(self, gpu: str) -> str | None:
        """Why a target bound to GPU type `gpu` cannot build here, or None."""
        names = local_gpu_names()
        if any(gpu.lower() in n.lower().replace(" ", "") or gpu.lower() in n.lower() for n in names):
            return None
        have = f"this machine has {', '.join(names)}" if names else "this machine has no NVIDIA GPU"
        return f"needs a {gpu} GPU; {have} (build GPU matrices with --executor ray)"

    def run(self, step: StepSpec, staging: Path, name: str, timeout: float, children: Children, memory: str,
            recipe: Recipe | None = None, resources: dict | None = None) -> StepOutcome:  # fmt: skip
        return run_step(step, staging, name, timeout, children, memory_bytes(memory))

    def close(self) -> None:
        pass


def resources_for(spec) -> dict:
    """What a target's step asks of a node: a CPU, a GPU for CUDA targets, its GPU type, its memory if set."""
    res: dict = {"num_cpus": 1}
    if getattr(spec, "target_device", "cpu") == "cuda":
        res["num_gpus"] = 1
    if spec.gpu:
        res["resources"] = {GPU_RESOURCE.format(spec.gpu): 0.001}
    if "memory" in spec.model_fields_set:
        res["memory"] = memory_bytes(spec.memory)
    return res


# ------------------------------------------------------------------ Ray


def _pack(root: Path, rels: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in rels:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel)
    return buf.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")  # no absolute paths, no links out, no devices


def _bundle(recipe: Recipe) -> tuple[bytes, str]:
    """The files a step reads (what the source cache key hashes) and the recipe, under their common folder."""
    paths = [recipe.path] + [p for f in recipe.files() for p in f.members()]
    base = Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in paths]))
    return _pack(base, sorted({p.relative_to(base).as_posix() for p in paths})), recipe.path.relative_to(base).as_posix()


@dataclass(frozen=True)
class Node:
    """The Ray node a step ran on (recorded as the target's `node`)."""

    id: str
    ip: str
    host: str

    def __str__(self) -> str:
        return f"{self.host} ({self.ip})"


def _ray_step(bundle: bytes, recipe_rel: str, inputs: bytes, step: StepSpec, name: str, timeout: float, memory: str,
              expect: dict) -> tuple[Node, dict, bytes]:  # fmt: skip
    """Runs on a Ray worker: unpack, run the step as a local process, pack what it wrote.
    Returns the node, the StepOutcome as a dict, and the files (a tar)."""
    import ray

    node = Node(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), socket.gethostname())
    here = {"code": cache.code_digest(), "tools": tool_versions()}
    if here != expect:
        diff = [k for k in expect["tools"] if expect["tools"][k] != here["tools"].get(k)] or ["mlpack's code"]
        why = f"node {node} runs other versions ({', '.join(diff)}) than the build; its artifact would not match the cache key"
        return node, StepOutcome(None, why, f"logs/{name}.log", "install the same versions on every node").to_dict(step), b""
    work = Path(tempfile.mkdtemp(prefix="mlpack-ray-"))
    try:
        _unpack(bundle, work / "src")
        staging = work / "staging"
        staging.mkdir()
        _unpack(inputs, staging)
        step = replace(step, recipe=str(work / "src" / recipe_rel), out_root=str(work / "out"))
        out = run_step(step, staging, name, timeout, Children(), memory_bytes(memory))  # a share: of this node's memory
        rels = ["logs", "parity/reference.npz", "parity/pad_samples.npz", "parity/pad_reference.npz"] if step.step == "reference" else ["logs", name]
        return node, out.to_dict(step), _pack(staging, rels)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when HOST:PORT does not answer (ray.init retries a dead address for minutes)."""
    hostport = address.removeprefix("ray://")
    if hostport == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"--executor: cannot reach a Ray cluster at {hostport} ({e})",
                         "start one (ray start --head) or set RAY_ADDRESS / --executor ray://HOST:PORT") from None  # fmt: skip


class RayExecutor:
    """Steps as Ray tasks. `address`: None (RAY_ADDRESS, or a cluster on this machine) or the head's HOST:PORT.

    The build joins the cluster as a driver (it must reach the nodes, as CI runners inside the
    cluster's network do); Ray Client is not used: its server failed to start on this workplace's machines.
    """

    name = "ray"

    def __init__(self, address: str | None):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray, which is not installed", "pip install 'mlpack[distributed]'") from None
        self.ray = ray
        target = address or os.environ.get("RAY_ADDRESS") or "auto"
        _probe(target)
        try:
            ray.init(address=target, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--executor ray{'://' + address if address else ''}: cannot reach a Ray cluster: {e}",
                             "start one (ray start --head) or set RAY_ADDRESS / --executor ray://HOST:PORT") from None  # fmt: skip
        self._task = ray.remote(_ray_step)
        self._bundles: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self.expect = {"code": cache.code_digest(), "tools": tool_versions()}

    def gpu_reason(self, gpu: str) -> str | None:
        if self.ray.cluster_resources().get(GPU_RESOURCE.format(gpu), 0) > 0:
            return None
        have = sorted(k.split(":", 1)[1] for k in self.ray.cluster_resources() if k.startswith("accelerator_type:"))
        return f"no node of type {gpu} in the Ray cluster (it has: {', '.join(have) or 'no typed nodes'})"

    def _bundle_ref(self, recipe: Recipe):
        with self._lock:
            key = str(recipe.path)
            if key not in self._bundles:
                data, rel = _bundle(recipe)
                self._bundles[key] = (self.ray.put(data), rel)
            return self._bundles[key]

    def run(self, step: StepSpec, staging: Path, name: str, timeout: float, children: Children, memory: str,
            recipe: Recipe | None = None, resources: dict | None = None) -> StepOutcome:  # fmt: skip
        ray = self.ray
        bundle, rel = self._bundle_ref(recipe)
        inputs = ["parity/samples.npz"] if step.step == "reference" else ["parity"] + [d.dir for d in step.deps.values()]
        options = {"max_retries": 1, "retry_exceptions": False, **(resources or {"num_cpus": 1})}
        ref = self._task.options(**options).remote(bundle, rel, _pack(staging, inputs), step, name, timeout, memory, self.expect)
        children.add_stopper(lambda: ray.cancel(ref, force=True))
        log = staging / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            back = ray.get(ref, timeout=timeout + RAY_TIMEOUT_MARGIN_S)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            log.write_text(f"the Ray task did not return within {timeout + RAY_TIMEOUT_MARGIN_S:g}s\n")
            return StepOutcome(None, f"timed out after {timeout:g}s on the Ray cluster (raise `timeout:` on the target)", log.relative_to(staging).as_posix())
        except ray.exceptions.RayError as e:  # the node or its worker died, twice (one retry)
            text = f"{type(e).__name__}: {e}"
            log.write_text(text + "\n")
            return StepOutcome(None, f"the step's Ray task failed (retried once): {text.splitlines()[0]}", log.relative_to(staging).as_posix())
        node, outcome, files = back
        _unpack(files, staging)
        step_file = staging / "logs" / f"{name}.step.json"
        if step_file.is_file():  # reproduce.sh re-runs it here, with this build's paths
            remote = StepSpec.from_dict(json.loads(step_file.read_text()))
            local = replace(remote, recipe=step.recipe, root=str(staging), out_root=step.out_root or remote.out_root)
            step_file.write_text(json.dumps(local.to_dict(), indent=2))
        out = StepOutcome.from_dict(outcome, asdict(node))
        if out.result is None and out.reason:
            out.reason = f"{out.reason} (on node {node.host}, {node.ip})"
        return out

    def close(self) -> None:
        self.ray.shutdown()


def open_executor(spec: str | None):
    """'local' (default), 'ray' (RAY_ADDRESS, or a cluster on this machine), or 'ray://HOST:PORT' (the head's GCS address)."""
    if spec in (None, "", "local"):
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor(None)
    if spec.startswith("ray://"):
        return RayExecutor(spec.removeprefix("ray://"))
    raise UsageError(f"--executor {spec!r}: unknown executor", "use local, ray (RAY_ADDRESS or a local cluster) or ray://HOST:PORT")
