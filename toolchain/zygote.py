"""The step server's process: `python -m toolchain.zygote FD MODULE...` (the client is toolchain.stepserver).

It imports MODULE... once, then forks one child per request read from the socket FD. It runs no framework code
itself: a parent that has started no thread pools (OpenMP, oneDNN) or CUDA context forks children that can start
their own. It stays single-threaded: a select loop over the socket and a SIGCHLD wake-up pipe. It ends when the
build closes the socket or dies (its parent changes), killing the process groups of any child still running.
"""

from __future__ import annotations

import array
import atexit
import ctypes
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback

from toolchain import worker
from toolchain.stepserver import MAX_MESSAGE

PARENT_WATCH_S = 0.5


def _preload(modules: list[str]) -> dict[str, str]:
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # not installed, or broken: the steps that need it import it themselves (and report it)
            failed[name] = f"{type(e).__name__}: {e}"[:300]
    return failed


def retitle(argv: list[str]) -> bool:
    """Show `argv` as this process's command line (/proc/PID/cmdline, ps), within the room its own command line has:
    a forked step reads as the `python -m toolchain.worker STEP.json` it stands for."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49 of proc(5)
    except (OSError, IndexError, ValueError):
        return False
    new = b"\0".join(a.encode() for a in argv) + b"\0"
    if len(new) > end - start:
        return False
    ctypes.memmove(start, new + b"\0" * (end - start - len(new)), end - start)
    return True


def _child(req: dict, log_fd: int, closing: list, fds: list[int], led: int, modules: list[str]) -> None:
    """In the forked child: become the step (`python -m toolchain.worker STEP.json`, in its own session); never returns."""
    rc = 1
    try:
        os.setsid()
        os.close(led)  # tells the server the session exists (EOF)
        signal.set_wakeup_fd(-1)
        for thing in closing:  # the server's sockets (and other steps' replies: their EOF must mean their step ended)
            thing.close()
        for fd in fds:
            os.close(fd)
        for sig, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
            signal.signal(sig, handler)  # as a fresh interpreter has them
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        print(f"[mlpack] forked by the build's step server (pid {os.getppid()}), which imported {', '.join(modules)} once", flush=True)
        retitle(req["argv"])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["MLPACK_PARENT_PID"] = str(os.getppid())  # the step dies with the process that forked it
        sys.argv = [worker.__file__, *req["argv"][3:]]
        rc = worker.main(req["argv"][3:])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what a fresh interpreter runs at exit (pools the step started, log handlers)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def serve(ctrl: socket.socket, modules: list[str]) -> None:
    parent = os.getppid()
    failed = _preload(modules)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    ctrl.send(json.dumps({"ready": True, "pid": os.getpid(), "failed": failed}).encode())
    sel = selectors.DefaultSelector()
    sel.register(ctrl, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    running = True
    while running:
        for key, _ in sel.select(PARENT_WATCH_S):
            if key.fileobj is ctrl:
                running = _accept(ctrl, children, [ctrl, sel], [wake_r, wake_w], modules)
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
        _reap(children)
        if os.getppid() != parent:  # the build died (even by SIGKILL): its steps go with it
            running = False
    for pid in list(children):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    while children:
        _reap(children, block=True)


def _accept(ctrl: socket.socket, children: dict[int, socket.socket], closing: list, fds: list[int], modules: list[str]) -> bool:
    """Read one request and fork its child; False when the build closed the socket."""
    got = array.array("i")
    try:
        msg, anc, _, _ = ctrl.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(2 * got.itemsize))
    except OSError:
        return False
    if not msg:
        return False
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got.frombytes(data[: len(data) - (len(data) % got.itemsize)])
    if len(got) != 2:
        for fd in got:
            os.close(fd)
        return True
    reply, log_fd = socket.socket(fileno=got[0]), got[1]
    try:
        req = json.loads(msg)
        sys.stdout.flush()
        sys.stderr.flush()
        led_r, led_w = os.pipe()
        pid = os.fork()
    except (ValueError, OSError) as e:
        reply.send(json.dumps({"error": str(e)}).encode())
        reply.close()
        os.close(log_fd)
        return True
    if pid == 0:
        os.close(led_r)
        _child(req, log_fd, [reply, *closing, *children.values()], fds, led_w, modules)
    os.close(led_w)
    os.read(led_r, 1)  # the child leads its own session before its pid is handed out: killpg(pid) always reaches it
    os.close(led_r)
    os.close(log_fd)
    children[pid] = reply
    try:
        reply.send(json.dumps({"pid": pid}).encode())
    except OSError:  # the build stopped waiting: the step is not wanted
        os.killpg(pid, signal.SIGKILL)
    return True


def _reap(children: dict[int, socket.socket], block: bool = False) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = children.pop(pid, None)
        if reply is not None:
            try:
                reply.send(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode())
            except OSError:
                pass
            reply.close()
        if block:
            return


def main(argv: list[str]) -> int:
    """argv: the socket's descriptor, the modules to import, then blank room for the steps' command lines."""
    ctrl = socket.socket(fileno=int(argv[0]))
    modules = [a for a in argv[1:] if a.strip()]
    retitle([sys.executable, "-m", "toolchain.zygote", f"(mlpack step server; imported: {' '.join(modules)})"])
    try:
        serve(ctrl, modules)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
