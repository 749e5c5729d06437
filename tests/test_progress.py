"""Progress renderers: BuildKit's plain lines, JSON events, and live bars on a terminal."""

from __future__ import annotations

import io
import json

from modelbuild.progress import Emitter, Event, JsonRenderer, PlainRenderer, TtyRenderer, make_renderer


def _feed(renderer):
    em = Emitter(renderer, interval=0)
    em.emit(Event("cached", 1, "load build context /x"))
    em.emit(Event("start", 3, "pack model.safetensors"))
    em.emit(Event("progress", 3, "pack model.safetensors", 50, 100))
    em.emit(Event("done", 3, "pack model.safetensors", duration=1.23))
    em.emit(Event("warning", 0, message="PARAMSIZE '16' does not follow the grammar"))
    em.emit(Event("error", 4, "pack b", message="disk full"))
    em.close()


def test_plain_is_buildkit_style():
    out = io.StringIO()
    _feed(PlainRenderer(out, byte_interval=3600))
    assert out.getvalue().splitlines() == [
        "#1 load build context /x",
        "#1 CACHED",
        "#3 pack model.safetensors",
        "#3 DONE 1.2s",
        "WARNING: PARAMSIZE '16' does not follow the grammar",
        "#4 ERROR: disk full",
    ]


def test_json_is_one_event_per_line():
    out = io.StringIO()
    _feed(JsonRenderer(out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["kind"] for e in events] == ["cached", "start", "progress", "done", "warning", "error"]
    assert events[2]["current"] == 50 and events[2]["total"] == 100


def test_tty_renders_bars_and_finished_steps():
    out = io.StringIO()
    renderer = TtyRenderer(out)
    renderer.console.force_terminal = True
    _feed(renderer)
    text = out.getvalue()
    assert "#3 pack model.safetensors" in text and "DONE" in text and "CACHED" in text and "disk full" in text


def test_auto_is_plain_when_not_a_terminal():
    assert isinstance(make_renderer("auto", io.StringIO()), PlainRenderer)
