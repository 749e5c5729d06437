"""How an Ollama model's template, system message, parameters, messages and licenses ride in
a ModelPack artifact: the one way, shared by the ``ollama`` frontend (an Ollama Modelfile)
and by ``FROM ollama://…`` (a model from an Ollama registry). docs/ollama.md ("The
carriage") is the normative description; this module is its implementation.

Everything rides in manifest annotations (a build description's ``labels``), under
``dev.modelbuild.ollama.``:

=============================  ===============================================================
key                            value
=============================  ===============================================================
``….template``                 the template text, exactly as Ollama stores it
``….system``                   the system message (absent: none; Ollama stores no empty one)
``….params``                   canonical JSON object of the parameters, typed as Ollama
                               types them (integers, numbers, booleans; ``stop`` a list of
                               strings): what Ollama's ``application/vnd.ollama.image.params``
                               blob holds
``….messages``                 canonical JSON list of ``{"content": …, "role": …}``
``….license``                  canonical JSON list of license texts (a LICENSE may repeat)
``….adapter``                  the adapter's path in the artifact; a canonical JSON list
                               when there are several, or when the one path starts with ``[``
``….draft``                    the draft model's path in the artifact, likewise
``….requires``                 the Ollama version the model needs (``0.14.0``)
``….renderer``, ``….parser``   Ollama's renderer and parser names
=============================  ===============================================================

Canonical JSON is ``json.dumps(value, sort_keys=True, separators=(",", ":"))``: one text
per value, so equal values give equal annotations (and digests). A number parameter is a
JSON number with a fraction or exponent (``1.0``, not ``1``) holding the shortest decimal
that reads back as the same 32-bit float (Ollama keeps them as Go ``float32``): ``0.7`` stays
``0.7``. Parameter names and types are Ollama's ``api.Options`` and ``api.Runner`` (api/types.go),
typed as ``api.FormatParams`` types them, at ollama/ollama commit
fb30760996871fa9460115c753afd2c60d4ab0f7. Errors are :class:`~modelbuild.api.ModelfileError`
without a location: the frontend adds the line, a source reports them for the reference.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelbuild.api import ModelfileError

PREFIX = "dev.modelbuild.ollama."
TEMPLATE = PREFIX + "template"
SYSTEM = PREFIX + "system"
PARAMS = PREFIX + "params"
MESSAGES = PREFIX + "messages"
LICENSE = PREFIX + "license"
ADAPTER = PREFIX + "adapter"
DRAFT = PREFIX + "draft"
REQUIRES = PREFIX + "requires"
RENDERER = PREFIX + "renderer"
PARSER = PREFIX + "parser"
KEYS = frozenset({TEMPLATE, SYSTEM, PARAMS, MESSAGES, LICENSE, ADAPTER, DRAFT, REQUIRES, RENDERER, PARSER})

# api.Runner then api.Options: each field's json name → the Go type FormatParams parses it as
PARAMETER_TYPES: Mapping[str, type] = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool, "num_thread": int,
    "draft_num_predict": int,
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "stop": list,
}
# parser.go's deprecatedParameters: Ollama warns and drops them
DEPRECATED_PARAMETERS = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
                         "mirostat", "mirostat_tau", "mirostat_eta")
ROLES = ("system", "user", "assistant")  # what a Modelfile's MESSAGE may name
BLOB_ROLES = ROLES + ("tool",)  # and what a stored conversation may also hold (the API's tool results)
MAX_BLOB = 1 << 20  # bytes of one params or messages blob
MAX_CONTEXT = 1 << 31  # tokens: the most a runtime description's context may be

_INT = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(s, 10, 64): no underscores, no prefix
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_FLT_MAX = (2 - 2.0 ** -23) * 2.0 ** 127
# an SPDX license identifier, or a LicenseRef-: one token, letters first, "+" for "or later"
_SPDX_ID = re.compile(r"(?:LicenseRef-[A-Za-z0-9.-]+|[A-Za-z][A-Za-z0-9.-]{0,62}[A-Za-z0-9]\+?)")
# a value for each parameter, for hints: Ollama's documented examples where it gives one
EXAMPLES: Mapping[str, str] = {
    "num_ctx": "4096", "num_batch": "512", "num_gpu": "1", "main_gpu": "0", "use_mmap": "true", "num_thread": "8",
    "draft_num_predict": "4", "num_keep": "4", "seed": "42", "num_predict": "42", "top_k": "40", "top_p": "0.9",
    "min_p": "0.05", "typical_p": "1.0", "repeat_last_n": "64", "temperature": "0.7", "repeat_penalty": "1.1",
    "presence_penalty": "0.0", "frequency_penalty": "0.0", "stop": '"AI assistant:"',
}


def canonical_json(value: Any) -> str:
    """The one JSON text of *value*: keys sorted, no blanks."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- parameters ---------------------------------------------------------------------------------
