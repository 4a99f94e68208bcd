"""Finding, starting and stopping a real Triton server.

Two layouts are understood: a standard install (`<prefix>/bin/tritonserver`
beside `<prefix>/backends/`, as in NVIDIA's containers) and the
`nvidia-pytriton` wheel inside its own Python environment (`make triton` puts
one in `.venv-triton`), whose Python backend must be assembled from the wheel's
backend files plus the stub built for that environment's Python.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.errors import EXIT_USAGE, MlpackError
from toolchain.fsutil import tail

ENV_VAR = "MLPACK_TRITON_ENV"
DEFAULT_ENV = ".venv-triton"


class ServerError(MlpackError):
    """No usable server here, or it did not start: a setup problem, not the model's."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None, log: Path | None = None):
        super().__init__(message)
        self.hint, self.log = hint, log

    def render(self) -> str:
        text = str(self)
        if self.log:
            text += f"\n    log: {self.log}"
        return text + (f"\n    fix: {self.hint}" if self.hint else "")


@dataclass
class TritonInstall:
    binary: Path
    backends: Path  # the install's backend directory
    stub: Path | None = None  # set for the wheel: its Python backend lacks the stub
    env: dict[str, str] = field(default_factory=dict)  # PATH / LD_LIBRARY_PATH additions
    origin: str = ""

    def available_backends(self) -> set[str]:
        return {p.name for p in self.backends.iterdir() if p.is_dir()} if self.backends.is_dir() else set()


def _from_wheel_env(env_root: Path) -> TritonInstall | None:
    """The nvidia-pytriton wheel installed in the environment at env_root, or None if absent."""
    env_root = env_root.resolve()  # PATH entries and backend symlinks must not depend on the cwd
    for sp in sorted(env_root.glob("lib/python3.*/site-packages")):
        tri = sp / "pytriton" / "tritonserver"
        if (tri / "bin" / "tritonserver").is_file():
            pyver = sp.parent.name.removeprefix("python")  # "3.11"
            stub = tri / "python_backend_stubs" / pyver / "triton_python_backend_stub"
            if not stub.is_file():
                have = sorted(p.name for p in (tri / "python_backend_stubs").iterdir())
                raise ServerError(
                    f"nvidia-pytriton in {env_root} has no Python-backend stub for Python {pyver} (it has {', '.join(have)})",
                    "recreate that environment with one of those Python versions",
                )
            # The stub embeds this Python: the environment's own must come first on PATH.
            env = {"PATH": str(env_root / "bin"), "LD_LIBRARY_PATH": str(sp / "nvidia_pytriton.libs")}
            return TritonInstall(tri / "bin" / "tritonserver", tri / "backends", stub, env, f"nvidia-pytriton in {env_root}")
    return None


def _from_binary(binary: Path) -> TritonInstall:
    binary = binary.resolve()
    tri = binary.parent.parent
    if (tri / "python_backend_stubs").is_dir():  # the wheel's layout, given by its binary
        found = _from_wheel_env(tri.parents[4]) if len(tri.parents) > 4 else None
        if found:
            return found
    return TritonInstall(binary, tri / "backends", origin=str(binary))


def find_triton(server: Path | None = None) -> TritonInstall:
    """The server to use: --server, then $MLPACK_TRITON_ENV, .venv-triton, tritonserver on PATH."""
    if server is not None:
        server = Path(server)
        if server.is_dir():
            found = _from_wheel_env(server) or (_from_binary(server / "bin" / "tritonserver") if (server / "bin" / "tritonserver").is_file() else None)
            if found:
                return found
            raise ServerError(f"--server {server}: no tritonserver in it (looked for the nvidia-pytriton wheel and bin/tritonserver)")
        if not server.is_file():
            raise ServerError(f"--server {server}: no such file")
        return _from_binary(server)
    candidates = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    candidates += [Path.cwd() / DEFAULT_ENV, Path(__file__).resolve().parents[2] / DEFAULT_ENV]
    for env_root in candidates:
        found = _from_wheel_env(env_root) if env_root.is_dir() else None
        if found:
            return found
    import shutil

    on_path = shutil.which("tritonserver")
    if on_path:
        return _from_binary(Path(on_path))
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ServerError(
        f"no Triton server found (looked in {looked} and for tritonserver on PATH)",
        "run `make triton` in the mlpack checkout, set MLPACK_TRITON_ENV to an environment with nvidia-pytriton, or pass --server PATH",
    )


