"""cosign's key files (modelbuild.signing.keys): its encrypted private key, written and read,
checked against keys cosign itself encrypted (tests/data/signing/README.md names them); PEM
keys from OpenSSL; ``modelbuild key generate``; and a passphrase that never shows."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess

import pytest

from modelbuild.errors import UsageError
from modelbuild.signing import keys
from support import REPO, error_line, require_tool

DATA = REPO / "tests" / "data" / "signing"
COSIGN_KEYS = ["cosign-cosign-type.key", "cosign-sigstore-type.key", "cosign-n65536-sec1.key"]


def never() -> bytes:
    raise AssertionError("the passphrase was asked for an unencrypted key")


@pytest.mark.parametrize("name", COSIGN_KEYS)
def test_keys_cosign_encrypted_decrypt_and_sign(name):
    """cosign wrote these (passphrase "hello"): both PEM types, both scrypt strengths."""
    key = keys.load_private_key(str(DATA / name), lambda: b"hello")
    assert key.public().verify(key.sign(b"payload"), b"payload")
    assert not key.public().verify(key.sign(b"payload"), b"other")


@pytest.mark.parametrize("name", COSIGN_KEYS)
def test_a_wrong_passphrase_is_one_line_naming_the_file_not_the_passphrase(name):
    path = str(DATA / name)
    with pytest.raises(UsageError) as info:
        keys.load_private_key(path, lambda: b"not-hello-at-all")
    text = info.value.render()
    assert text.startswith(f"cannot decrypt {path}: wrong passphrase") and "\n" not in text
    assert "not-hello-at-all" not in text


def test_generated_key_is_what_cosign_and_skopeo_read():
    """The form every reader accepts (containers-image 5.23 takes only this PEM type and these
    scrypt parameters): PEM ``ENCRYPTED COSIGN PRIVATE KEY``, a JSON body with scrypt N=32768,
    r=8, p=1, a 32-byte salt, nacl/secretbox with a 24-byte nonce, the PKCS#8 key sealed."""
    private, public = keys.generate(b"s3cret")
    text = private.decode()
    assert text.startswith("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n")
    assert text.endswith("-----END ENCRYPTED COSIGN PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    kind, body = keys.pem_decode(private, "k")
    doc = json.loads(body)
    assert list(doc) == ["kdf", "cipher", "ciphertext"]
    assert doc["kdf"]["name"] == "scrypt" and doc["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
    assert doc["cipher"]["name"] == "nacl/secretbox" and len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    from cryptography.hazmat.primitives import serialization

    der = keys.decrypt(body, b"s3cret", "k")
    assert serialization.load_der_private_key(der, None).curve.name == "secp256r1"
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----\n")


def test_a_file_asking_for_huge_scrypt_parameters_is_refused_before_any_work():
    private, _ = keys.generate(b"pw")
    _, body = keys.pem_decode(private, "k")
    doc = json.loads(body)
    doc["kdf"]["params"]["N"] = 1 << 30
    with pytest.raises(UsageError, match="unsupported scrypt parameters N=1073741824"):
        keys.decrypt(json.dumps(doc).encode(), b"pw", "k")


def test_openssl_pem_keys_load_without_a_passphrase_and_sign(tmp_path):
    openssl = require_tool("openssl", "apt-get install -y openssl")
    sec1, pkcs8, pub = tmp_path / "ec.pem", tmp_path / "pkcs8.pem", tmp_path / "ec.pub"
    subprocess.run([openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", sec1], check=True)
    subprocess.run([openssl, "pkcs8", "-topk8", "-nocrypt", "-in", sec1, "-out", pkcs8], check=True)
    subprocess.run([openssl, "ec", "-in", sec1, "-pubout", "-out", pub], check=True, capture_output=True)
    for path in (sec1, pkcs8):
        key = keys.load_private_key(str(path), never)
        assert keys.load_public_key(str(pub)).verify(key.sign(b"x"), b"x")


def test_openssl_password_encrypted_pkcs8_asks_for_the_passphrase(tmp_path):
    openssl = require_tool("openssl", "apt-get install -y openssl")
    sec1, enc = tmp_path / "ec.pem", tmp_path / "enc.pem"
    subprocess.run([openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", sec1], check=True)
    subprocess.run([openssl, "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:pw", "-in", sec1,
                    "-out", enc], check=True)
    assert keys.load_private_key(str(enc), lambda: b"pw").sign(b"x")
    with pytest.raises(UsageError, match="cannot decrypt"):
        keys.load_private_key(str(enc), lambda: b"wrong")


@pytest.mark.parametrize("text, message", [
    (b"not a key", "is not a PEM file"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM 'CERTIFICATE' block, not a private key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is a public key; signing needs the private"),
    (b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nbm90IGpzb24=\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n",
     "is not a cosign encrypted key"),
])
def test_what_is_not_a_private_key_is_named(tmp_path, text, message):
    path = tmp_path / "k.key"
    path.write_bytes(text)
    with pytest.raises(UsageError, match=message):
        keys.load_private_key(str(path), lambda: b"pw")


def test_a_key_that_is_not_p256_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "p384.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UsageError, match="holds an ECDSA secp384r1 key, not an ECDSA P-256 private key"):
        keys.load_private_key(str(path), never)


def test_public_key_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        keys.load_public_key(str(tmp_path / "none.pub"))
    with pytest.raises(UsageError) as info:
        keys.load_public_key(str(DATA / "cosign-sigstore-type.key"))
    assert "not a PUBLIC KEY (pass the .pub file" in info.value.render()


def test_key_objects_hide_their_secret():
    key = keys.load_private_key(str(DATA / "cosign-sigstore-type.key"), lambda: b"hello")
    assert repr(key).startswith("<EcdsaSigningKey sha256:") and len(repr(key)) < 50
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(key)


# -- modelbuild key generate -------------------------------------------------------------------
def test_key_generate_writes_an_encrypted_0600_key_and_its_public_key(mb, tmp_path):
    run = mb("key", "generate", "--output-key-prefix", str(tmp_path / "team"), env={"COSIGN_PASSWORD": "pa55-Word"},
             cwd=tmp_path)
    assert run.rc == 0, run.err
    private, public = tmp_path / "team.key", tmp_path / "team.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "pa55-Word" not in run.out + run.err and private.read_text() not in run.out + run.err
    key = keys.load_private_key(str(private), lambda: b"pa55-Word")
    assert keys.load_public_key(str(public)).verify(key.sign(b"m"), b"m")
    assert key.fingerprint in run.out
    # again: refused, nothing replaced; --force replaces both
    before = private.read_bytes()
    again = mb("key", "generate", "--output-key-prefix", str(tmp_path / "team"), env={"COSIGN_PASSWORD": "x"})
    assert error_line(again, 2).endswith("team.key exists (pass --force to replace it, or choose --output-key-prefix)")
    assert private.read_bytes() == before
    forced = mb("key", "generate", "--output-key-prefix", str(tmp_path / "team"), "--force", "--json",
                env={"COSIGN_PASSWORD": "x"})
    assert forced.rc == 0 and forced.json()["publicKey"] == str(public)
    assert private.read_bytes() != before and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_key_generate_under_a_permissive_umask_is_still_0600(mb, tmp_path):
    old = os.umask(0)
    try:
        assert mb("key", "generate", "--output-key-prefix", str(tmp_path / "k"), env={"COSIGN_PASSWORD": ""}).rc == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    keys.load_private_key(str(tmp_path / "k.key"), lambda: b"")  # an empty passphrase is one, as in cosign


def test_key_generate_without_a_passphrase_or_terminal_is_a_usage_error(mb, tmp_path, monkeypatch):
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    run = mb("key", "generate", "--output-key-prefix", str(tmp_path / "k"), input=b"typed-on-stdin\n")
    assert "set COSIGN_PASSWORD" in error_line(run, 2)
    assert not (tmp_path / "k.key").exists() and not (tmp_path / "k.pub").exists()


def test_the_prompt_asks_twice_on_a_terminal(mb, tmp_path, monkeypatch):
    import io
    import sys

    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    answers = iter(["typed", "typed", "first", "second"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert mb("key", "generate", "--output-key-prefix", str(tmp_path / "a")).rc == 0
    keys.load_private_key(str(tmp_path / "a.key"), lambda: b"typed")
    monkeypatch.setattr(sys, "stdin", Terminal())
    run = mb("key", "generate", "--output-key-prefix", str(tmp_path / "b"))
    assert error_line(run, 2) == "modelbuild: error: the passphrases differ"
    assert not (tmp_path / "b.key").exists()


def test_key_without_an_action_is_a_usage_error(mb):
    assert "modelbuild key generate" in error_line(mb("key"), 2)
