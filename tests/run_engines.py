"""A test engine plugin, ``probe``, for `modelbuild run`'s own behaviour (resolution,
materialisation, process handling): it serves any weight file with tests/engine_program.py.
The built-in engines are tested with their real servers in tests/test_engine_*.py.

In-process: ``use_probe(monkeypatch)``. As a process: ``python tests/run_engines.py ARGS``
is ``modelbuild ARGS`` with the probe engine installed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from modelbuild.api import Container, Launch, UsageError, hookimpl

PROGRAM = Path(__file__).resolve().parent / "engine_program.py"


class Probe:
    name = "probe"
    formats = ("onnx", "gguf", "safetensors")
    targets = ("cpu",)
    protocol = "openai"
    install = "pip install probe-engine"
    default_port = 18080
    parameters = {"delay": "seconds of loading", "mode": "misbehaviour: exit-early, escape, ignore-term, child"}

    def accepts(self, model):
        if model.format not in self.formats:
            return f"probe serves {', '.join(self.formats)}; this variant is {model.format or 'of no known format'}"
        if model.target not in ("", *self.targets):
            return f"probe runs on cpu, not {model.target}"
        return None if model.weights else "the variant has no weight file"

    def installed(self):
        return os.environ.get("PROBE_MISSING") or None

    def launch(self, model, *, host, port):
        argv = [sys.executable, str(PROGRAM), "--model", str(model.weight_path), "--host", host, "--port", str(port)]
        for key, value in model.params.items():
            if key == "delay":
                argv += ["--delay", value]
            elif key == "mode":
                flag = {"exit-early": [], "ignore-term": []}.get(value)
                argv += [f"--{value}"] + ([] if flag is not None else [os.environ["PROBE_PIDFILE"]])
            else:
                raise UsageError(f"probe: unknown parameter {key}")
        return Launch(argv=tuple(argv), port=port, health="/health", endpoint="/v1", protocol="openai",
                      env={"PROBE_CONTEXT": str(model.context_length or "")}, files={"probe.json": json.dumps(
                          {"name": model.name})}, ready_timeout=30)

    def container(self, model, *, port):
        return Container(image="example.invalid/probe:1", port=port, readiness="/health", liveness="/health",
                         protocol="openai", args=("--model", str(model.weight_path)))


class ProbePlugin:
    @hookimpl
    def modelbuild_register_engines(self, registry):
        registry.add(Probe())


def use_probe(monkeypatch) -> None:
    """Make every plugin manager the CLI creates in this process include the probe engine."""
    import modelbuild.plugins as plugins

    original = plugins.make_plugin_manager

    def with_probe(extra_plugins=(), **kwargs):
        return original([*extra_plugins, ProbePlugin()], **kwargs)

    monkeypatch.setattr(plugins, "make_plugin_manager", with_probe)


if __name__ == "__main__":
    import modelbuild.plugins as plugins

    original = plugins.make_plugin_manager
    plugins.make_plugin_manager = lambda extra_plugins=(), **kw: original([*extra_plugins, ProbePlugin()], **kw)
    from modelbuild.cli import main

    sys.exit(main(sys.argv[1:]))
