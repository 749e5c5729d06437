"""Progress as a stream of events, and the renderers that show it (BuildKit's model).

The solver emits :class:`Event` objects; it never prints. Renderers:

* ``plain``: one line per event, for CI logs (``#3 pack model.safetensors``, ``#3 CACHED``,
  ``#3 DONE 1.2s``), and every few seconds of a long step a line with how far it is, its
  rate and its ETA (``#3 412.00 MB / 1.10 GB 95.00 MB/s ETA 7s``);
* ``tty``: live progress bars (rich), the default on a terminal: amount, rate, elapsed, ETA;
* ``json``: one JSON object per event, one per line, nothing else (the command's result is
  the last event, ``{"kind": "result", "data": {…}}``);
* ``quiet``: nothing but errors.

All renderers write to standard error; standard output is kept for results (``--json``).

Progress counts a *unit*: ``bytes`` (the default: reads, writes, transfers) or what a step
does instead (``params`` for a quantizer's elements, ``tensors``…). The :class:`Emitter`
stamps every progress event with its step's rate (units per second, over the last few
seconds) and ETA, so that every renderer shows the same numbers, and it throttles them
per step without ever losing a step's last count.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
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
    # progress: what current/total count ("bytes", "params", "tensors"…)
    unit: str = "bytes"
    # progress: units per second and seconds left, stamped by the Emitter (None: not known yet)
    rate: float | None = None
    eta: float | None = None


Renderer = Callable[[Event], None]


class _Meter:
    """A step's rate over a sliding window of its progress reports, and the ETA it gives.

    The window starts when the work does: reports that still count 0 (the start event, a
    ``set_total`` before the first item is done) only move the start, so waiting for a lock or
    planning never dilutes the rate."""

    WINDOW = 10.0  # seconds of history the rate is taken over

    def __init__(self, now: float) -> None:
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])

    def add(self, now: float, current: int) -> None:
        samples = self.samples
        last = samples[-1][1]
        if current < last or (current == last and len(samples) == 1):
            # nothing done yet, or the count went back (a retry): the clock starts now
            samples.clear()
            samples.append((now, current))
            return
        samples.append((now, current))
        while len(samples) > 2 and samples[1][0] <= now - self.WINDOW:
            samples.popleft()  # keep one sample at or before the window's start

    def rate(self) -> float | None:
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 and c1 >= c0 else None

    def eta(self, current: int, total: int | None, rate: float | None) -> float | None:
        if total is None:
            return None
        if current >= total:
            return 0.0
        return (total - current) / rate if rate else None


class Emitter:
    """Fans events out to a renderer; thread-safe.

    Progress events are stamped with their step's rate and ETA (:class:`_Meter`) and
    throttled per step to one every *interval* seconds: a step's throttle never holds back
    another's; the event that first reaches the total always goes out; and the latest event
    held back goes out with the step's next report after the interval, or just before its
    ``done`` or ``error``, so the last count shown is the true one. *clock*: for tests."""

    def __init__(self, renderer: Renderer, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._renderer = renderer
        self._lock = threading.Lock()
        self._interval = interval
        self._clock = clock
        self._last: dict[int, tuple[float, int]] = {}  # step → (when, count) of its last progress shown
        self._held: dict[int, Event] = {}  # step → its latest progress event not sent yet
        self._meters: dict[int, _Meter] = {}

    def emit(self, event: Event) -> None:
        with self._lock:
            step = event.step
            if event.kind == "progress":
                now = self._clock()
                meter = self._meters.get(step)
                if meter is None:
                    meter = self._meters[step] = _Meter(now)
                meter.add(now, event.current)
                event.rate = meter.rate()
                event.eta = meter.eta(event.current, event.total, event.rate)
                last = self._last.get(step)
                if last is not None and now - last[0] < self._interval:
                    total = event.total
                    completes = total is not None and event.current >= total > last[1]
                    if not completes:
                        self._held[step] = event
                        return
                self._last[step] = (now, event.current)
                self._held.pop(step, None)
            elif event.kind == "start":
                self._meters[step] = _Meter(self._clock())
                self._last.pop(step, None)
                self._held.pop(step, None)
            elif event.kind in ("done", "error", "cached"):
                held = self._held.pop(step, None)
                if held is not None and event.kind != "cached":
                    self._renderer(held)
                self._meters.pop(step, None)
                self._last.pop(step, None)
            self._renderer(event)

    def warn(self, message: str) -> None:
        self.emit(Event("warning", 0, message=message))

    def close(self) -> None:
        with self._lock:  # counts still held back (a step that ended without done) go out first
            held, self._held = list(self._held.values()), {}
            for event in held:
                self._renderer(event)
        close = getattr(self._renderer, "close", None)
        if close:
            close()


# -- numbers for people ----------------------------------------------------------------------

_SI = ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k"))
_SYMBOL = {"params": "param"}  # what follows an SI prefix: 412.00 Mparam
_SCALED = ("bytes", "params")  # other units (tensors, files) are counted one by one


def format_amount(n: float, unit: str = "bytes", digits: int = 2) -> str:
    """*n* units for people: ``412.00 MB``, ``1.10 Gparam``, ``12 tensors``."""
    if unit == "bytes":
        return human_size(n, digits=digits)
    symbol = _SYMBOL.get(unit, unit)
    for scale, prefix in _SI:
        if abs(n) >= scale and unit in _SCALED:
            return f"{n / scale:.{digits}f} {prefix}{symbol}"
    return f"{n:.0f} {unit}" if float(n).is_integer() or abs(n) >= 100 else f"{n:.1f} {unit}"


def format_rate(rate: float, unit: str = "bytes", digits: int = 2) -> str:
    """``95.00 MB/s``, ``12.30 Mparam/s``, ``3 tensors/s``."""
    return format_amount(rate, unit, digits) + "/s"


def format_fraction(current: float, total: float | None, unit: str = "bytes") -> str:
    """``37.7/700.5 MB``, ``1.1/175.1 Mparam``, ``12/80 tensors``: both in the total's scale,
    short enough for a bar's column."""
    ref = total if total else current
    scale, prefix = next(((s, p) for s, p in _SI if abs(ref) >= s and unit in _SCALED), (1, ""))
    if unit == "bytes":
        symbol = prefix + "B"
    else:
        symbol = prefix + _SYMBOL.get(unit, unit) if prefix else unit
    digits = 1 if prefix else 0
    text = f"{current / scale:.{digits}f}"
    if total is not None:
        text += f"/{total / scale:.{digits}f}"
    return f"{text} {symbol}"