def check_parameter_name(name: str) -> type:
    """The type of parameter *name*; a ModelfileError with the closest name when Ollama has
    no such parameter (a deprecated one is the caller's: see DEPRECATED_PARAMETERS)."""
    kind = PARAMETER_TYPES.get(name)
    if kind is not None:
        return kind
    import difflib

    close = difflib.get_close_matches(name.lower(), list(PARAMETER_TYPES), n=1, cutoff=0.7) if len(name) <= 64 else []
    shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}…"
    hint = f"did you mean {close[0]}?" if close else f"Ollama's parameters: {', '.join(sorted(PARAMETER_TYPES))}"
    return _raise(f"unknown parameter {shown}", hint)


def parse_parameter(name: str, text: str) -> Any:
    """*text* typed as Ollama's FormatParams types parameter *name* (Go's strconv rules,
    nothing trimmed): an int, a float (a 32-bit float's shortest decimal), a bool, or for
    ``stop`` the string itself (the caller makes the list)."""
    kind = check_parameter_name(name)
    if kind is list:
        return text
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text)} characters)"
    example = f"e.g. PARAMETER {name} {EXAMPLES[name]}"
    if kind is int:
        if not _INT.fullmatch(text):
            return _raise(f"{name} takes a whole number, not {shown}", example)
        value = int(text)
        if not _INT64[0] <= value <= _INT64[1]:
            return _raise(f"{name} {shown} is out of range", "Ollama reads it as a 64-bit integer")
        return value
    if kind is float:
        if _SPECIAL.fullmatch(text):
            return _raise(f"{name} must be a finite number, not {shown}", "JSON, where Ollama keeps parameters, "
                                                                          "has no infinity or NaN")
        if _DECIMAL.fullmatch(text):
            number = float(text)
        elif _HEX.fullmatch(text):
            number = float.fromhex(text)
        else:
            return _raise(f"{name} takes a number, not {shown}", example)
        try:
            return float32(number)
        except OverflowError:
            return _raise(f"{name} {shown} is out of range", "Ollama reads it as a 32-bit float")
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return _raise(f"{name} takes true or false, not {shown}",
                  "Ollama reads it with Go's strconv.ParseBool: true, false, 1, 0, t, f, TRUE, FALSE, True, False")


def float32(number: float) -> float:
    """*number* rounded to a 32-bit float, as the shortest decimal that reads back as that
    float (what Go prints for a float32); OverflowError past the float32 range."""
    f32 = _round32(number)
    for digits in range(1, 10):
        shortest = float(f"{f32:.{digits}g}")
        try:
            if _round32(shortest) == f32:
                return shortest
        except OverflowError:  # 3.403e38: rounded up past the largest float32
            continue
    return f32  # pragma: no cover - nine significant digits always round-trip a float32


def _round32(number: float) -> float:
    """The float32 nearest *number*, as Go rounds: struct refuses what lies just past the
    largest float32 yet rounds to it (within half a unit in the last place)."""
    if abs(number) > _FLT_MAX:
        if not abs(number) < _FLT_MAX + 2.0 ** 103:
            raise OverflowError(f"{number} is out of the float32 range")
        number = _FLT_MAX if number > 0 else -_FLT_MAX
    return struct.unpack("<f", struct.pack("<f", number))[0]


def normalise_params(params: Mapping[str, Any], *, ignored: list[str] | None = None) -> dict[str, Any]:
    """A params object (a Modelfile's, or a decoded params blob) checked and typed: integers
    stay integers, numbers become float32 shortest decimals, ``stop`` a list of strings.
    Names Ollama would not read (deprecated, unknown to this version, or null) are left out
    and appended to *ignored*; a value of the wrong type is a ModelfileError."""
    out: dict[str, Any] = {}
    for name in sorted(params):
        value = params[name]
        kind = PARAMETER_TYPES.get(name)
        if kind is None or value is None:
            if ignored is not None:
                ignored.append(name)
            continue
        if kind is list:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                _raise(f"parameter {name} must be a list of strings, not {_json_type(value)}")
            out[name] = list(values)
        elif kind is bool:
            if not isinstance(value, bool):
                _raise(f"parameter {name} must be true or false, not {_json_type(value)}")
            out[name] = value
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                _raise(f"parameter {name} must be a whole number, not {_json_type(value)}")
            if not _INT64[0] <= value <= _INT64[1]:
                _raise(f"parameter {name} is out of range: {value}")
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or value in (float("inf"), float("-inf")):
                _raise(f"parameter {name} must be a finite number, not {_json_type(value)}")
            try:
                out[name] = float32(float(value))
            except OverflowError:
                _raise(f"parameter {name} is out of range for a 32-bit float: {value}")
    return out


