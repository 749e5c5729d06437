"""Signatures and signed attestations for artifacts in a registry (docs/signing.md).

* :mod:`~modelbuild.signing.keys`: ECDSA P-256 keys in cosign's files (its encrypted private
  key, PEM), passphrases from ``COSIGN_PASSWORD`` or the terminal;
* :mod:`~modelbuild.signing.cosign`: cosign's format (the simple-signing payload, the
  ``sha256-<hex>.sig`` manifest), and :mod:`~modelbuild.signing.signer` the built-in
  ``cosign`` signer that writes and reads it (a :class:`modelbuild.api.Signer`);
* :mod:`~modelbuild.signing.dsse`: DSSE envelopes for in-toto statements
  (``sign_statement``, ``verify_envelope``);
* :mod:`~modelbuild.signing.policy`: what ``sign``, ``verify``, ``push --sign`` and ``pull``/
  ``run --verify-key`` do with a signer, a key and a registry;
* :mod:`~modelbuild.signing.repository`: a registry repository as a signer sees it.

Importing this package imports nothing; ``cryptography`` and ``pynacl`` load when a key does.
"""
