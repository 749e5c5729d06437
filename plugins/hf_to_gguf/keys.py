"""GGUF keys: how the adapters' and the tokenizer's values are typed and encoded."""

from __future__ import annotations

from typing import Any

# GGUF value types (gguf.GGUFValueType)
_T_UINT32, _T_INT32, _T_FLOAT32, _T_BOOL, _T_STRING, _T_ARRAY = 4, 5, 6, 7, 8, 9
_T_UINT64, _T_INT64 = 10, 11


# -- GGUF keys ---------------------------------------------------------------------------------


def gguf_value(value: Any, key: str) -> tuple[int, bytes]:
    """(GGUF value type, encoded bytes) for an adapter's or the tokenizer's value."""
    from modelbuild_plugins.gguf_format import encode_value

    if hasattr(value, "type") and hasattr(value, "value") and hasattr(value, "sub_type"):  # gguf.GGUFValue
        vtype = int(value.type)
        sub = None if value.sub_type is None else int(value.sub_type)
        return vtype, encode_value(value.value, vtype, sub)
    vtype = _scalar_type(value, key)
    if vtype != _T_ARRAY:
        return vtype, encode_value(value, vtype)
    items = list(value)
    if not items:
        raise ValueError(f"{key}: an empty list needs its item type: give a gguf.GGUFValue")
    first = items[0]
    if isinstance(first, bool):
        sub = _T_BOOL
    elif isinstance(first, int):
        sub = _T_INT32
    elif isinstance(first, float):
        sub = _T_FLOAT32
    elif isinstance(first, str):
        sub = _T_STRING
    else:
        raise TypeError(f"{key}: no GGUF array type for {type(first).__name__} items")
    return _T_ARRAY, encode_value(items, _T_ARRAY, sub)


def _scalar_type(value: Any, key: str) -> int:
    if isinstance(value, bool):
        return _T_BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return _T_UINT32
        if -(2**31) <= value < 0:
            return _T_INT32
        return _T_UINT64 if value > 0 else _T_INT64
    if isinstance(value, float):
        return _T_FLOAT32
    if isinstance(value, str):
        return _T_STRING
    if isinstance(value, (list, tuple)):
        return _T_ARRAY
    raise TypeError(f"{key}: no GGUF type for {type(value).__name__}")
