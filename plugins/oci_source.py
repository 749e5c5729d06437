"""The built-in ``oci`` source: ``FROM oci://registry/repo[:tag][@sha256:…]``, a ModelPack
artifact as the base of a build (re-quantize it, re-shard it, add metadata).

* **Pin.** A digest pins itself; a tag is resolved with one manifest request. An image index
  (a multi-platform artifact) is the base through its first ModelPack entry (modelbuild
  writes the generic, CPU variant first).
* **Files.** Every layer is a file of the context, at its ``org.cncf.model.filepath``
  (``org.cnai.model.filepath`` for the legacy generation), as the kind its media type says
  (``weight`` → MODEL, ``weight.config`` → CONFIG, ``code``, ``dataset``, ``doc``). Raw
  layers are files; ``tar``, ``tar+gzip`` and ``tar+zstd`` layers are unpacked, every
  member checked. Each layer's digest is verified as it is fetched, and a blob already in
  the store is not fetched at all.
* **Defaults.** The base config's descriptor (name, version, vendor, family, licenses,
  authors, source URL, revision, …) is where the build's descriptor starts; the Modelfile's
  own directives win. The manifest gets the image spec's base annotations,
  ``org.opencontainers.image.base.name`` (``registry/repo[:tag]``) and
  ``org.opencontainers.image.base.digest`` (the base manifest).

A file the build packages unchanged, as the same kind, keeps the base's layer: its media
type (raw or an archive, whatever ``--layer-format`` says), digest and diffId. Nothing is
packed again, and a push to the base's registry mounts
the blob from the base's repository (named by ``org.opencontainers.image.base.name``)
instead of uploading it.
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from collections.abc import Iterable
from typing import Any

from modelbuild.api import FetchError, ModelfileError, RemoteFile, SourceListing, SourcePin, hookimpl, open_registry

_REF = re.compile(r"(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?)/"
                  r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")
_LAYER = re.compile(r"application/vnd\.(?:cncf|cnai)\.model\.(?P<family>weight\.config|weight|code|dataset|doc)"
                    r"\.v1\.(?P<form>raw|tar|tar\+gzip|tar\+zstd)")
_KINDS = {"weight": "model", "weight.config": "config", "code": "code", "dataset": "dataset", "doc": "doc"}
_CONFIGS = ("application/vnd.cncf.model.config.v1+json", "application/vnd.cnai.model.config.v1+json")
_INDEXES = ("application/vnd.oci.image.index.v1+json",)
_PATH_KEYS = ("org.cncf.model.filepath", "org.cnai.model.filepath")
_DESCRIPTOR_KEYS = ("name", "version", "vendor", "family", "licenses", "authors", "title", "description", "docURL",
                    "sourceURL", "revision")
MAX_LAYERS = 10_000
BASE_NAME, BASE_DIGEST = "org.opencontainers.image.base.name", "org.opencontainers.image.base.digest"


def parse(reference: str) -> tuple[str, str, str, str]:
    """``oci://host/repo[:tag][@digest]`` → ``(host, repo, tag, digest)``."""
    text = reference.removeprefix("oci://")
    m = _REF.fullmatch(text)
    if not m:
        raise ModelfileError(f"{reference} is not an OCI reference",
                             hint="write oci://registry.example.com/team/model:tag or …@sha256:<64 hex>")
    return m["host"], m["repo"], m["tag"] or ("" if m["digest"] else "latest"), m["digest"] or ""