def format_eta(seconds: float) -> str:
    """``7s``, ``1m05s``, ``2h03m``: short, and stable for grep."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_text(e: Event) -> str:
    """``412.00 MB / 1.10 GB 95.00 MB/s ETA 7s``: what is done, of what, how fast, how long
    is left (the parts not known yet are left out)."""
    text = format_amount(e.current, e.unit)
    if e.total is not None:
        text += f" / {format_amount(e.total, e.unit)}"
    if e.rate is not None:
        text += f" {format_rate(e.rate, e.unit)}"
    if e.eta is not None and e.total is not None and e.current < e.total:
        text += f" ETA {format_eta(e.eta)}"
    return text


# -- renderers -------------------------------------------------------------------------------

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
            # how far a long step is, every few seconds: CI logs stay short
            now = time.monotonic()
            if now - self._last_bytes.get(e.step, now) < self.byte_interval:
                return
            self._last_bytes[e.step] = now
            self._line(f"#{e.step} {progress_text(e)}")
        elif e.kind == "log":
            self._line(f"#{e.step} {e.message}")
        elif e.kind == "cached":
            self._line(f"#{e.step} {e.label}\n#{e.step} CACHED")
        elif e.kind == "done":
            self._last_bytes.pop(e.step, None)
            self._line(f"#{e.step} DONE {e.duration:.1f}s")
        elif e.kind == "error":
            self._last_bytes.pop(e.step, None)
            self._line(f"#{e.step} ERROR: {e.message}")
        elif e.kind == "warning":
            self._line(f"WARNING: {e.message}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class JsonRenderer:
    """One JSON object per event, on its own line, flushed: nothing else is written.

    Every object has ``kind``, ``step`` and ``time``; the other fields appear where they
    mean something: ``label``, ``message``, ``duration`` when set; progress events always
    have ``current`` and ``unit``, and ``total``, ``rate`` (units per second) and ``eta``
    (seconds) once known; the ``result`` event has ``data``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, e: Event) -> None:
        doc: dict[str, Any] = {"kind": e.kind, "step": e.step, "time": e.time}
        if e.label:
            doc["label"] = e.label
        if e.kind == "progress":
            doc["current"] = e.current
            doc["unit"] = e.unit
            if e.rate is not None:
                doc["rate"] = round(e.rate, 1)
            if e.eta is not None:
                doc["eta"] = round(e.eta, 1)
        elif e.current:
            doc["current"] = e.current
        if e.total is not None:
            doc["total"] = e.total
        if e.message:
            doc["message"] = e.message
        if e.duration:
            doc["duration"] = e.duration
        if e.data is not None or e.kind == "result":
            doc["data"] = e.data if e.data is not None else {}
        # default=str: a value JSON has no type for (a Path in a result) is written as text,
        # never as a traceback in the middle of the stream
        self.out.write(json.dumps(doc, sort_keys=True, default=str) + "\n")
        self.out.flush()


