"""``FROM ollama://[host/][namespace/]model[:tag][@sha256:…]``: a model from an Ollama
registry, repackaged as a ModelPack artifact.

Ollama's registry speaks the OCI distribution protocol (``registry.ollama.ai`` by default;
namespace ``library`` and tag ``latest`` when left out) with a Docker schema-2 manifest
whose layers carry Ollama's media types (ollama/ollama ``server/images.go`` and
``types/model``): ``application/vnd.ollama.image.model`` (the GGUF), ``.projector``,
``.adapter``, ``.template``, ``.system``, ``.params``, ``.messages`` and ``.license``.

* The model, projector and adapter blobs are the context's files ``model.gguf``,
  ``projector.gguf`` (``projector-2.gguf``…) and ``adapter.gguf``: fetched into the store
  under the blob's own digest and verified, so the artifact's weight layer is byte for byte
  the registry's blob, with the same digest.
* Template, system message, parameters, messages and licenses are small blobs, read and
  verified while the source is listed, and carried as the Ollama frontend carries them
  (:mod:`modelbuild_plugins.ollama._carriage`, docs/ollama.md).
* Defaults: the model's name, the tag as its version, its family from the config blob, the
  licenses that are SPDX identifiers, and, for ``registry.ollama.ai``, its page on
  ollama.com as the source URL; the manifest digest is the revision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from modelbuild.api import FetchError, ModelfileError, RemoteFile, SourceListing, SourcePin, open_registry

from . import _carriage as carriage

DEFAULT_HOST = "registry.ollama.ai"
_NAME = re.compile(r"(?:(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?)/)??"
                   r"(?:(?P<ns>[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})/)?(?P<model>[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})"
                   r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")
_MEDIA = "application/vnd.ollama.image."
_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
_FILES = {"model": "model", "projector": "projector", "adapter": "adapter"}
_TEXTS = ("template", "system", "params", "messages", "license", "prompt")
MAX_TEXT = 1 << 20
MAX_LAYERS = 256


def parse(reference: str) -> tuple[str, str, str, str, str]:
    """``ollama://…`` → ``(host, namespace, model, tag, digest)``, with Ollama's defaults."""
    text = reference.removeprefix("ollama://")
    m = _NAME.fullmatch(text)
    if not m:
        raise ModelfileError(f"{reference} is not an Ollama model name",
                             hint="write ollama://qwen2:0.5b, ollama://library/qwen2:0.5b or "
                                  "ollama://host:port/namespace/model:tag")
    host, ns = m["host"], m["ns"]
    if host and not ns and "." not in host and ":" not in host and host != "localhost":
        host, ns = None, host  # `team/model`: a namespace, not a registry host
    return host or DEFAULT_HOST, ns or "library", m["model"], m["tag"] or "latest", m["digest"] or ""


class OllamaSource:
    name = "ollama"
    schemes = ("ollama",)
    version = "1"
    summary = "a model from an Ollama registry (registry.ollama.ai or your own)"

    def pin(self, reference: str, *, network: bool) -> SourcePin | None:
        host, ns, model, tag, digest = parse(reference)
        if not digest:
            if not network:
                return None
            _, _, digest = open_registry(host).manifest(f"{ns}/{model}", tag, accept=_ACCEPT)
        page = f"https://ollama.com/{ns}/{model}" if host == DEFAULT_HOST else ""
        return SourcePin(f"ollama://{host}/{ns}/{model}@{digest}", source_url=page, revision=digest,
                         data={"host": host, "repo": f"{ns}/{model}", "model": model, "tag": tag, "digest": digest})

    def listing(self, pin: SourcePin) -> SourceListing:
        host, repo = pin.data["host"], pin.data["repo"]
        client = open_registry(host)
        data, _, _ = client.manifest(repo, pin.data["digest"], accept=_ACCEPT)
        manifest = _object(data, pin.identity)
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS:
            raise FetchError(f"{pin.identity}: not an Ollama model (no layers, or more than {MAX_LAYERS})")
        files: list[RemoteFile] = []
        texts: dict[str, list[bytes]] = {k: [] for k in _TEXTS}
        counts: dict[str, int] = {}
        for layer in layers:
            kind, digest, size = _layer(layer, pin.identity)
            if kind in _FILES:
                counts[kind] = counts.get(kind, 0) + 1
                name = _FILES[kind] + (f"-{counts[kind]}" if counts[kind] > 1 else "") + ".gguf"
                files.append(RemoteFile(name, size, digest, kind="model", media_type=_MEDIA + kind, locator=digest))
            elif kind in texts:
                texts[kind].append(client.blob(repo, digest, size, limit=MAX_TEXT))
            # other Ollama layer kinds (a future one) are left out, as an older Ollama would
        if not counts.get("model"):
            raise FetchError(f"{pin.identity}: the manifest has no {_MEDIA}model layer")
        return SourceListing(files=tuple(files), descriptor=self._descriptor(pin, client, manifest, texts),
                             labels=self._labels(pin, texts, files), name=pin.data["model"])

    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int) -> AbstractContextManager[Iterable[bytes]]:
        return open_registry(pin.data["host"]).stream(pin.data["repo"], file.locator, file.size, offset=offset)

    @staticmethod
    def _labels(pin: SourcePin, texts: dict[str, list[bytes]], files: list[RemoteFile]) -> dict[str, str]:
        def text(kind: str) -> str | None:
            return _utf8(texts[kind][-1], pin.identity, kind) if texts[kind] else None

        try:
            return carriage.labels_from_blobs(
                text("template") if texts["template"] else text("prompt"), text("system"),
                texts["params"][-1] if texts["params"] else None,
                texts["messages"][-1] if texts["messages"] else None,
                [_utf8(t, pin.identity, "license") for t in texts["license"]],
                adapters=[f.path for f in files if f.media_type == _MEDIA + "adapter"])
        except ModelfileError as exc:
            raise FetchError(f"{pin.identity}: {exc.message}", hint=exc.hint) from None

    @staticmethod
    def _descriptor(pin: SourcePin, client: Any, manifest: dict[str, Any],
                    texts: dict[str, list[bytes]]) -> dict[str, Any]:
        out: dict[str, Any] = {"version": pin.data["tag"]}
        licenses = carriage.spdx_licenses(_utf8(t, pin.identity, "license") for t in texts["license"])
        if licenses:
            out["licenses"] = licenses
        config = manifest.get("config")
        if isinstance(config, dict) and isinstance(config.get("digest"), str) and isinstance(config.get("size"), int):
            try:
                doc = json.loads(client.blob(pin.data["repo"], config["digest"], config["size"], limit=MAX_TEXT))
            except ValueError:
                doc = None
            family = doc.get("model_family") if isinstance(doc, dict) else None
            if isinstance(family, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", family):
                out["family"] = family
        return out


def _object(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise FetchError(f"{where}: the manifest is not a JSON object")
    return doc


def _layer(layer: Any, where: str) -> tuple[str, str, int]:
    if not isinstance(layer, dict):
        raise FetchError(f"{where}: a layer is not a descriptor")
    media, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
    if not isinstance(media, str) or not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) \
            or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FetchError(f"{where}: a layer has a malformed descriptor")
    return (media[len(_MEDIA):] if media.startswith(_MEDIA) else ""), digest, size


def _utf8(data: bytes, where: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError(f"{where}: its {what} is not UTF-8 text") from None
