"""QUANTIZE int8-rowwise: 2-D float weights → int8, one float32 scale per output row.

A worked example for docs/plugins.md. For each quantized tensor ``W`` (shape [rows, cols]):
``W.int8`` holds ``round(W / scale)`` clipped to [-127, 127] and ``W.scale`` the float32
``scale = max(|W[row]|) / 127`` per row, so ``W ≈ W.int8 * W.scale[:, None]``.
"""

from __future__ import annotations

import fnmatch

from modelbuild.api import OptionSpec, Output, hookimpl

__version__ = "1.0.0"


class Int8Rowwise:
    name = "int8-rowwise"
    version = __version__  # enters the cache key: bump it when the output changes
    summary = "int8 weights with a float32 scale per row (safetensors)"
    format = "safetensors"
    types = ("int8-rowwise",)
    options = (OptionSpec("keep", list, help="tensor-name patterns left in full precision"),)

    def quantize(self, files, qtype, options, ctx):
        import numpy as np
        from safetensors import safe_open
        from safetensors.numpy import save_file

        keep = options.get("keep", [])
        out = []
        for f in files:
            if not f.path.endswith(".safetensors"):
                out.append(f)  # config.json, tokenizer.json…: passed through unchanged
                continue
            tensors = {}
            with safe_open(f.source, framework="numpy") as src:
                metadata = src.metadata()
                for name in src.keys():
                    w = src.get_tensor(name)
                    if w.ndim != 2 or w.dtype.kind != "f" or any(fnmatch.fnmatch(name, p) for p in keep):
                        tensors[name] = w
                        continue
                    w32 = w.astype(np.float32)
                    scale = np.abs(w32).max(axis=1) / 127.0
                    scale[scale == 0] = 1.0
                    tensors[f"{name}.int8"] = np.clip(np.rint(w32 / scale[:, None]), -127, 127).astype(np.int8)
                    tensors[f"{name}.scale"] = scale.astype(np.float32)
                    ctx.advance(w.nbytes)
            target = ctx.output_path(f.path)
            save_file(tensors, target, metadata=metadata)
            out.append(Output(f.path, target))
        return out


@hookimpl
def modelbuild_register_quantizers(registry):
    registry.add(Int8Rowwise())
