"""Progress on stderr: a live rich display on a terminal, plain lines in CI."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """Plain lines: one when a step starts, one when it ends. CI logs read well."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._t: dict[str, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, key: str, text: str) -> None:
        self._t[key] = time.perf_counter()
        print(f"[mlpack] {text} ...", file=self.stream, flush=True)

    def end(self, key: str, status: str, detail: str = "") -> None:
        secs = time.perf_counter() - self._t.pop(key, time.perf_counter())
        print(f"[mlpack] {key}: {status} ({secs:.1f}s){' - ' + detail if detail else ''}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(f"[mlpack] {text}", file=self.stream, flush=True)


class LiveProgress(Progress):
    """A rich live table of steps with spinners, for interactive terminals."""

    def __init__(self, stream=None):
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.rows: dict[str, list[str]] = {}
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)

    def _render(self):
        from rich.spinner import Spinner
        from rich.table import Table

        t = Table.grid(padding=(0, 1))
        for key, (status, text, detail) in self.rows.items():
            if status == "running":
                secs = time.perf_counter() - self._t.get(key, time.perf_counter())
                t.add_row(Spinner("dots"), f"{text}", f"[dim]{secs:.0f}s[/]")
            else:
                mark = {"ok": "[green]✓[/]", "skipped": "[yellow]-[/]"}.get(status, "[red]✗[/]")
                t.add_row(mark, f"{text}", f"[dim]{detail}[/]")
        return t

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def start(self, key: str, text: str) -> None:
        self._t[key] = time.perf_counter()
        self.rows[key] = ["running", text, ""]
        self.live.update(self._render())

    def end(self, key: str, status: str, detail: str = "") -> None:
        secs = time.perf_counter() - self._t.get(key, time.perf_counter())
        row = self.rows.setdefault(key, ["", key, ""])
        row[0], row[2] = status, f"{status} {secs:.1f}s" + (f" - {detail}" if detail else "")
        self.live.update(self._render())

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]")


def make_progress(quiet: bool = False) -> Progress:
    """Live display only on a real terminal outside CI."""
    if quiet:
        return Progress(open(os.devnull, "w"))
    if sys.stderr.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb":
        return LiveProgress()
    return Progress()
