"""The built-in ``cosign`` signer: cosign's key-based signatures (docs/signing.md).

The format and the key files are implemented in the core package (``modelbuild.signing``);
this plugin registers the signer through the same hook a third-party signer (Notation,
keyless sigstore) uses.
"""

from typing import Any

from modelbuild.api import cosign_signer, hookimpl


@hookimpl
def modelbuild_register_signers(registry: Any) -> None:
    registry.add(cosign_signer())
