"""From a reference to the one variant a runtime serves (docs/spec/runtime.md §3).

``run`` and ``deploy`` both start here: a tag of the local store, an OCI layout
(``DIR[:TAG]``) or a registry reference (pulled into the store first, only the chosen
variant's blobs, unless the store has it already). An index is narrowed to one entry by the
multi-platform selection rules (docs/spec/multi-platform.md §5), whose error lists every
entry with why it was passed over. What comes out is a :class:`Variant`: the manifest and
config read verified through the store, and what the index entry said about its target.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from modelbuild.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from modelbuild.api import EngineModel
    from modelbuild.oci.walk import Node
    from modelbuild.runtime.memory import MemoryEstimate
    from modelbuild.store import Store

PULL_POLICIES = ("missing", "always", "never")


@dataclass(frozen=True)
class Variant:
    """One variant of an artifact, resolved and read: what ``run`` and ``deploy`` act on."""

    shown: str  # the reference as the user sees it
    remote: str | None  # "host/repo" when the reference names a registry, else None
    tag: str | None  # the reference's tag, if it has one
    index_digest: str | None  # the index it was chosen from, for a multi-platform artifact
    digest: str  # the variant manifest's digest
    manifest: dict[str, Any]
    config: dict[str, Any]
    stage: str | None  # the TARGET stage (multi-platform), else None
    target: str  # "cpu", "cuda"…; "" for a single-platform artifact
    annotations: Mapping[str, str]  # the index entry's
    store: Store
    node: Node = field(repr=False)
    size: int = 0  # the manifest's size in bytes

    @property
    def descriptor(self) -> dict[str, Any]:
        """The variant manifest's OCI descriptor (a referrer's ``subject``)."""
        return {"mediaType": self.node.media_type, "digest": self.digest, "size": self.size}

    def file_paths(self) -> list[str]:
        """The artifact's file paths in layer order (a tar layer by its directory's path)."""
        return [path for _layer, path in self._paths()]

    def weight_paths(self) -> list[str]:
        """The paths of its weight layers (``…weight.v1.raw`` and the like), in layer order."""
        return [path for layer, path in self._paths()
                if ".weight." in layer.media_type and ".weight.config." not in layer.media_type]

    def _paths(self) -> list[tuple[Any, str]]:
        from modelbuild.oci.layerplan import layer_path

        out = []
        for layer in self.node.parts.layers:
            path = layer_path(dict(layer.raw) or {"annotations": dict(layer.annotations or {})})
            if path:
                out.append((layer, path))
        return out


def resolve_variant(ref: str, *, home: str | None, platform: str = "auto", plain_http: bool = False,
                    insecure: bool = False, progress: Any = None, pull: str = "missing",
                    select: Callable[[dict[str, Any], str], Any] | None = None) -> Variant:
    """The variant of *ref* to serve: see the module docstring. *pull* is ``missing`` (pull a
    registry reference the store lacks), ``always`` or ``never`` (docker's ``--pull``).
    *select* replaces host selection (``deploy`` chooses for a cluster, not for this host)."""
    from modelbuild.commands.inspect import _open
    from modelbuild.oci.transfer import names_registry, remote_ref

    if pull not in PULL_POLICIES:
        raise UsageError(f"--pull {pull}: one of {', '.join(PULL_POLICIES)}")
    remote = tag = None
    if names_registry(ref) and not _is_layout(ref):
        host, repo, name, normalised = remote_ref(ref)
        remote, tag = f"{host}/{repo}", None if name.startswith("sha256:") else name
        narrow = select is None and platform in ("auto", "")  # run on this host: its variant only
        stored = None if pull == "always" else _stored(normalised, home)
        if stored is not None and not narrow and _is_one_variant(stored):
            stored = None  # one variant of an index is stored; another choice needs the index
        if pull == "never" and stored is None:
            raise NotFoundError(f"{normalised} is not in the local store" + ("" if narrow else " as a whole index"),
                                hint="pull it, or drop --pull never")
        if stored is None:
            _pull(host, repo, name, normalised, home, narrow, plain_http, insecure, progress)
        ref = normalised
    store, descriptor, shown = _open(ref, home)
    return _variant(store, descriptor, shown, remote, tag, platform, select)


def _is_layout(ref: str) -> bool:
    path = ref if os.path.isdir(ref) else ref.partition(":")[0]
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, "oci-layout"))


def _stored(ref: str, home: str | None) -> dict[str, Any] | None:
    """The store's descriptor for the tag *ref*, or None."""
    from modelbuild.home import home_dir
    from modelbuild.store import Store

    try:
        return Store(home_dir(home) / "store").resolve(ref)
    except NotFoundError:
        return None


def _is_one_variant(descriptor: dict[str, Any]) -> bool:
    """Whether a stored tag names one variant of an index (pulled by ``run`` for this host:
    its entry's target annotation kept), not a whole artifact."""
    from modelbuild.targets import ANN_TARGET

    return ANN_TARGET in (descriptor.get("annotations") or {})


def _pull(host: str, repo: str, name: str, normalised: str, home: str | None, narrow: bool, plain_http: bool,
          insecure: bool, progress: Any) -> None:
    """Into the store, tagged with the full reference. *narrow* (``run`` with ``--platform
    auto``): of an index, only the variant for this host, its blobs and referrers, tagged with
    its index entry's platform and annotations (a 3-variant model is not downloaded three
    times to serve one); else the whole artifact (``--platform NAME`` and ``deploy`` choose
    among every variant)."""
    from modelbuild.home import home_dir
    from modelbuild.oci.pull import pull_artifact
    from modelbuild.oci.transfer import login_hint, open_registry
    from modelbuild.store import Store

    store = Store(home_dir(home) / "store")
    with open_registry(host, plain_http=plain_http, insecure=insecure) as registry, login_hint(host):
        pull_artifact(registry, repo, name, store, progress=progress, tag=normalised,
                      platform="auto" if narrow else None)


def _variant(store: Store, descriptor: dict[str, Any], shown: str, remote: str | None, tag: str | None,
             platform: str, select: Callable[[dict[str, Any], str], Any] | None) -> Variant:
    from modelbuild.commands.inspect import read
    from modelbuild.oci.verify import Descriptor
    from modelbuild.oci.walk import read_tree

    tree = read(store, descriptor)
    root = tree.root
    index_digest = stage = None
    target, annotations = "", {}
    node = root
    if root.is_index:
        choice = (select or _host_select)(root.doc, platform)
        entry = Descriptor.parse(choice.descriptor, "the chosen index entry")
        index_digest, stage, target = root.digest, choice.stage, choice.target
        annotations = dict(choice.descriptor.get("annotations") or {})
        node = tree.nodes.get(entry.digest) or read_tree(entry, lambda d: store.read_blob(d.digest, d.size),
                                                         max_depth=0).root
    elif isinstance(descriptor.get("annotations"), dict):  # one variant of an index, as pulled for this host
        from modelbuild.targets import ANN_STAGE, ANN_TARGET

        said = descriptor["annotations"]
        if isinstance(said.get(ANN_TARGET), str):
            target = said[ANN_TARGET]
            stage = said.get(ANN_STAGE) if isinstance(said.get(ANN_STAGE), str) else None
            annotations = {k: v for k, v in said.items() if isinstance(v, str)}
    config: dict[str, Any] = {}
    if node.parts.config is not None:
        config = store.read_json(node.parts.config.digest, node.parts.config.size)
    return Variant(shown=shown, remote=remote, tag=tag, index_digest=index_digest, digest=node.digest,
                   manifest=node.doc, config=config, stage=stage, target=target, annotations=annotations,
                   store=store, node=node, size=node.descriptor.size)


def _host_select(index: dict[str, Any], platform: str) -> Any:
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.targets import detect_host, select_entry

    return select_entry(index, platform or "auto", detect_host(), make_plugin_manager().targets)


def served_name(variant: Variant) -> str:
    """The name an engine serves the model under: the config's ``descriptor.name``, else the
    last part of the reference's repository, else ``model``; only characters every engine
    accepts in a model name (and in a URL path)."""
    import re

    name = (variant.config.get("descriptor") or {}).get("name") if isinstance(variant.config, dict) else None
    if not isinstance(name, str) or not name.strip():
        base = variant.remote or variant.shown.split("@")[0]
        name = base.rsplit("/", 1)[-1].split(":")[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:63]
    return name or "model"


def engine_model(variant: Variant, path: PurePath, *, context: int | None = None,
                 params: Mapping[str, str] | None = None, description: Any = None) -> EngineModel:
    """The :class:`~modelbuild.api.EngineModel` an engine is handed for *variant*, its files
    at *path*. The runtime description (if the artifact has one) supplies the target of a
    variant pulled without its index, and the default context length."""
    from modelbuild.api import EngineModel

    cfg = variant.config.get("config") if isinstance(variant.config.get("config"), dict) else {}
    target = variant.target or (getattr(description, "target", "") or "")
    if context is None and description is not None:
        context = getattr(description, "context_length", None)

    def text(key: str) -> str:
        value = cfg.get(key)
        return value.lower() if isinstance(value, str) else ""

    return EngineModel(name=served_name(variant), path=path, files=tuple(variant.file_paths()),
                       weights=tuple(variant.weight_paths()), format=text("format"),
                       quantization=text("quantization"), precision=text("precision"), target=target,
                       context_length=context, params=dict(params or {}), reference=variant.shown,
                       digest=variant.digest, config=variant.config)


def memory_of(variant: Variant, context: int | None, kv_type: str = "f16") -> MemoryEstimate | None:
    """The memory the variant needs to serve at *context* (docs/spec/runtime.md §2), or None
    when the artifact holds no attention shape to compute it from."""
    from modelbuild.runtime.memory import for_artifact

    store = variant.store
    return for_artifact(list(variant.node.parts.layers), lambda d: store.read_blob(d.digest, d.size), context,
                        kv_type)


def runtime_description(variant: Variant) -> Any:
    """The runtime description a build attached to the variant (a referrer in the store),
    or None: an artifact from another tool has none, and serves all the same."""
    try:
        from modelbuild.runtime.description import find_description
    except ImportError:  # pragma: no cover - the description module arrives with the build side
        return None
    return find_description(variant.store, variant.digest)


__all__ = ["PULL_POLICIES", "Variant", "engine_model", "memory_of", "resolve_variant", "runtime_description",
           "served_name"]