class OciSource:
    name = "oci"
    schemes = ("oci",)
    version = "1"
    summary = "a ModelPack artifact in an OCI registry, as the base of a build"

    def pin(self, reference: str, *, network: bool) -> SourcePin | None:
        host, repo, tag, digest = parse(reference)
        if not digest:
            if not network:
                return None
            _, _, digest = open_registry(host).manifest(repo, tag)
        return SourcePin(f"oci://{host}/{repo}@{digest}", data={"host": host, "repo": repo, "digest": digest,
                                                               **({"tag": tag} if tag else {})})

    def listing(self, pin: SourcePin) -> SourceListing:
        host, repo = pin.data["host"], pin.data["repo"]
        client = open_registry(host)
        data, media_type, digest = client.manifest(repo, pin.data["digest"])
        doc = _json(data, pin.identity)
        if media_type in _INDEXES or "manifests" in doc:
            child = _first_model(doc, pin.identity)
            data, media_type, digest = client.manifest(repo, child)
            doc = _json(data, pin.identity)
        config = doc.get("config") or {}
        if config.get("mediaType") not in _CONFIGS and doc.get("artifactType") not in (
                "application/vnd.cncf.model.manifest.v1+json", "application/vnd.cnai.model.manifest.v1+json"):
            raise FetchError(f"{pin.identity} is not a ModelPack artifact (config {config.get('mediaType')!r})")
        model_config = _json(client.blob(repo, config["digest"], int(config["size"])), pin.identity)
        layers = doc.get("layers") or []
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise FetchError(f"{pin.identity}: its layers are not a list of at most {MAX_LAYERS}")
        modelfs = model_config.get("modelfs") if isinstance(model_config.get("modelfs"), dict) else {}
        diff_ids = modelfs.get("diffIds") if isinstance(modelfs.get("diffIds"), list) else []
        diff_ids = diff_ids if len(diff_ids) == len(layers) else [""] * len(layers)
        files = tuple(_file(layer, diff_id, pin.identity) for layer, diff_id in zip(layers, diff_ids))
        descriptor = model_config.get("descriptor") if isinstance(model_config.get("descriptor"), dict) else {}
        defaults = {k: descriptor[k] for k in _DESCRIPTOR_KEYS if k in descriptor}
        base = f"{host}/{repo}" + (f":{pin.data['tag']}" if pin.data.get("tag") else "")
        labels = {BASE_NAME: base, BASE_DIGEST: digest}  # the OCI annotations for a base image
        return SourceListing(files=files, descriptor=defaults, labels=labels, name=defaults.get("name"))

    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int) -> AbstractContextManager[Iterable[bytes]]:
        return open_registry(pin.data["host"]).stream(pin.data["repo"], file.locator, file.size, offset=offset)


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise FetchError(f"{where}: not a JSON object")
    return doc


def _first_model(index: dict[str, Any], where: str) -> str:
    """The first entry of an index that is an artifact manifest (not an attestation)."""
    for entry in index.get("manifests") or []:
        if isinstance(entry, dict) and entry.get("mediaType") == "application/vnd.oci.image.manifest.v1+json" and \
                isinstance(entry.get("digest"), str):
            return entry["digest"]
    raise FetchError(f"{where} is an index without a manifest")


def _file(layer: Any, diff_id: Any, where: str) -> RemoteFile:
    if not isinstance(layer, dict):
        raise FetchError(f"{where}: a layer is not a descriptor")
    media_type, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
    m = _LAYER.fullmatch(media_type) if isinstance(media_type, str) else None
    if m is None:
        raise FetchError(f"{where}: layer {digest} has media type {media_type!r}, not a ModelPack layer")
    annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
    path = next((annotations[k] for k in _PATH_KEYS if isinstance(annotations.get(k), str)), None)
    if path is None:
        raise FetchError(f"{where}: layer {digest} has no file path annotation")
    if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, str):
        raise FetchError(f"{where}: layer {path!r} has a malformed descriptor")
    form = m["form"]
    if form in ("raw", "tar"):
        diff_id = digest  # an uncompressed layer is its own content
    return RemoteFile(path.rstrip("/"), size, digest, kind=_KINDS[m["family"]],
                      unpack="" if form == "raw" else form, media_type=media_type, locator=digest,
                      diff_id=diff_id if isinstance(diff_id, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", diff_id)
                      else "")


@hookimpl
def modelbuild_register_sources(registry):  # noqa: ANN001, ANN201 - pluggy hook
    registry.add(OciSource())
