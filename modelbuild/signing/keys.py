"""Keys for cosign-format signatures: ECDSA P-256, in the files cosign and skopeo read and write.

Private keys, in any of these PEM files:

* cosign's encrypted key, ``ENCRYPTED COSIGN PRIVATE KEY`` (cosign ≤ 2.0, skopeo, podman) or
  ``ENCRYPTED SIGSTORE PRIVATE KEY`` (cosign ≥ 2.1). The PEM body is JSON, as
  secure-systems-lab's ``encrypted`` package (and go-tuf's before it) writes it::

      {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": B64},
       "cipher": {"name": "nacl/secretbox", "nonce": B64}, "ciphertext": B64}

  scrypt(passphrase, salt, N, r, p) gives a 32-byte key; NaCl's secretbox (XSalsa20-Poly1305)
  with the 24-byte nonce seals the PKCS#8 DER of the private key. Only the three scrypt
  parameter sets that package knows are accepted (N = 2^15, 2^16, 2^17; r = 8; p = 1): a file
  asking for more would make loading it a denial of service.
* PKCS#8 ``PRIVATE KEY``, SEC1 ``EC PRIVATE KEY`` (unencrypted), PKCS#8 ``ENCRYPTED PRIVATE
  KEY`` (OpenSSL's password-based encryption).

A generated key is written as ``ENCRYPTED COSIGN PRIVATE KEY`` with N = 2^15: the one form that
every reader accepts (skopeo 1.9 / containers-image 5.23 accepts only that type and only those
parameters; containers-image's own generator still writes that type; cosign reads both).
It is created 0600 with ``O_EXCL``, so it is never readable by others, not even for a moment.

Public keys: PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), as ``cosign.pub``.

Passphrases: ``COSIGN_PASSWORD`` when it is set (empty is a valid passphrase, as in cosign);
else a prompt on the terminal (``getpass``, no echo); else a usage error. A passphrase, a
key's bytes or a decrypted key never appear in a message, a ``repr`` or a log: errors name the
file and what is wrong with it, nothing of its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelbuild.errors import UsageError

COSIGN_PEM = "ENCRYPTED COSIGN PRIVATE KEY"
SIGSTORE_PEM = "ENCRYPTED SIGSTORE PRIVATE KEY"
ENCRYPTED_TYPES = (COSIGN_PEM, SIGSTORE_PEM)
PASSWORD_VAR = "COSIGN_PASSWORD"
# secure-systems-lab/go-securesystemslib encrypted: legacy, standard, OWASP (N, r, p)
SCRYPT_PARAMS = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
WRITE_PARAMS = SCRYPT_PARAMS[0]
SALT_SIZE, NONCE_SIZE, KEY_SIZE = 32, 24, 32
MAX_KEY_FILE = 64 << 10
PassphraseFn = Callable[[], bytes]


# -- PEM ---------------------------------------------------------------------------------
def pem_encode(kind: str, body: bytes) -> bytes:
    """A PEM block as Go's ``pem.EncodeToMemory`` writes it: 64 columns, a final newline."""
    b64 = base64.b64encode(body).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"]) + "\n").encode()


def pem_decode(data: bytes, where: str) -> tuple[str, bytes]:
    """The type and body of the first PEM block in *data* (headers, as OpenSSL's ``Proc-Type``,
    are not supported: cosign writes none)."""
    text = data.decode("ascii", errors="replace")
    start = text.find("-----BEGIN ")
    if start < 0:
        raise UsageError(f"{where} is not a PEM file", hint="expected a cosign key (cosign.key, cosign.pub)")
    head_end = text.find("-----", start + 11)
    kind = text[start + 11:head_end] if head_end > 0 else ""
    end = text.find(f"-----END {kind}-----", head_end)
    if not kind or end < 0:
        raise UsageError(f"{where} is not a PEM file: its block has no end")
    body = text[head_end + 5:end]
    if ":" in body:
        raise UsageError(f"{where}: PEM headers are not supported", hint="convert the key to PKCS#8")
    try:
        return kind, base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: the {kind} block is not valid base64") from None


