"""PROVISIONAL plugin kinds: attesters and executors.

No hook registers them yet and the core calls none of them: these are the contracts the
next issues implement (attestations, remote execution),
written down now so that those issues argue with a text instead of starting from nothing.
They may change before a hookspec names them; nothing here is covered by the 1.0
compatibility promise until its hook carries a ``Since:`` tag. Signing became a real kind in
1.3 (:class:`modelbuild.api.Signer`, with the :class:`~modelbuild.api.Subject` that was
drafted here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from concurrent.futures import Future

    from modelbuild.api._signers import Subject

# -- attesters: attest a pushed artifact ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attestation:
    """PROVISIONAL. What an attester returns: one layer of a referrer artifact whose
    ``subject`` is the signed descriptor.

    ``media_type`` is the layer's (``application/vnd.dev.cosign.simplesigning.v1+json`` for
    a cosign signature, ``application/vnd.dsse.envelope.v1+json`` for an in-toto statement in
    a DSSE envelope); ``payload`` its bytes; ``annotations`` the layer's (cosign puts the
    base64 signature in ``dev.cosignproject.cosign/signature``); ``artifact_type`` the
    referrer manifest's ``artifactType``.
    """

    media_type: str
    payload: bytes
    artifact_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Attester(Protocol):
    """PROVISIONAL. Signs, or makes a statement about, a pushed artifact: a cosign
    signature, SLSA provenance, an SBOM.

    The core would call ``attest(subject)`` after a push, for each attester the user asked
    for, and push each :class:`Attestation` as a referrer of the subject (OCI 1.1, or the
    ``sha256-<hex>`` tag schema where the registry has no referrers API). Key material is the
    attester's own concern: the core passes none. ``predicate_type`` names what it states
    (``https://slsa.dev/provenance/v1``; ``""`` for a plain signature).
    """

    name: str
    predicate_type: str

    def attest(self, subject: Subject) -> Attestation: ...


# -- executors: run a step somewhere ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepRequest:
    """PROVISIONAL. One step handed to an executor: every input done, the cache missed.

    ``op`` names the step's kind (``transform``, ``layer``, ``describe``…); ``definition`` is
    its canonical definition (what its ``key`` digests); ``inputs`` the results of the
    steps it depends on, in order (blobs named by digest and size, fetchable from the store
    or the build's cache).
    """

    id: str
    op: str
    key: str | None
    definition: Mapping[str, Any]
    inputs: tuple[Mapping[str, Any], ...] = ()


@runtime_checkable
class Executor(Protocol):
    """PROVISIONAL. Where steps run: threads of this process (the built-in one), or the
    nodes of a cluster (Ray).

    The solver keeps the graph, the cache, the locks and the progress stream; it calls
    ``submit`` for a step whose inputs are done and whose key missed the cache, waits on
    the returned future (``concurrent.futures.wait``, as it does today), and records the
    result once the blobs it names are in the store. A remote executor ships the op's work
    and brings the blobs back (or into a cache both sides read) before the future
    completes; a failed node is retried or the future fails with a
    :class:`~modelbuild.api.BuildError`. ``slots`` is how many steps may run at once;
    ``close()`` is called once, after the build.
    """

    name: str
    slots: int

    def submit(self, step: StepRequest) -> Future[dict[str, Any]]: ...

    def close(self) -> None: ...