def runtime_context(params: Mapping[str, Any]) -> int | None:
    """``num_ctx`` as a runtime context length (RUNTIME context=N), or None when unset or
    not a length a runtime description can carry (Ollama's 0 means its default)."""
    value = params.get("num_ctx")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONTEXT:
        return value
    return None


# -- messages and licenses ------------------------------------------------------------------------
def normalise_messages(messages: Any, *, roles: Sequence[str] = BLOB_ROLES) -> list[dict[str, Any]]:
    """A conversation checked: a list of objects, each with a string ``role`` among *roles*
    and a string ``content``. Other fields Ollama stored (``images``, ``tool_calls``,
    ``thinking``) are kept when set, and dropped when null or empty."""
    if not isinstance(messages, list):
        _raise(f"messages must be a list, not {_json_type(messages)}")
    out = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            _raise(f"message {n} is {_json_type(message)}, not an object")
        role, content = message.get("role"), message.get("content", "")
        if not isinstance(role, str) or role not in roles:
            _raise(f"message {n} has role {role!r}", f"one of {', '.join(roles)}")
        if not isinstance(content, str):
            _raise(f"message {n}'s content is {_json_type(content)}, not a string")
        out.append({k: v for k, v in message.items() if v not in (None, "", [], {}) or k in ("role", "content")}
                   | {"role": role, "content": content})
    return out


def spdx_licenses(texts: Iterable[str]) -> list[str]:
    """The license texts that are just an SPDX identifier (``MIT``, ``Apache-2.0``), trimmed,
    each once: what the ModelPack ``descriptor.licenses`` gets."""
    out: list[str] = []
    for text in texts:
        token = text.strip()
        if _SPDX_ID.fullmatch(token) and token not in out:
            out.append(token)
    return out


def paths_value(paths: Sequence[str]) -> str:
    """The ``adapter``/``draft`` annotation value of *paths* (artifact paths)."""
    if len(paths) == 1 and not paths[0].startswith("["):
        return paths[0]
    return canonical_json(list(paths))


def read_paths(value: str) -> list[str]:
    """The artifact paths an ``adapter``/``draft`` annotation names."""
    if value.startswith("["):
        paths = json.loads(value)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            _raise("an adapter or draft annotation that starts with [ must be a JSON list of paths")
        return paths
    return [value]


# -- annotations ---------------------------------------------------------------------------------
def labels_for(*, template: str | None = None, system: str | None = None, params: Mapping[str, Any] | None = None,
               messages: Sequence[Mapping[str, Any]] | None = None, licenses: Sequence[str] = (),
               adapters: Sequence[str] = (), drafts: Sequence[str] = (), requires: str | None = None,
               renderer: str | None = None, parser: str | None = None) -> dict[str, str]:
    """The annotations for checked values (``params`` as :func:`normalise_params` returns
    them): a key for each value given, none for what is None or empty (an empty template
    is kept: Ollama stores it, and it replaces a base model's)."""
    labels: dict[str, str] = {}
    if template is not None:
        labels[TEMPLATE] = template
    if system:
        labels[SYSTEM] = system
    if params:
        labels[PARAMS] = canonical_json(dict(params))
    if messages:
        labels[MESSAGES] = canonical_json([dict(m) for m in messages])
    if licenses:
        labels[LICENSE] = canonical_json(list(licenses))
    if adapters:
        labels[ADAPTER] = paths_value(adapters)
    if drafts:
        labels[DRAFT] = paths_value(drafts)
    for key, value in ((REQUIRES, requires), (RENDERER, renderer), (PARSER, parser)):
        if value:
            labels[key] = value
    return labels