# -- cosign's encryption (secure-systems-lab/go-securesystemslib encrypted) ---------------
def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=KEY_SIZE)


def encrypt(plaintext: bytes, passphrase: bytes, params: tuple[int, int, int] = WRITE_PARAMS) -> bytes:
    """The JSON body of a cosign encrypted key holding *plaintext*."""
    from nacl.secret import SecretBox

    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    n, r, p = params
    sealed = SecretBox(_scrypt(passphrase, salt, n, r, p)).encrypt(plaintext, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return json.dumps({"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": b64(salt)},
                       "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)}, "ciphertext": b64(sealed)},
                      separators=(",", ":")).encode()


def decrypt(body: bytes, passphrase: bytes, where: str) -> bytes:
    """The plaintext of a cosign encrypted key's JSON *body*; a wrong passphrase or a damaged
    file is a one-line UsageError naming *where*."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        doc = json.loads(body)
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt":
            raise UsageError(f"{where}: unknown key derivation {str(kdf['name'])[:40]!r}")
        if cipher["name"] != "nacl/secretbox":
            raise UsageError(f"{where}: unknown cipher {str(cipher['name'])[:40]!r}")
        params = (kdf["params"]["N"], kdf["params"]["r"], kdf["params"]["p"])
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        sealed = base64.b64decode(doc["ciphertext"])
    except UsageError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise UsageError(f"{where} is not a cosign encrypted key: its JSON body is damaged") from None
    if params not in SCRYPT_PARAMS:
        raise UsageError(f"{where}: unsupported scrypt parameters N={params[0]}, r={params[1]}, p={params[2]}")
    if len(nonce) != NONCE_SIZE:
        raise UsageError(f"{where}: the cipher's nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
    try:
        return SecretBox(_scrypt(passphrase, salt, *params)).decrypt(sealed, nonce)
    except CryptoError:
        raise UsageError(f"cannot decrypt {where}: wrong passphrase",
                         hint=f"set {PASSWORD_VAR} to the key's passphrase, or type it at the prompt") from None


# -- passphrases ---------------------------------------------------------------------------
def passphrase_for(path: str, *, confirm: bool = False) -> PassphraseFn:
    """A callable giving the passphrase of the key file *path*: ``COSIGN_PASSWORD`` when set,
    else asked on the terminal (twice with *confirm*), else a usage error. Called only when a
    key turns out to be encrypted."""

    def ask() -> bytes:
        value = os.environ.get(PASSWORD_VAR)
        if value is not None:
            return value.encode()
        if not (sys.stdin is not None and sys.stdin.isatty()):
            raise UsageError(f"{path} is encrypted and there is no terminal to ask for its passphrase",
                             hint=f"set {PASSWORD_VAR}")
        import getpass

        first = getpass.getpass(f"Enter passphrase for {'the new key ' if confirm else ''}{path}: ")
        if confirm and getpass.getpass("Enter it again: ") != first:
            raise UsageError("the passphrases differ")
        return first.encode()

    return ask


# -- key objects ---------------------------------------------------------------------------
def fingerprint(public_der: bytes) -> str:
    """``sha256:<hex>`` of a public key's SubjectPublicKeyInfo DER: shown to say which key,
    never used to decide anything."""
    return "sha256:" + hashlib.sha256(public_der).hexdigest()


class EcdsaVerifyingKey:
    """An ECDSA P-256 public key; signatures are ASN.1 DER over SHA-256 (sigstore's
    ``LoadECDSAVerifier(key, crypto.SHA256)``, what cosign and containers-image verify with)."""

    keyid = ""

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        self.der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fingerprint = fingerprint(self.der)

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def pem(self) -> bytes:
        return pem_encode("PUBLIC KEY", self.der)

    def __repr__(self) -> str:
        return f"<EcdsaVerifyingKey {self.fingerprint[:19]}>"


class EcdsaSigningKey:
    """An ECDSA P-256 private key. Its ``repr`` names the public key's fingerprint only."""

    keyid = ""

    def __init__(self, key: Any) -> None:
        self._key = key
        self._public = EcdsaVerifyingKey(key.public_key())
        self.fingerprint = self._public.fingerprint

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public(self) -> EcdsaVerifyingKey:
        return self._public

    def __repr__(self) -> str:
        return f"<EcdsaSigningKey {self.fingerprint[:19]}>"

    def __reduce__(self) -> Any:  # never pickled into a worker or a cache by accident
        raise TypeError("a signing key cannot be pickled")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"key file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"key file {path} is a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"{path} is not a key file: it is larger than {MAX_KEY_FILE // 1024} KiB")
    return data


