"""GGUF constants shared by the reader, the writer and the plugins: file layout, split keys,
value types, and the ggml types used without importing gguf."""

from __future__ import annotations

import re

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
SPLIT_PAD = 32  # gguf-split sizes tensors with GGML_PAD(nbytes, GGUF_DEFAULT_ALIGNMENT)
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# GGUF value types (gguf.GGUFValueType) and their struct codes
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 8, 9, 10, 11, 12
_SCALARS = {T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i",
            T_FLOAT32: "f", T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d"}
# ggml types by number (gguf.GGMLQuantizationType) used without importing gguf
G_F32, G_F16, G_BF16 = 0, 1, 30
_FLOAT_INPUTS = (G_F32, G_F16, G_BF16)
_PRECISION = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
              "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
# Keys whose integer value has a fixed type in llama.cpp (used when encoding plain ints).
_KEY_TYPES = {"general.alignment": T_UINT32, "general.file_type": T_UINT32,
              "general.quantization_version": T_UINT32, SPLIT_NO: T_UINT16, SPLIT_COUNT: T_UINT16,
              SPLIT_TENSORS: T_INT32}

COPY_CHUNK = 64 << 20
