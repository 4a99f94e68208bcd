"""Steps as processes: each step that imports a framework runs in a fresh
interpreter (`python -m toolchain.worker STEP.json`) with a time limit, a log
and a reproduce.sh. Imports no framework.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from toolchain.fsutil import tail


@dataclass
class StepOutcome:
    """What a step process came back with: its result, or why it has none."""

    result: dict | None
    reason: str | None
    log: str  # relative to the build root
    hint: str | None = None
    usage: bool = False  # the step found the recipe or a file it names wrong (exit 2)


class Children:
    """Live step processes, so an interrupt can stop every one of them."""

    def __init__(self):
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def add(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(p)
            if self.stopping:
                kill_group(p)

    def discard(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(p)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for p in self._procs:
                kill_group(p)


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(rc: int) -> str:
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = {"SIGKILL": " (killed: out of memory?)", "SIGSEGV": " (segmentation fault)", "SIGABRT": " (aborted)"}.get(sig, "")
        return f"the step's process died by {sig}{why}"
    return f"the step's process exited with status {rc}"


def write_reproduce(path: Path, step_file: str, target: str | None) -> None:
    """A script that re-runs just this step, into a scratch directory.

    It runs from / : `python -m` puts the working directory on sys.path, and a
    build folder holds `triton/`, which would shadow the `triton` package.
    """
    work = 'work="$(realpath -m "${1:-$(mktemp -d)}")"\n' if target else ""
    path.write_text(
        "#!/bin/sh\n"
        f"# Re-runs the '{target or 'reference'}' step of this build in a fresh interpreter.\n"
        + ("# Writes the artifact to $1 (default: a new temporary directory), never over this build.\n" if target else "")
        + 'root="$(cd "$(dirname "$0")/.." && pwd)" || exit 1\n'
        + work
        + "cd / || exit 1\n"
        + f'exec {shlex.quote(sys.executable)} -m toolchain.worker "$root/logs/{step_file}" --root "$root"'
        + (' --workdir "$work"\n' if target else "\n")
    )
    path.chmod(0o755)


def run_step(step: dict, staging: Path, name: str, timeout: float, children: Children) -> StepOutcome:
    """Run one worker step in its own process and session; wait at most `timeout` seconds."""
    logs = staging / "logs"
    logs.mkdir(exist_ok=True)
    step = {**step, "root": str(staging), "result": f"logs/{name}.result.json"}
    (logs / f"{name}.step.json").write_text(json.dumps(step, indent=2))
    write_reproduce(logs / f"{name}.reproduce.sh", f"{name}.step.json", step.get("target"))
    log = logs / f"{name}.log"
    rel = log.relative_to(staging).as_posix()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolchain.worker", str(logs / f"{name}.step.json")],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            cwd=logs,  # not the user's folder: `-m` puts the cwd first on sys.path
        )  # fmt: skip
        children.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            return StepOutcome(None, f"timed out after {timeout:g}s (raise `timeout:` on the target); log tail:\n{tail(log)}", rel)
        finally:
            children.discard(proc)
    if rc != 0:
        return StepOutcome(None, f"{describe_exit(rc)}; log tail:\n{tail(log)}", rel)
    result = json.loads((staging / step["result"]).read_text())
    if not result.get("ok"):
        return StepOutcome(None, result.get("reason", "failed"), rel, result.get("hint"), result.get("error") == "usage")
    return StepOutcome(result, None, rel)
