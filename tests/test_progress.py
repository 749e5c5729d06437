"""Progress renderers: BuildKit's plain lines, JSON events, and live bars on a terminal; the
Emitter's rate, ETA and throttle; and a real quantize build that reports as it goes."""

from __future__ import annotations

import io
import json

import pytest

from modelbuild.progress import (
    Emitter,
    Event,
    JsonRenderer,
    PlainRenderer,
    QuietRenderer,
    TtyRenderer,
    format_eta,
    make_renderer,
    progress_text,
)
from support import age


def _feed(renderer):
    em = Emitter(renderer, interval=0)
    em.emit(Event("cached", 1, "load build context /x"))
    em.emit(Event("start", 3, "pack model.safetensors"))
    em.emit(Event("progress", 3, "pack model.safetensors", 50, 100))
    em.emit(Event("done", 3, "pack model.safetensors", duration=1.23))
    em.emit(Event("warning", 0, message="PARAMSIZE '16' does not follow the grammar"))
    em.emit(Event("error", 4, "pack b", message="disk full"))
    em.emit(Event("result", 0, data={"digest": "sha256:abc", "tags": ["m:latest"]}))
    em.close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recorded(interval: float = 0.1) -> tuple[Emitter, list[Event], Clock]:
    seen: list[Event] = []
    clock = Clock()
    return Emitter(seen.append, interval=interval, clock=clock), seen, clock


# -- renderers --------------------------------------------------------------------------------

def test_plain_is_buildkit_style_and_ignores_the_result():
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


def test_plain_progress_lines_give_rate_and_eta():
    out = io.StringIO()
    plain = PlainRenderer(out, byte_interval=0)
    plain(Event("start", 5, "quantize q8_0"))
    plain(Event("progress", 5, "quantize q8_0", 412_000_000, 1_100_000_000, rate=95e6, eta=7.2))
    plain(Event("progress", 5, "quantize q8_0", 412_000_000, 1_100_000_000, unit="params", rate=95e6, eta=72))
    plain(Event("progress", 5, "quantize q8_0", 3, None, unit="tensors"))  # no total, no rate yet
    assert out.getvalue().splitlines()[1:] == [
        "#5 412.00 MB / 1.10 GB 95.00 MB/s ETA 7s",
        "#5 412.00 Mparam / 1.10 Gparam 95.00 Mparam/s ETA 1m12s",
        "#5 3 tensors",
    ]


def test_eta_reads_short():
    assert [format_eta(s) for s in (0, 6.6, 59.4, 65, 3599, 7380)] == ["0s", "7s", "59s", "1m05s", "59m59s",
                                                                        "2h03m"]
    done = Event("progress", 1, current=10, total=10, rate=5.0, eta=0.0)
    assert "ETA" not in progress_text(done)


def test_json_is_one_event_per_line_and_the_result_is_the_last():
    out = io.StringIO()
    _feed(JsonRenderer(out))
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # every line parses: nothing but NDJSON
    assert all(isinstance(e, dict) and {"kind", "step", "time"} <= set(e) for e in events)
    assert [e["kind"] for e in events] == ["cached", "start", "progress", "done", "warning", "error", "result"]
    assert events[2]["current"] == 50 and events[2]["total"] == 100 and events[2]["unit"] == "bytes"
    assert events[-1]["data"] == {"digest": "sha256:abc", "tags": ["m:latest"]}


def test_json_progress_carries_unit_rate_and_eta():
    out = io.StringIO()
    json_renderer = JsonRenderer(out)
    json_renderer(Event("progress", 3, "quantize q8_0", 0, 100, unit="params"))
    json_renderer(Event("progress", 3, "quantize q8_0", 40, 100, unit="params", rate=20.0, eta=3.04))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["current"] == 0 and "rate" not in first and "eta" not in first  # not known yet
    assert (second["unit"], second["rate"], second["eta"]) == ("params", 20.0, 3.0)