def _p256(key: Any, path: str, what: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        kind = f"an ECDSA {curve.name} key" if curve is not None else f"a {type(key).__name__.lstrip('_')}"
        raise UsageError(f"{path} holds {kind}, not an ECDSA P-256 {what}",
                         hint="the cosign signer signs with ECDSA P-256 and SHA-256 (`modelbuild key generate`)")
    return key


def load_private_key(path: str, passphrase: PassphraseFn) -> EcdsaSigningKey:
    """The ECDSA P-256 private key in the file *path*: see the module docstring for the
    formats. *passphrase* is called only for an encrypted one."""
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    kind, body = pem_decode(data, path)
    try:
        if kind in ENCRYPTED_TYPES:
            der = decrypt(body, passphrase(), path)
            key = serialization.load_der_private_key(der, password=None)
        elif kind in ("PRIVATE KEY", "EC PRIVATE KEY"):
            key = serialization.load_pem_private_key(data, password=None)
        elif kind == "ENCRYPTED PRIVATE KEY":
            try:
                key = serialization.load_pem_private_key(data, password=passphrase())
            except ValueError:
                raise UsageError(f"cannot decrypt {path}: wrong passphrase, or an encryption OpenSSL cannot read",
                                 hint=f"set {PASSWORD_VAR} to the key's passphrase") from None
        elif kind == "PUBLIC KEY":
            raise UsageError(f"{path} is a public key; signing needs the private key",
                             hint="pass the .key file, not the .pub")
        else:
            raise UsageError(f"{path} holds a PEM {kind[:60]!r} block, not a private key",
                             hint="expected a cosign key (ENCRYPTED COSIGN PRIVATE KEY) or a PKCS#8/SEC1 PEM key")
    except UsageError:
        raise
    except (ValueError, TypeError):
        raise UsageError(f"{path}: the private key inside cannot be read") from None
    return EcdsaSigningKey(_p256(key, path, "private key"))


def load_public_key(path: str) -> EcdsaVerifyingKey:
    """The ECDSA P-256 public key in the PEM file *path* (``cosign.pub``)."""
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    kind, body = pem_decode(data, path)
    if kind != "PUBLIC KEY":
        hint = "pass the .pub file: a private key is never needed to verify" if "PRIVATE" in kind else None
        raise UsageError(f"{path} holds a PEM {kind[:60]!r} block, not a PUBLIC KEY", hint=hint)
    try:
        key = serialization.load_der_public_key(body)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: the public key inside cannot be read") from None
    return EcdsaVerifyingKey(_p256(key, path, "public key"))


# -- generating ----------------------------------------------------------------------------
def generate(passphrase: bytes) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair: the encrypted private key file's bytes and the public
    key file's (cosign's ``generate-key-pair``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private = pem_encode(COSIGN_PEM, encrypt(der, passphrase))
    return private, EcdsaVerifyingKey(key.public_key()).pem()


def write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write a private key file 0600, created with ``O_EXCL`` (an existing file is replaced
    only with *force*, by removing it first: never written through a link or with its old
    mode)."""
    if force:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask said
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["COSIGN_PEM", "SIGSTORE_PEM", "EcdsaSigningKey", "EcdsaVerifyingKey", "decrypt", "encrypt", "generate",
           "load_private_key", "load_public_key", "passphrase_for", "pem_decode", "pem_encode", "write_private"]
