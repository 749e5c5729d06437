"""Whole artifacts between the local store, a registry and a directory: what push and pull share.

:mod:`modelbuild.oci.registry` moves one blob or one manifest; whole artifacts move in two
modules, one per direction, on what this one gives them:

* :mod:`modelbuild.oci.push`: a tag of the local store (or of an OCI layout) to a registry,
  blobs through the one upload path (:mod:`modelbuild.oci.upload`), then child manifests,
  then the manifest or index under its tag, each with the exact bytes the store holds.
* :mod:`modelbuild.oci.pull`: a registry reference into the local store, tagged there, or
  straight into a directory through the one materialisation.

Here: references as the CLI writes them, the hint an authentication or TLS failure gets,
numbered progress steps (one per blob, like a build's steps; a blob the other side already
has is reported ``CACHED``), and the blobs an artifact's manifests name, each labelled with
the file it holds. Both directions read the manifest tree with the one walker
(:func:`modelbuild.oci.walk.walk`). Legacy ModelPack artifacts (``application/vnd.cnai.model.*``,
``org.cnai.model.*``) are read like current ones.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterable, Iterator

from modelbuild.oci.layerplan import layer_path
from modelbuild.oci.registry import Registry, RegistryError, split_reference
from modelbuild.oci.upload import Blob
from modelbuild.oci.walk import Node
from modelbuild.oci.reference import names_registry  # noqa: F401 - re-exported: callers import it from here
from modelbuild.progress import Emitter, Event

DEFAULT_JOBS = 4


# -- references -------------------------------------------------------------------------
def remote_ref(text: str) -> tuple[str, str, str, str]:
    """``host/repo:tag`` → ``(host, repo, tag-or-digest, normalised reference)``."""
    host, repo, parsed = split_reference(text)
    return host, repo, parsed.digest or parsed.tag or "latest", str(parsed)


def open_registry(host: str, *, plain_http: bool = False, insecure: bool = False) -> Registry:
    return Registry(host, plain_http=plain_http, insecure=insecure)


@contextlib.contextmanager
def login_hint(host: str) -> Iterator[None]:
    """Hints in the CLI's words: ``modelbuild login`` for an authentication failure
    (``docker login`` works too: both write docker's config), ``--insecure`` and
    ``--plain-http`` for a TLS failure."""
    try:
        yield
    except RegistryError as exc:
        if exc.hint:
            exc.hint = exc.hint.replace("docker login", "modelbuild login")
            if "use insecure" in exc.hint:
                exc.hint = ("for a registry without a valid certificate pass --insecure, "
                            "for one without TLS --plain-http")
        raise


# -- progress ---------------------------------------------------------------------------
class Steps:
    """Numbered progress steps, one per blob or manifest, for an optional Emitter."""

    def __init__(self, emitter: Emitter | None, first: int = 1) -> None:
        self.emitter = emitter
        self._numbers = itertools.count(first)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, progress: Emitter | Steps | None) -> Steps:
        return progress if isinstance(progress, Steps) else cls(progress)

    def new(self, label: str, total: int | None = None) -> _Step:
        with self._lock:
            number = next(self._numbers)
        return _Step(self, number, label, total)

    def emit(self, event: Event) -> None:
        if self.emitter is not None:
            self.emitter.emit(event)

    def warn(self, message: str) -> None:
        if self.emitter is not None:
            self.emitter.warn(message)


class _Step:
    """A step shows up when its first byte moves; one with nothing to move is CACHED."""

    def __init__(self, steps: Steps, number: int, label: str, total: int | None) -> None:
        self.steps, self.number, self.label, self.total = steps, number, label, total
        self.started = False
        self.current = 0
        self.t0 = time.monotonic()

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.t0 = time.monotonic()
            self.steps.emit(Event("start", self.number, self.label, total=self.total))

    def advance(self, n: int) -> None:
        self.start()
        self.current += n
        self.steps.emit(Event("progress", self.number, self.label, current=self.current, total=self.total))

    def finish(self, moved: bool) -> None:
        if moved:
            self.start()
            self.steps.emit(Event("done", self.number, self.label, duration=time.monotonic() - self.t0))
        else:
            self.steps.emit(Event("cached", self.number, self.label))


# -- what an artifact is made of ---------------------------------------------------------
def blobs_of(nodes: Iterable[Node]) -> list[Blob]:
    """Config and layers of every manifest (validated by the walker), each digest once, in
    order, each labelled with the file it holds (or ``config``)."""
    out: dict[str, Blob] = {}
    for node in nodes:
        config = [("config", node.parts.config)] if node.parts.config is not None else []
        for label, desc in config + [(layer_path(dict(layer.raw)) or "layer", layer) for layer in node.parts.layers]:
            out.setdefault(desc.digest, Blob(desc.digest, desc.size, label))
    return list(out.values())


__all__ = ["DEFAULT_JOBS", "Steps", "blobs_of", "login_hint", "names_registry", "open_registry", "remote_ref"]