def test_quiet_shows_only_errors():
    out = io.StringIO()
    _feed(QuietRenderer(out))
    assert out.getvalue() == "#4 ERROR: disk full\n"


def test_tty_renders_bars_and_finished_steps():
    out = io.StringIO()
    renderer = TtyRenderer(out)
    renderer.console.force_terminal = True
    _feed(renderer)
    text = out.getvalue()
    assert "#3 pack model.safetensors" in text and "DONE" in text and "CACHED" in text and "disk full" in text
    assert "sha256:abc" not in text  # the result event is not the renderer's to show


def test_tty_bar_shows_amount_in_its_unit_rate_and_eta():
    from rich.console import Console

    renderer = TtyRenderer(io.StringIO())
    renderer(Event("start", 3, "quantize q4_k_m"))
    renderer(Event("progress", 3, "quantize q4_k_m", 40_000_000, 175_000_000, unit="params", rate=12.5e6, eta=10.8))
    screen = Console(file=io.StringIO(), width=160)
    screen.print(renderer.progress.get_renderable())  # what the live display shows now
    renderer.close()
    text = screen.file.getvalue()
    assert "40.0/175.0 Mparam" in text and "12.5 Mparam/s" in text
    assert "ETA 0:00:1" in text  # 10.8 s, counting down
    assert "TB/s" not in text and "bytes" not in text


def test_auto_is_plain_when_not_a_terminal():
    assert isinstance(make_renderer("auto", io.StringIO()), PlainRenderer)


# -- the Emitter: rate, ETA, throttle ---------------------------------------------------------

def test_rate_and_eta_come_from_the_work_not_the_wait():
    em, seen, clock = _recorded(interval=0)
    em.emit(Event("start", 2, "quantize"))
    clock.now += 30  # waiting for the transform lock, planning: no work yet
    em.emit(Event("progress", 2, "quantize", 0, 1000, unit="params"))  # set_total
    clock.now += 2
    em.emit(Event("progress", 2, "quantize", 200, 1000, unit="params"))
    last = seen[-1]
    assert last.rate == pytest.approx(100.0) and last.eta == pytest.approx(8.0)


def test_rate_follows_the_last_seconds():
    em, seen, clock = _recorded(interval=0)
    em.emit(Event("start", 2, "x"))
    done = 0
    for _ in range(20):  # slow: 10 units/s for 20 s
        clock.now += 1
        done += 10
        em.emit(Event("progress", 2, "x", done, 10_000))
    for _ in range(20):  # then fast: 100 units/s
        clock.now += 1
        done += 100
        em.emit(Event("progress", 2, "x", done, 10_000))
    assert seen[-1].rate == pytest.approx(100.0)
    assert seen[-1].eta == pytest.approx((10_000 - done) / 100.0)


def test_throttle_holds_back_but_never_drops_the_last_count():
    em, seen, clock = _recorded(interval=0.1)
    em.emit(Event("start", 4, "x"))
    for i in range(1, 51):  # 50 reports in 50 ms
        clock.now += 0.001
        em.emit(Event("progress", 4, "x", i, None))
    shown = [e.current for e in seen if e.kind == "progress"]
    assert shown == [1]  # the rest came within the interval
    em.emit(Event("done", 4, "x", duration=0.05))
    assert [(e.kind, e.current) for e in seen][-2:] == [("progress", 50), ("done", 0)]


def test_close_sends_what_the_throttle_held():
    em, seen, clock = _recorded(interval=10)
    em.emit(Event("progress", 4, "x", 1, None))
    em.emit(Event("progress", 4, "x", 2, None))  # held: the step never says done (a crash)
    em.close()
    assert [e.current for e in seen] == [1, 2]