def _backend_dir(install: TritonInstall, workdir: Path) -> Path:
    """The install's backends, with the wheel's Python backend completed by its stub."""
    if install.stub is None:
        return install.backends
    out = workdir / "backends"
    (out / "python").mkdir(parents=True, exist_ok=True)
    for f in (install.backends / "python").iterdir():
        (out / "python" / f.name).symlink_to(f)
    (out / "python" / install.stub.name).symlink_to(install.stub)
    for d in install.backends.iterdir():
        if d.name != "python":
            (out / d.name).symlink_to(d)
    return out


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read() or b"{}") if r.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class TritonServer:
    """A tritonserver on 127.0.0.1, models loaded explicitly, stopped with its process group.

    Explicit model control keeps one bad model from stopping the server and lets
    each load return the server's own error message.
    """

    def __init__(self, install: TritonInstall, repository: Path, workdir: Path, log: Path, ready_timeout: float = 120.0):
        self.install, self.repository, self.workdir, self.log = install, repository, workdir, log
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.version = "?"
        self.start_seconds = 0.0
        self._old_term = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> TritonServer:
        # SIGTERM to mlpack must still stop the server: turn it into an exception.
        if sys.platform != "win32" and _main_thread():
            self._old_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        backends = _backend_dir(self.install, self.workdir)
        env = dict(os.environ)
        for key, value in self.install.env.items():
            env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a port taken between choosing and binding: choose again
            http, grpc, metrics = free_ports(3)
            cmd = [
                str(self.install.binary),
                f"--model-repository={self.repository}",
                f"--backend-directory={backends}",
                "--model-control-mode=explicit",
                "--http-address=127.0.0.1",
                f"--http-port={http}",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={grpc}",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={metrics}",
                "--exit-timeout-secs=5",
            ]
            t0 = time.perf_counter()
            with open(self.log, "ab") as logf:
                logf.write(f"$ {' '.join(cmd)}\n".encode())
                logf.flush()
                self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            self.http_port, self.grpc_port = http, grpc
            if self._wait_ready():
                self.start_seconds = time.perf_counter() - t0
                meta = _get_json(f"http://{self.url}/v2") or {}
                self.version = meta.get("version", "?")
                return
            rc = self.proc.poll()
            self.stop()
            if rc is None or "already in use" not in tail(self.log, 40) or attempt == 2:
                why = f"exited with status {rc}" if rc is not None else f"was not ready within {self.ready_timeout:.0f}s"
                raise ServerError(f"tritonserver ({self.install.origin}) {why}:\n{tail(self.log, 15)}", log=self.log)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM the server's process group (the Python-backend stubs too), then SIGKILL."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if p is not None:
            try:  # stubs left in the group after the server exited
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None

    def load(self, model: str, timeout: float = 300.0) -> str | None:
        """Load one model; None when it is ready, else the server's own message."""
        req = urllib.request.Request(f"http://{self.url}/v2/repository/models/{model}/load", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            return _error_text(e.read()).strip().rstrip(";") or f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return f"no answer from the server within {timeout:.0f}s: {e}"
        index = self.index()
        entry = next((m for m in index if m.get("name") == model), {})
        if entry.get("state") != "READY":
            return entry.get("reason") or f"state {entry.get('state')}"
        return None

    def index(self) -> list[dict]:
        req = urllib.request.Request(f"http://{self.url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return []


def _error_text(body: bytes) -> str:
    try:
        return json.loads(body).get("error", "")
    except ValueError:
        return body.decode(errors="replace").strip()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