class QuietRenderer:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, e: Event) -> None:
        if e.kind == "error":
            self.out.write(f"#{e.step} ERROR: {e.message}\n")


def _tty_columns() -> tuple[Any, ...]:
    """rich columns that read the Emitter's numbers (task fields ``unit``, ``rate``,
    ``deadline``) rather than rich's own estimate, which starts at the first update and so
    reads terabytes per second when a step's first two updates come together."""
    from rich.progress import ProgressColumn, TimeRemainingColumn
    from rich.table import Column
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(format_fraction(task.completed, task.total, task.fields.get("unit", "bytes")),
                        style="progress.download")

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            rate = task.fields.get("rate")
            if rate is None:
                return Text("?", style="progress.data.speed")
            return Text(format_rate(rate, task.fields.get("unit", "bytes"), 1), style="progress.data.speed")

    class EtaColumn(TimeRemainingColumn):
        """``ETA 0:00:07``, counting down between events from the Emitter's last estimate."""

        max_refresh = None  # the countdown moves every second

        def render(self, task: Any) -> Text:
            deadline = task.fields.get("deadline")
            if task.total is None or deadline is None:
                return Text("ETA -:--:--", style="progress.remaining")
            minutes, seconds = divmod(int(max(0.0, deadline - time.monotonic()) + 0.5), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"ETA {hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return (AmountColumn(table_column=Column(no_wrap=True)), RateColumn(table_column=Column(no_wrap=True)),
            EtaColumn(table_column=Column(no_wrap=True)))


class TtyRenderer:
    """Live bars for running steps (amount, rate, elapsed, ETA); finished steps scroll above them."""

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        amount, rate, eta = _tty_columns()
        self.console = Console(file=out, highlight=False)
        self.progress = Progress(
            TextColumn("[bold blue]#{task.fields[step]}[/] {task.description}"),
            BarColumn(),
            amount,
            rate,
            TimeElapsedColumn(),
            eta,
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.tasks: dict[int, int] = {}

    def __call__(self, e: Event) -> None:
        p = self.progress
        if e.kind == "start":
            self.tasks[e.step] = p.add_task(e.label, total=e.total, step=e.step, start=True, unit=e.unit,
                                            rate=None, deadline=None)
        elif e.kind == "progress" and e.step in self.tasks:
            deadline = time.monotonic() + e.eta if e.eta is not None else None
            p.update(self.tasks[e.step], completed=e.current, total=e.total, unit=e.unit, rate=e.rate,
                     deadline=deadline)
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
