"""Steps as processes: each step that imports a framework runs in a process of its own
(`python -m toolchain.worker STEP.json`, or forked by the build's step server, toolchain.stepserver)
with a time limit, a log and a reproduce.sh. Imports no framework.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from toolchain.fsutil import pid_alive, tail
from toolchain.records import StepOutcome, StepResult, StepSpec
from toolchain.stepserver import ForkedStep, StepServer, preload_for


def log_files(name: str) -> list[str]:
    """A step's log, step file and reproduce script, relative to the build root."""
    return [f"logs/{name}{suffix}" for suffix in (".log", ".step.json", ".reproduce.sh")]


class Children:
    """Live step processes, so an interrupt can stop every one of them, and the step server that forks them (if any)."""

    def __init__(self, server: StepServer | None = None):
        self.server = server
        self._procs: set[subprocess.Popen | ForkedStep] = set()
        self._stoppers: list = []  # how to stop steps that are not local processes (Ray tasks)
        self._lock = threading.Lock()
        self.stopping = False

    def add_stopper(self, stop) -> None:
        with self._lock:
            self._stoppers.append(stop)
            if self.stopping:
                stop()

    def add(self, p: subprocess.Popen | ForkedStep) -> None:
        with self._lock:
            self._procs.add(p)
            if self.stopping:
                kill_group(p)

    def discard(self, p: subprocess.Popen | ForkedStep) -> None:
        with self._lock:
            self._procs.discard(p)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for p in self._procs:
                kill_group(p)
            for stop in self._stoppers:
                try:
                    stop()
                except Exception:  # a task already finished, a cluster already gone
                    pass

    def close(self) -> None:
        """Stop the step server (the steps are done, or were stopped)."""
        if self.server is not None:
            self.server.close()


def server_for(staging: Path, recipe) -> StepServer | None:
    """The step server of a local build run of `recipe` in `staging`; None where its steps keep fresh interpreters."""
    preload = preload_for(recipe)
    return StepServer(staging, preload, step_env(staging)) if preload else None


def step_env(staging: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a step of the build in `staging` runs with; `extra`: its own variables (a CPU class's ISA caps)."""
    env = {
        **os.environ,
        **(extra or {}),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "MLPACK_PARENT_PID": str(os.getpid()),
        "MLPACK_STAGING": str(staging),
    }
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def kill_group(p: subprocess.Popen | ForkedStep) -> None:
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


def crash_frames(log: Path, frames: int = 4) -> str | None:
    """Where a step that died by a signal was, from the faulthandler dump in its log (the
    crashing thread's innermost frames: aoti_load_package, say), or None without one."""
    lines = tail(log, 400).splitlines()
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("Fatal Python error")), None)
    if start is None:
        return None
    current = next((i for i in range(start, len(lines)) if lines[i].startswith("Current thread")), None)
    where = [ln.strip() for ln in lines[current + 1 : current + 1 + frames]] if current is not None else []
    return "\n".join([lines[start].strip(), *(f"  {w}" for w in where if w.startswith("File"))])


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


POLL_S = 0.5  # how often a running step's memory is measured