def labels_from_blobs(template: str | None, system: str | None, params: bytes | None, messages: bytes | None,
                      licenses: Sequence[str], *, adapters: Sequence[str] = (), drafts: Sequence[str] = (),
                      ignored: list[str] | None = None) -> dict[str, str]:
    """The annotations for an Ollama model as its registry stores it: the template, system,
    params, messages and license blobs (the JSON ones as bytes, validated and made
    canonical here), and the artifact paths of its adapter and draft layers. Parameter names
    this Ollama version does not read are dropped into *ignored*, as Ollama drops them."""
    decoded_params = normalise_params(_blob_json(params, "params", dict), ignored=ignored) if params else {}
    decoded_messages = normalise_messages(_blob_json(messages, "messages", list)) if messages else []
    return labels_for(template=template, system=system, params=decoded_params, messages=decoded_messages,
                      licenses=list(licenses), adapters=adapters, drafts=drafts)


def layer_labels(base: Mapping[str, str], own: Mapping[str, str], *, clear_system: bool = False) -> dict[str, str]:
    """A Modelfile's annotations over its base model's, as ``ollama create`` layers a
    Modelfile over a ``FROM`` model: parameters merge name by name (the Modelfile's win;
    its ``stop`` list replaces the base's), licenses and adapters add up, anything else the
    Modelfile sets replaces the base's. *clear_system*: the Modelfile said ``SYSTEM ""``,
    which removes the base's system message. Keys outside the carriage pass through."""
    out = dict(base)
    for key, value in own.items():
        if key == PARAMS and PARAMS in base:
            out[key] = canonical_json({**json.loads(base[PARAMS]), **json.loads(value)})
        elif key == LICENSE and LICENSE in base:
            out[key] = canonical_json(json.loads(base[LICENSE]) + json.loads(value))
        elif key == ADAPTER and ADAPTER in base:
            out[key] = paths_value(read_paths(base[ADAPTER]) + read_paths(value))
        else:
            out[key] = value
    if clear_system and SYSTEM not in own:
        out.pop(SYSTEM, None)
    return out


@dataclass(frozen=True)
class Carried:
    """What an artifact's annotations carry for Ollama, decoded (:func:`read_labels`)."""

    template: str | None = None
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[Mapping[str, Any]] = ()
    licenses: Sequence[str] = ()
    adapters: Sequence[str] = ()
    drafts: Sequence[str] = ()
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None


def read_labels(labels: Mapping[str, str]) -> Carried:
    """The carriage read back from an artifact's annotations, each JSON value checked."""
    def loaded(key: str, kind: type) -> Any:
        return _blob_json(labels[key].encode(), key.removeprefix(PREFIX), kind) if key in labels else kind()

    return Carried(
        template=labels.get(TEMPLATE), system=labels.get(SYSTEM),
        params=normalise_params(loaded(PARAMS, dict)), messages=normalise_messages(loaded(MESSAGES, list)),
        licenses=_strings(loaded(LICENSE, list), "license"),
        adapters=read_paths(labels[ADAPTER]) if ADAPTER in labels else [],
        drafts=read_paths(labels[DRAFT]) if DRAFT in labels else [],
        requires=labels.get(REQUIRES), renderer=labels.get(RENDERER), parser=labels.get(PARSER),
    )


# -- helpers -------------------------------------------------------------------------------------
def _blob_json(data: bytes, what: str, kind: type) -> Any:
    if len(data) > MAX_BLOB:
        _raise(f"the {what} blob is larger than {MAX_BLOB} bytes")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        _raise(f"the {what} blob is not JSON: {exc}")
    if not isinstance(value, kind):
        _raise(f"the {what} blob holds {_json_type(value)}, not {'an object' if kind is dict else 'a list'}")
    return value


def _strings(value: list[Any], what: str) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        _raise(f"the {what} annotation must be a list of strings")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _raise(message: str, hint: str | None = None) -> Any:
    raise ModelfileError(message, hint=hint)


__all__ = [
    "ADAPTER", "BLOB_ROLES", "Carried", "DEPRECATED_PARAMETERS", "DRAFT", "EXAMPLES", "KEYS", "LICENSE", "MAX_CONTEXT",
    "MESSAGES", "PARAMETER_TYPES", "PARAMS", "PARSER", "PREFIX", "RENDERER", "REQUIRES", "ROLES", "SYSTEM",
    "TEMPLATE", "canonical_json", "check_parameter_name", "float32", "labels_for", "labels_from_blobs",
    "layer_labels", "normalise_messages", "normalise_params", "parse_parameter", "read_labels", "read_paths",
    "paths_value", "runtime_context", "spdx_licenses",
]