def test_throttle_lets_the_completing_report_through_once():
    em, seen, clock = _recorded(interval=10)
    em.emit(Event("progress", 4, "x", 1, 100))
    em.emit(Event("progress", 4, "x", 50, 100))  # held
    em.emit(Event("progress", 4, "x", 100, 100))  # completes: shown at once
    em.emit(Event("progress", 4, "x", 120, 100))  # an overcount: throttled like any other
    assert [e.current for e in seen] == [1, 100]


def test_throttle_is_per_step_so_busy_steps_do_not_starve_each_other():
    em, seen, clock = _recorded(interval=0.1)
    for i in range(1, 1001):  # two steps reporting 1000 times a second each, interleaved
        clock.now += 0.001
        em.emit(Event("progress", 1, "a", i, 1000_000))
        em.emit(Event("progress", 2, "b", i, 1000_000))
    per_step = {s: [e.current for e in seen if e.step == s] for s in (1, 2)}
    assert 9 <= len(per_step[1]) <= 11 and 9 <= len(per_step[2]) <= 11  # ~ one per 0.1 s each
    assert all(a < b for a, b in zip(per_step[1], per_step[1][1:]))


def test_step_context_reports_from_threads_in_order(tmp_path):
    """Worker threads advance one step at once: no count is lost, and the counts go out increasing."""
    import threading
    from types import SimpleNamespace

    from modelbuild.ops.base import StepContext

    seen: list[Event] = []
    env = SimpleNamespace(emitter=Emitter(seen.append, interval=0))
    ctx = StepContext(env, 7, SimpleNamespace(label="quantize"))
    ctx.set_total(8 * 500, unit="params")

    def work():
        for _ in range(500):
            ctx.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = [e.current for e in seen]
    assert counts[0] == 0 and seen[0].total == 4000 and seen[0].unit == "params"
    assert counts[-1] == 4000 and counts == sorted(counts)


def test_transform_context_passes_the_unit_only_to_callbacks_that_take_it(tmp_path):
    from modelbuild.weights import TransformContext

    got: list[tuple] = []
    TransformContext(tmp_path, set_total=lambda n, unit="bytes": got.append((n, unit))).set_total(5, unit="params")
    TransformContext(tmp_path, set_total=lambda n: got.append((n,))).set_total(6, unit="params")
    assert got == [(5, "params"), (6,)]


def test_run_threads_reports_each_item_as_it_finishes(tmp_path):
    """A slow first item does not hold back the reports of the items done meanwhile."""
    import threading

    from modelbuild.weights import TransformContext

    release = threading.Event()
    reported: list[int] = []

    def advance(n: int) -> None:
        reported.append(n)
        if len(reported) == 5:
            release.set()  # the slow item may finish once the others were reported

    def fn(item: int) -> int:
        if item == 100:
            assert release.wait(10), "the fast items' progress waited for the slow one"
        return item

    TransformContext(tmp_path, jobs=2, advance=advance).run_threads(fn, [100, 1, 2, 3, 4, 5])
    assert reported[-1] == 100 and sorted(reported) == [1, 2, 3, 4, 5, 100]


# -- a real build -----------------------------------------------------------------------------

