"""Signers: signature schemes for artifacts in a registry (``modelbuild_register_signers``,
plugin API 1.3; docs/signing.md says what the commands do with them).

A signer is one scheme: cosign's key-based signatures (the built-in ``cosign`` signer), and
whatever a plugin adds (Notation, keyless sigstore). It knows its key files and where its
signatures live; it never opens a connection itself. The core resolves the reference the
user named to a :class:`Subject`, opens the registry with its own transport (credentials,
TLS, bounded and verified reads) and hands the signer a :class:`SignatureRepository`: one
repository, to read and write manifests and small blobs in. So ``modelbuild sign``,
``push --sign``, ``verify`` and ``pull --verify-key`` work the same for every scheme.

Keys are the signer's concern: ``load_signing_key`` reads a private key (asking for its
passphrase only through the callable it is given, which the core backs with
``COSIGN_PASSWORD`` or a terminal prompt, so no plugin reads the environment or a tty);
``load_verifying_key`` a public key. The keys they return sign and verify raw bytes, which is
all the core needs to put an in-toto statement in a DSSE envelope (``build --attest
--sign``) with any scheme's key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Subject:
    """What is signed or verified: a manifest or index in a registry.

    ``digest``, ``size`` and ``media_type`` are its descriptor's; ``reference`` is the
    reference it was pushed under, or that the user asked to verify
    (``registry.example.com/team/model:1``, or ``…@sha256:…``): what cosign's payload calls
    ``critical.identity.docker-reference``. (Provisional in 1.2; real since 1.3.)
    """

    digest: str  # "sha256:…"
    size: int
    media_type: str
    reference: str = ""


@dataclass(frozen=True, slots=True)
class Verified:
    """One signature that verified: what ``Signer.verify`` returns, in the order found.

    ``signer`` is the scheme's name, ``digest`` the manifest digest the signature covers
    (equal to the subject's, or it would not have verified), ``identity`` the reference it was
    made for, ``keyid`` a hint naming the key (never used for a decision), ``location`` where
    the signature lives (``sha256-<hex>.sig`` layer 0, a referrer's digest) and ``details``
    anything else the scheme reports (cosign: the payload's ``optional`` fields).
    """

    signer: str
    digest: str
    identity: str
    keyid: str = ""
    location: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class SigningKey(Protocol):
    """A private key, loaded and ready: ``sign(data)`` returns the scheme's signature over
    *data* (cosign: ECDSA P-256 with SHA-256, ASN.1 DER); ``public()`` the matching
    :class:`VerifyingKey`; ``keyid`` a hint naming the key (may be ``""``). It must never put
    key material in an exception message or a ``repr``."""

    keyid: str

    def sign(self, data: bytes) -> bytes: ...

    def public(self) -> VerifyingKey: ...


@runtime_checkable
class VerifyingKey(Protocol):
    """A public key: ``verify(signature, data)`` is True only when *signature* is this key's
    over *data*; any malformed input is simply False, never an exception."""

    keyid: str

    def verify(self, signature: bytes, data: bytes) -> bool: ...


@runtime_checkable
class SignatureRepository(Protocol):
    """One repository of a registry, as a signer sees it (the core implements it over its
    registry client; ``name`` is ``host/repository``). Every read is verified against its
    digest and bounded; every write sends exactly the bytes given.

    ``manifest(ref)``: ``(bytes, media type, digest)`` of the manifest under a tag or digest,
    or None where there is none. ``blob(digest, size)``: a small blob's bytes (a signature
    payload, a config, an attestation; at most 16 MiB). ``put_blob(data, media_type)``: upload (skipped when
    present); its descriptor. ``put_manifest(ref, data, media_type)``: PUT under a tag or its
    digest; the digest. ``referrers(digest)``: the descriptors of the manifests whose
    ``subject`` is *digest* (the referrers API, else the ``sha256-<hex>`` tag schema);
    ``put_referrer(subject, data, media_type)``: PUT a manifest naming *subject* and make the
    registry list it (extending the tag schema's index where there is no referrers API).
    """

    name: str

    def manifest(self, ref: str) -> tuple[bytes, str, str] | None: ...

    def blob(self, digest: str, size: int) -> bytes: ...

    def put_blob(self, data: bytes, media_type: str) -> dict[str, Any]: ...

    def put_manifest(self, ref: str, data: bytes, media_type: str) -> str: ...

    def referrers(self, digest: str) -> list[dict[str, Any]]: ...

    def put_referrer(self, subject: str, data: bytes, media_type: str) -> str: ...


@runtime_checkable
class Signer(Protocol):
    """A signature scheme (``modelbuild_register_signers``, since 1.3).

    ``name`` is what ``--signer NAME`` selects (``cosign`` is the default).
    ``load_signing_key(path, passphrase=…)`` reads a private key file, calling
    ``passphrase()`` (it returns bytes) only when the file is encrypted;
    ``load_verifying_key(path)`` reads a public key file. A file that is not a key of the
    scheme, or a wrong passphrase, is a :class:`~modelbuild.api.UsageError` that names the file
    and nothing of its content.

    ``sign(repository, subject, key)`` signs *subject* and stores the signature in
    *repository* where the scheme's verifiers look (cosign: a layer of the manifest tagged
    ``sha256-<hex>.sig``, appended to the signatures already there); it returns where, for
    the user (a tag or a digest). ``verify(repository, subject, key)`` returns the
    :class:`Verified` signatures of *subject* that *key* made and whose payload names the
    subject's digest and a matching identity; it raises
    :class:`~modelbuild.api.VerificationError` (exit code 1), one line saying what is wrong,
    when there is none (no signature, a bad signature, another digest, another identity).
    """

    name: str

    def load_signing_key(self, path: str, *, passphrase: Callable[[], bytes]) -> SigningKey: ...

    def load_verifying_key(self, path: str) -> VerifyingKey: ...

    def sign(self, repository: SignatureRepository, subject: Subject, key: SigningKey) -> str: ...

    def verify(self, repository: SignatureRepository, subject: Subject, key: VerifyingKey) -> list[Verified]: ...
