"""The hook the HF → GGUF converter adds (``modelbuild_addhooks``): architecture adapters.

It lives with the converter, not in modelbuild's core: only this plugin calls it. A plugin
that implements it when hf-to-gguf is not installed gets "implements unknown hook" (mark
the implementation ``optionalhook=True`` to make it optional).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelbuild.api import hookspec

if TYPE_CHECKING:
    from modelbuild.api import Registry

    from .adapters import ArchitectureAdapter


@hookspec
def modelbuild_register_architectures(registry: Registry[ArchitectureAdapter]) -> None:
    """Add model architectures to the Hugging Face → GGUF converter.

    Call ``registry.add(adapter)``. An adapter has a unique ``name`` (e.g. ``"mistral"``),
    ``gguf_arch`` (the GGUF ``general.architecture`` it writes, e.g. ``"llama"``; empty
    means ``name``), a ``version`` (enters the cache key of every conversion that uses this
    adapter, and only those) and ``hf_architectures`` (the ``config.json``
    ``architectures`` entries it handles, e.g. ``("LlamaForCausalLM",)``), and the methods
    the converter calls::

        block_count(config) -> int
        hparams(config) -> list[tuple[str, Any]]         # full GGUF keys; "{arch}" is replaced;
                                                         # FILE_TYPE marks where general.file_type goes
        tensor_name(hf_name, n_blocks) -> str | None     # None: skip; KeyError: unknown tensor
        transform(hf_name, array, config) -> array       # e.g. llama's q/k permutation
        check(config, shapes) -> None                    # raise ShapeMismatch for a contradiction
        extra_tensors(config) -> list[tuple[str, ndarray]]

    :class:`modelbuild_plugins.hf_to_gguf.ArchitectureAdapter` is a base class with
    defaults for all but ``tensor_name``. Adding an architecture is one small plugin.

    Parameters:
        ``registry``: the converter's architecture :class:`~modelbuild.api.Registry` (what
        ``ctx.plugins.extension("modelbuild_register_architectures", "architecture")``
        returns).
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.3.
    """
