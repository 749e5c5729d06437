"""The one walker of manifest trees: an index → its manifests → their config and layers.

The store (the blobs ``prune`` keeps), an ``--output`` layout export, a push and a pull all
walk the same tree the same way: read a manifest or index named by a descriptor, validate it
with the one validator (:class:`~modelbuild.oci.verify.ManifestParts`), go on to the manifests
it names. Only *how its bytes are read* differs (the store's verified read, a registry's
verified GET), so that is the walker's argument; the order (children before the index that
names them, so whatever is written in that order never names what is not there yet), the
depth bound and the error messages are the same everywhere.

:func:`digests_named` is the other walk modelbuild makes over JSON: every digest a step's
result mentions, wherever it sits (files, layer descriptors, a manifest's descriptor). A
result is not a manifest tree, so it does not go through :func:`walk`.

:func:`read_tree` is the same walk, gathered for a reader that looks at an index beside its
entries (``inspect``): the root, every node by digest, and the index's entries in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from modelbuild.digests import is_digest
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import Descriptor, IntegrityError, ManifestParts, parse_json_object

MAX_DEPTH = 4  # indexes of indexes this deep are a hostile document, not a model
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (mt.OCI_INDEX, DOCKER_INDEX)
Read = Callable[[Descriptor], bytes]


def is_index(doc: Mapping[str, Any], media_type: str = "") -> bool:
    """Whether a manifest document is an index (by its media type, or by its shape)."""
    return media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or (
        "manifests" in doc and "layers" not in doc)


def media_type_of(doc: Mapping[str, Any], fallback: str | None) -> str:
    """A manifest's media type: its own field, else *fallback* (what named it), else its shape."""
    return doc.get("mediaType") or fallback or (mt.OCI_INDEX if is_index(doc) else mt.OCI_MANIFEST)


@dataclass(frozen=True, slots=True)
class Node:
    """One manifest or index of a tree, read and validated."""

    descriptor: Descriptor  # as its parent (or the caller, for the root) named it
    data: bytes  # its exact bytes: what is stored or pushed, so digests never change
    doc: dict[str, Any]
    parts: ManifestParts
    depth: int  # 0 for the root
    media_type: str

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def is_index(self) -> bool:
        return is_index(self.doc)


def walk(root: Descriptor, read: Read, *, max_depth: int | None = MAX_DEPTH, strict: bool = False,
         tolerate: tuple[type[BaseException], ...] = (), seen: set[str] | None = None,
         named: Callable[[Descriptor], str] | None = None) -> Iterator[Node]:
    """Every manifest and index under *root*, each once, children before their parent.

    *read* returns a manifest's bytes, verified against its descriptor. A node deeper than
    *max_depth* is never read (None: no bound): an index at that depth is an
    :class:`IntegrityError` when *strict*, else its children are left out. A manifest whose
    reading or validation raises one of *tolerate* is left out, its children with it (the
    store's reachable set: a damaged manifest contributes only its own digest). *seen*
    (updated) is every digest visited, readable or not; passing one set to several walks
    visits shared manifests once. *named* is how a manifest is called when it is not JSON
    (default: ``manifest <digest>``, as in every other message about it).
    """
    seen = set() if seen is None else seen

    def visit(desc: Descriptor, depth: int) -> tuple[Node, Iterator[Descriptor]] | None:
        if desc.digest in seen:
            return None
        seen.add(desc.digest)
        where = f"manifest {desc.digest}"
        try:
            data = read(desc)
            doc = parse_json_object(data, named(desc) if named else where)
            parts = ManifestParts.parse(doc, where)
        except tolerate:
            return None
        node = Node(desc, data, doc, parts, depth, media_type_of(doc, desc.media_type or None))
        children: Iterator[Descriptor] = iter(parts.manifests)
        if parts.manifests and max_depth is not None and depth >= max_depth:
            if strict:
                raise IntegrityError(f"{where}: indexes nested more than {max_depth} deep")
            children = iter(())
        return node, children

    stack: list[tuple[Node, Iterator[Descriptor]]] = []
    if (first := visit(root, 0)) is not None:
        stack.append(first)
    while stack:  # a loop, not recursion: an unbounded walk of a hostile store cannot overflow
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            yield node
        elif (opened := visit(child, node.depth + 1)) is not None:
            stack.append(opened)


@dataclass(frozen=True, slots=True)
class Tree:
    """A manifest tree read whole by :func:`walk`: its root, and every node reached, by digest."""

    root: Node
    nodes: Mapping[str, Node]

    def entries(self) -> list[tuple[Descriptor, Node | None]]:
        """The root's entries in its own order (an index's variants; none for a manifest), each
        with the node read for it. Two entries naming one manifest get the same node (the walk
        reads a digest once); an entry the walk did not read (beyond its depth) gets None."""
        return [(d, self.nodes.get(d.digest)) for d in self.root.parts.manifests]

    def size(self) -> int:
        """The bytes the whole artifact takes: the root, and every manifest, config and layer
        once however many variants share it (``inspect``'s and ``ls``'s size)."""
        blobs = {self.root.digest: self.root.descriptor.size}
        for node in self.nodes.values():
            blobs[node.digest] = node.descriptor.size
            blobs.update((b.digest, b.size) for b in node.parts.blobs())
        return sum(blobs.values())


def read_tree(root: Descriptor, read: Read, *, max_depth: int | None = MAX_DEPTH, strict: bool = False,
              named: Callable[[Descriptor], str] | None = None) -> Tree:
    """:func:`walk` from *root*, gathered into a :class:`Tree` for callers that look at an
    index together with its entries (``inspect``), not in upload order. Every read and
    validation error of the walk is raised; nothing is tolerated."""
    nodes = {node.digest: node for node in walk(root, read, max_depth=max_depth, strict=strict, named=named)}
    return Tree(nodes[root.digest], nodes)


def digests_named(obj: Any) -> set[str]:
    """Every digest a JSON document mentions as a ``digest`` field, at any depth."""
    out: set[str] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            d = item.get("digest")
            if isinstance(d, str) and is_digest(d):
                out.add(d)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return out


__all__ = ["DOCKER_INDEX", "DOCKER_MANIFEST", "INDEX_TYPES", "MAX_DEPTH", "Node", "Tree", "digests_named",
           "is_index", "media_type_of", "read_tree", "walk"]
