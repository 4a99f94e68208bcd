"""A build's step server: one process that imports the build's frameworks once and forks a child per step.

Every step runs in a process of its own (toolchain.steps), and a fresh interpreter pays for its imports each time:
torch 2-3 s, Inductor 3-4 s more, transformers 5 s on a 2-core Zen 1, twice that while the other core is busy. A
build of five targets paid them six times. The step server (`python -m toolchain.zygote`) imports them once and
forks each step from itself: the child is the same `toolchain.worker` step, in its own session (its compilers and
pools in its process group), with the step's log, working folder and environment, killed with its group on a timeout
or over its memory limit, exactly as before. Only what cannot be forked safely keeps a fresh interpreter:
- TensorFlow sources (TensorFlow starts its own threads when imported);
- CUDA targets (a CUDA context does not survive a fork);
- steps that run with their own environment (a CPU class's ISA caps, read when torch loads);
- `reproduce.sh`, and every step when MLPACK_STEP_SERVER=0 or the server cannot start.

Wire: a SOCK_SEQPACKET socket pair. The client sends one JSON message per step ({argv, env, cwd}) with two file
descriptors (the step's log and the step's own reply socket); the server answers on the reply socket {"pid": N} once
forked and {"rc": R} once the child has exited (R as subprocess reports it: -N for a signal). Imports no framework.
"""

from __future__ import annotations

import array
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolchain import kinds

ENV_SWITCH = "MLPACK_STEP_SERVER"  # "0": every step in a fresh interpreter
READY_TIMEOUT = 120.0  # seconds for the server's imports (transformers under load: ~15 s)
MAX_MESSAGE = 1 << 20

# A factory that imports transformers: the step server preloads it as well (found in the text, never run)
TRANSFORMERS_IMPORT = re.compile(r"^\s*(?:import transformers|from transformers[\s.])", re.M)


def preload_for(recipe) -> list[str]:
    """The modules every step of this recipe's build imports, in import order; [] when its steps must not be forked."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or recipe.source.framework != "pytorch":
        return []
    if any(getattr(t, "device", "cpu") == "cuda" for t in recipe.targets):
        return []
    mods = ["torch"]
    if recipe.source.transformers or _factory_imports_transformers(recipe):
        mods.append("transformers")
    for name in sorted({t.kind for t in recipe.targets}):
        mods += [m for m in kinds.get(name).preload if m not in mods]
    return mods


def _factory_imports_transformers(recipe) -> bool:
    """The factory's own file imports transformers (what it imports in turn is not followed)."""
    factory = next((f for f in recipe.source.files(recipe.root) if f.key == "factory"), None)
    try:
        return factory is not None and bool(TRANSFORMERS_IMPORT.search(factory.path.read_text(errors="replace")))
    except OSError:
        return False


class ForkedStep:
    """A step forked by the server; Popen's shape where toolchain.steps uses it (pid, wait, poll, returncode)."""

    def __init__(self, pid: int, reply: socket.socket, args: list[str]):
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.lost = False  # the server died before it reported the step's exit
        self._reply = reply

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self._reply.settimeout(timeout)
        try:
            data = self._reply.recv(MAX_MESSAGE)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0 (poll)
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        except OSError:
            data = b""
        # No answer: the server died (its children die with it, by their parent-death signal)
        self.lost = not data
        self.returncode = int(json.loads(data)["rc"]) if data else -9
        self._reply.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0.0)
        except subprocess.TimeoutExpired:
            return None


@dataclass
class StepServer:
    """The step server of one build run (one staging folder); started on the first step, closed with the run."""

    staging: Path
    preload: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    failed: str | None = None  # why steps run in fresh interpreters instead
    _ctrl: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _start(self) -> bool:
        if self.proc is not None or self.failed is not None:
            return self.failed is None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        logs = self.staging / "logs"
        logs.mkdir(exist_ok=True)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "toolchain.zygote", str(theirs.fileno()), *self.preload, " " * self._room()],
                pass_fds=(theirs.fileno(),), env=self.env, cwd=logs, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as e:
            self.failed = f"the step server did not start: {e}"
            ours.close()
            return False
        finally:
            theirs.close()
        ours.settimeout(READY_TIMEOUT)
        try:
            ready = json.loads(ours.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as e:
            ready = {"error": str(e)}
        if not ready.get("ready"):
            self.failed = f"the step server did not come up ({ready.get('error') or 'it exited'})"
            ours.close()
            self._stop()
            return False
        ours.settimeout(None)
        self._ctrl = ours
        return True

    def _room(self) -> int:
        """Bytes of command line the server keeps for its steps' (`python -m toolchain.worker <staging>/logs/NAME.step.json`)."""
        return len(sys.executable) + 2 * len(str(self.staging)) + 1024

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log_fd: int) -> ForkedStep | None:
        """Fork `argv` (python -m toolchain.worker STEP) from the server; None: run it in a fresh interpreter instead."""
        with self._lock:
            if not self._start():
                return None
            mine, reply = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            msg = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
            try:
                self._ctrl.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [reply.fileno(), log_fd]))])
            except OSError as e:
                self.failed = f"the step server stopped answering: {e}"
                mine.close()
                return None
            finally:
                reply.close()
        mine.settimeout(30.0)
        try:
            answer = json.loads(mine.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError):
            answer = {}
        if "pid" not in answer:
            mine.close()
            self.failed = f"the step server could not fork a step ({answer.get('error') or 'no answer'})"
            return None
        return ForkedStep(int(answer["pid"]), mine, argv)

    def close(self) -> None:
        """Stop the server: closing its socket ends it; it kills any child still running first."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self.proc is not None and self.proc.poll() is None:
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