def group_memory(pgid: int) -> int:
    """Bytes the processes of group `pgid` hold (proportional set size: shared pages split, not
    counted once per process; resident set size where smaps_rollup is unreadable)."""
    total = 0
    for pid in _group_pids(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                pass
    return total


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
                if int(fields[2]) == pgid:
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def reap_orphans(staging_prefix: str) -> list[int]:
    """SIGKILL step processes (and what they started) left by a build that died.

    Every step process carries MLPACK_STAGING=<its build's staging folder>, which
    names the build's pid; its children inherit it. A process whose build pid is
    gone is an orphan of a killed build. Reading environ needs the same user.
    """
    killed = []
    marker = f"MLPACK_STAGING={staging_prefix}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(marker):
                try:
                    build_pid = int(var.decode(errors="replace").split(".tmp-", 1)[1].split("-")[0])
                except (IndexError, ValueError):
                    break
                if not pid_alive(build_pid):
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed.append(int(entry.name))
                    except (ProcessLookupError, PermissionError):
                        pass
                break
    return killed


def run_step(step: StepSpec, staging: Path, name: str, timeout: float, children: Children, memory: int | None = None,
             env: dict[str, str] | None = None) -> StepOutcome:  # fmt: skip
    """Run one worker step in its own process and session; stop it after `timeout` seconds or
    when its process group holds more than `memory` bytes. `env`: variables it runs with (a CPU class's ISA caps):
    such a step starts a fresh interpreter; the others are forked by the build's step server where it has one."""
    logs = staging / "logs"
    logs.mkdir(exist_ok=True)
    step = replace(step, root=str(staging), result=f"logs/{name}.result.json")
    (logs / f"{name}.step.json").write_text(json.dumps(step.to_dict(), indent=2))
    write_reproduce(logs / f"{name}.reproduce.sh", f"{name}.step.json", step.target)
    log = logs / f"{name}.log"
    rel = log.relative_to(staging).as_posix()
    server = children.server if not env else None
    env = step_env(staging, env)
    result_file = staging / step.result
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "toolchain.worker", str(logs / f"{name}.step.json")]
    with open(log, "wb") as f:
        proc = server.spawn(cmd, env, logs, f.fileno()) if server is not None else None
        if proc is None:
            if server is not None:  # the server could not start (or stopped): said where the step's output goes
                f.write(f"[mlpack] {server.failed}; this step runs in a fresh interpreter\n".encode())
                f.flush()
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                cwd=logs,  # not the user's folder: `-m` puts the cwd first on sys.path
            )  # fmt: skip
        children.add(proc)
        deadline = time.monotonic() + timeout
        peak = 0
        try:
            while True:
                try:
                    rc = proc.wait(timeout=min(POLL_S, max(deadline - time.monotonic(), 0.01)))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        kill_group(proc)
                        proc.wait()
                        return StepOutcome(None, f"timed out after {timeout:g}s (raise `timeout:` on the target); log tail:\n{tail(log)}", rel)
                    if memory:
                        peak = max(peak, group_memory(proc.pid))
                        if peak > memory:
                            kill_group(proc)
                            proc.wait()
                            return StepOutcome(None, f"stopped: its processes held {peak / 1e6:.0f} MB, over the step's memory limit of "
                                               f"{memory / 1e6:.0f} MB (raise `memory:` on the target); log tail:\n{tail(log)}", rel)  # fmt: skip
        finally:
            kill_group(proc)  # whatever the step started and left behind (compilers, pools) goes with it
            children.discard(proc)
    if getattr(proc, "lost", False):
        return StepOutcome(None, f"the build's step server, which forked this step, died while it ran (the step died with it); log tail:\n{tail(log)}", rel,
                           "build again; MLPACK_STEP_SERVER=0 runs every step in a fresh interpreter instead")  # fmt: skip
    if rc != 0:
        crash = crash_frames(log) if rc < 0 else None  # a native crash: the Python frames it happened under
        return StepOutcome(None, f"{describe_exit(rc)}; " + (f"where:\n{crash}" if crash else f"log tail:\n{tail(log)}"), rel)
    try:
        result = StepResult.from_dict(json.loads(result_file.read_text()), step.step)
    except (OSError, ValueError, KeyError, TypeError):
        return StepOutcome(
            None, f"the step's process exited without a result (did the model's code call sys.exit() or os._exit()?); log tail:\n{tail(log)}", rel
        )
    if result.payload is None:
        return StepOutcome(None, result.reason or "failed", rel, result.hint, result.error == "usage", peak_rss_mb=result.peak_rss_mb, dims=result.dims)
    return StepOutcome(result.payload, None, rel, peak_rss_mb=result.peak_rss_mb)
