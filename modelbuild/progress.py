"""Progress as a stream of events, and the renderers that show it (BuildKit's model).

The solver emits :class:`Event` objects; it never prints. Renderers:

* ``plain``: one line per event, for CI logs (``#3 pack model.safetensors``, ``#3 CACHED``,
  ``#3 DONE 1.2s``), with byte counts now and then on long steps;
* ``tty``: live progress bars (rich), the default on a terminal;
* ``json``: one JSON object per event, for scripts;
* ``quiet``: nothing but errors.

All renderers write to standard error; standard output is kept for results (``--json``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable

from modelbuild.units import human_size

MODES = ("auto", "tty", "plain", "quiet", "json")


@dataclass(slots=True)
class Event:
    kind: str  # "start", "progress", "log", "cached", "done", "error", "warning", "result"
    step: int  # 1-based step number; 0 for build-level messages
    label: str = ""
    current: int = 0
    total: int | None = None
    message: str = ""
    duration: float = 0.0
    time: float = field(default_factory=time.time)
    # "result" events only: what the command produced (``--json``'s document), the last event
    data: dict[str, Any] | None = None


Renderer = Callable[[Event], None]


class Emitter:
    """Fans events out to a renderer; thread-safe; throttles byte-progress events."""

    def __init__(self, renderer: Renderer, *, interval: float = 0.1) -> None:
        self._renderer = renderer
        self._lock = threading.Lock()
        self._interval = interval
        self._last: dict[int, float] = {}

    def emit(self, event: Event) -> None:
        if event.kind == "progress":
            now = time.monotonic()
            last = self._last.get(event.step, 0.0)
            final = event.total is not None and event.current >= event.total
            if now - last < self._interval and not final:
                return
            self._last[event.step] = now
        with self._lock:
            self._renderer(event)

    def warn(self, message: str) -> None:
        self.emit(Event("warning", 0, message=message))

    def close(self) -> None:
        close = getattr(self._renderer, "close", None)
        if close:
            close()


def _human(n: float) -> str:
    return human_size(n, digits=2)


class PlainRenderer:
    """BuildKit's plain progress: stable, greppable lines."""

    def __init__(self, out: IO[str], *, byte_interval: float = 2.0) -> None:
        self.out = out
        self.byte_interval = byte_interval
        self._last_bytes: dict[int, float] = {}

    def __call__(self, e: Event) -> None:
        if e.kind == "start":
            self._last_bytes[e.step] = time.monotonic()
            self._line(f"#{e.step} {e.label}")
        elif e.kind == "progress":
            # byte counts only for long steps, every few seconds: CI logs stay short
            now = time.monotonic()
            if now - self._last_bytes.get(e.step, now) < self.byte_interval:
                return
            self._last_bytes[e.step] = now
            total = f" / {_human(e.total)}" if e.total else ""
            self._line(f"#{e.step} {_human(e.current)}{total}")
        elif e.kind == "log":
            self._line(f"#{e.step} {e.message}")
        elif e.kind == "cached":
            self._line(f"#{e.step} {e.label}\n#{e.step} CACHED")
        elif e.kind == "done":
            self._line(f"#{e.step} DONE {e.duration:.1f}s")
        elif e.kind == "error":
            self._line(f"#{e.step} ERROR: {e.message}")
        elif e.kind == "warning":
            self._line(f"WARNING: {e.message}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class JsonRenderer:
    """One JSON object per event, on its own line."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, e: Event) -> None:
        doc = {k: v for k, v in asdict(e).items() if v not in (None, "", 0, 0.0) or k in ("kind", "step")}
        self.out.write(json.dumps(doc, sort_keys=True) + "\n")
        self.out.flush()


class QuietRenderer:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, e: Event) -> None:
        if e.kind == "error":
            self.out.write(f"#{e.step} ERROR: {e.message}\n")


class TtyRenderer:
    """Live bars for running steps; finished steps scroll above them."""

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=out, highlight=False)
        self.progress = Progress(
            TextColumn("[bold blue]#{task.fields[step]}[/] {task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.tasks: dict[int, int] = {}

    def __call__(self, e: Event) -> None:
        p = self.progress
        if e.kind == "start":
            self.tasks[e.step] = p.add_task(e.label, total=None, step=e.step, start=True)
        elif e.kind == "progress" and e.step in self.tasks:
            p.update(self.tasks[e.step], completed=e.current, total=e.total)
        elif e.kind == "cached":
            p.console.print(f"[dim]#{e.step} {e.label}[/]  [cyan]CACHED[/]")
        elif e.kind == "done":
            task = self.tasks.pop(e.step, None)
            if task is not None:
                label = p.tasks[[t.id for t in p.tasks].index(task)].description
                p.remove_task(task)
                p.console.print(f"#{e.step} {label}  [green]DONE[/] {e.duration:.1f}s")
        elif e.kind == "log":
            p.console.print(f"#{e.step} {e.message}")
        elif e.kind == "error":
            task = self.tasks.pop(e.step, None)
            if task is not None:
                p.remove_task(task)
            p.console.print(f"[red]#{e.step} ERROR: {e.message}[/]")
        elif e.kind == "warning":
            p.console.print(f"[yellow]WARNING:[/] {e.message}")

    def close(self) -> None:
        self.progress.stop()


def make_renderer(mode: str, out: IO[str] | None = None) -> Renderer:
    out = out or sys.stderr
    if mode == "auto":
        mode = "tty" if out.isatty() else "plain"
    if mode == "tty":
        return TtyRenderer(out)
    if mode == "json":
        return JsonRenderer(out)
    if mode == "quiet":
        return QuietRenderer(out)
    return PlainRenderer(out)