def _write_f16_llama_gguf(path, layers: int, dim: int) -> int:
    """A llama-shaped F16 GGUF of *layers* blocks of four dim x dim weights: one work item each."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(dim)
    writer.add_head_count(8)
    writer.add_head_count_kv(8)
    writer.add_layer_norm_rms_eps(1e-5)
    names = [f"blk.{i}.{n}.weight" for i in range(layers) for n in ("attn_q", "attn_k", "ffn_up", "ffn_down")]
    for name in names:
        writer.add_tensor_info(name, (dim, dim), np.dtype(np.float16), dim * dim * 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _ in names:
        writer.write_tensor_data((rng.standard_normal((dim, dim), dtype=np.float32) * 0.02).astype(np.float16))
    writer.close()
    return len(names) * dim * dim


def test_quantize_build_reports_progress_while_it_runs(cli, tmp_path):
    """The issue's acceptance: a quantize step's JSON progress counts rise during the step, in
    its unit (parameters), from the first work items on, not in one burst at the end."""
    ctx = tmp_path / "q"
    ctx.mkdir()
    params = _write_f16_llama_gguf(ctx / "model.gguf", layers=12, dim=1024)  # 48 items, 50M params
    age(ctx / "model.gguf")
    (ctx / "Modelfile").write_text("NAME q\nMODEL model.gguf\nQUANTIZE q4_k_m\n")
    run = cli("build", "-f", "Modelfile", "-j", "2", "--progress", "json", cwd=ctx)
    assert run.rc == 0, run.err
    events = [json.loads(line) for line in run.err.splitlines()]  # standard error: NDJSON and nothing else
    assert events[-1]["kind"] == "result" and events[-1]["data"]["digest"] in run.out
    step = next(e["step"] for e in events if e["kind"] == "start" and e.get("label", "").startswith("quantize"))
    mine = [e for e in events if e["step"] == step]
    assert [e["kind"] for e in mine][0] == "start" and mine[-1]["kind"] == "done"  # progress comes in between
    progress = [e for e in mine if e["kind"] == "progress"]
    moving = [e for e in progress if e["current"] > 0]
    assert len(moving) >= 5, progress
    assert all(a["current"] < b["current"] for a, b in zip(moving, moving[1:])), progress
    assert progress[-1]["current"] == progress[-1]["total"] == params
    assert {e["unit"] for e in progress} == {"params"}
    assert any("eta" in e and "rate" in e for e in moving)
    # spread over the step: counts short of the total arrive in its first half
    start, done = mine[0]["time"], mine[-1]["time"]
    early = [e for e in moving if e["time"] < start + (done - start) / 2 and e["current"] < params]
    assert len(early) >= 2, [(round(e["time"] - start, 2), e["current"]) for e in progress]


def test_no_step_reports_more_done_than_its_total(tiny_llama):
    """A layer set (several files, one step) has one total for all of them: before, each
    file set the total to its own size while the count kept adding up (751 of 81)."""
    modelfile = ("NAME tiny\nCONFIG config.json tokenizer.json\nMODEL model.safetensors\n"
                 "QUANTIZE bfloat16\nSHARD 100KB\n")
    from modelbuild.build import build as run_build

    (tiny_llama / "Modelfile").write_text(modelfile)
    out = io.StringIO()
    run_build(str(tiny_llama / "Modelfile"), home=tiny_llama / "home", layer_format="tar",
              renderer=JsonRenderer(out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    progress = [e for e in events if e["kind"] == "progress" and e.get("total")]
    assert progress
    labels = {e["step"]: e.get("label", "") for e in events}
    assert any("pack transformed weights" in labels[e["step"]] for e in progress)
    for e in progress:
        assert e["current"] <= e["total"], e


def test_a_transform_waiting_for_the_cores_says_so(tiny_llama):
    """Transforms run one at a time (each uses every core): one that waits logs why, so a
    bar that does not move is explained."""
    import threading
    import time

    from modelbuild.build import build as run_build
    from modelbuild.ops import weights

    (tiny_llama / "Modelfile").write_text("NAME tiny\nCONFIG config.json\nMODEL model.safetensors\n"
                                          "QUANTIZE bfloat16\n")
    out = io.StringIO()
    weights._TRANSFORM_LOCK.acquire()  # another transform holds the cores
    try:
        worker = threading.Thread(target=run_build, args=(str(tiny_llama / "Modelfile"),),
                                  kwargs={"home": tiny_llama / "home", "renderer": JsonRenderer(out)})
        worker.start()
        deadline = time.monotonic() + 30
        while "waiting: another transform" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        weights._TRANSFORM_LOCK.release()
    worker.join(60)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    (waiting,) = [e for e in events if e["kind"] == "log" and "another transform" in e.get("message", "")]
    assert any(e["kind"] == "done" and e["step"] == waiting["step"] for e in events)  # and then it ran
