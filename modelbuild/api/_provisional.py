"""PROVISIONAL plugin kinds: attesters.

No hook registers them yet and the core calls none of them: these are the contracts the
next issues implement (attestations),
written down now so that those issues argue with a text instead of starting from nothing.
They may change before a hookspec names them; nothing here is covered by the 1.0
compatibility promise until its hook carries a ``Since:`` tag. Signing became a real kind in
1.3 (:class:`modelbuild.api.Signer`, with the :class:`~modelbuild.api.Subject` that was
drafted here), and executors in 1.4 (:class:`modelbuild.api.Executor`, which replaced the
whole-step ``StepRequest`` drafted here: the solver keeps the steps, the executor runs their
work items).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
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
