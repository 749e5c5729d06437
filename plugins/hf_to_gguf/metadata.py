"""The ``general.*`` keys: who the model is (name, base name, size label, finetune,
version, organization), its license and tags, where it came from, and the sampling
settings it recommends, from the checkpoint's own files.

The rules are those of gguf-py's ``gguf.Metadata`` (``Metadata.load`` and
``Metadata.get_model_id_components``, what llama.cpp's ``convert_hf_to_gguf.py`` runs),
re-stated here on the converter's inputs: the model set's files, not a directory on disk.
In order of precedence:

1. ``--name`` (``general.name`` only; llama.cpp's ``--model-name``);
2. the YAML front matter of ``README.md`` (the model card): ``name``/``model_name``,
   ``author``/``model_creator``, ``version``, ``organization``, ``description``,
   ``finetune``, ``basename``/``model_type``, ``size_label``, ``url``/``doi``/``uuid``/
   ``repo_url`` (the ``general.source.*`` keys, each also as ``model_*``), ``license``
   (a list is joined with commas), ``license_name``, ``license_link``, ``tags`` then
   ``pipeline_tag``, ``languages`` then ``language``, ``base_model`` and ``datasets``;
3. ``config.json``'s ``_name_or_path`` when it is a model id (``org/Name-7B-Chat``, at
   most one ``/``), split into name, organization, base name, size label, finetune and
   version;
4. the name of the checkpoint's directory in the model set, split the same way. A
   checkpoint at the root of the model set has no directory name (llama.cpp would use the
   directory it reads from, which is not part of the conversion's cache key, so it is not
   used here): the name is then ``model``;
5. ``general.size_label`` from the parameter count of the tensors written
   (``gguf.size_label``: ``156K``, ``7.2B``, ``8x7.2B``).

``generation_config.json``'s ``top_k``, ``top_p``, ``min_p``, ``temperature``,
``xtc_*``, ``penalty_*`` (``penalty_repeat`` else Hugging Face's ``repetition_penalty``,
as the gguf-py of llama.cpp's tree reads it) and ``mirostat*`` become ``general.sampling.*``.

The model card is ``README.md`` beside config.json: the core hands a converter every
README listed with ``DOC`` (as context, never output), and one listed with ``CONFIG``
is in the model set itself. Without one, the name comes from config.json or the directory.

Where gguf-py would fail (a README whose front matter is not YAML, a value that is not a
string where a string is expected), the converter logs a warning and uses what it can:
a README is documentation, not worth failing a conversion over.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- names -------------------------------------------------------------------------------------

_VERSION = re.compile(r"(v|iter)?\d+([.]\d+)*", re.IGNORECASE)
_QUANT_TYPE = re.compile(r"i?q\d(_\w)*|b?fp?(16|32)", re.IGNORECASE)
_SIZE = re.compile(r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)", re.IGNORECASE)
_FINETUNE = re.compile(r"chat|instruct|vision|lora", re.IGNORECASE)
_NOT_TITLED = re.compile(r"^(v\d+(?:\.\d+)*|\d.*)$")


def title(text: str) -> str:
    """A model id part as a title: ``tiny-llama`` → ``Tiny Llama``; acronyms, mixed case,
    versions (``v0.1``) and words starting with a digit are kept as they are."""
    words = text.strip().replace("-", " ").split()
    return " ".join(w.title() if w.islower() and not _NOT_TITLED.match(w) else w for w in words)


@dataclass(frozen=True)
class NameParts:
    """What a model id says: ``meta-llama/Llama-2-7b-chat-hf`` → name ``Llama-2-7b-chat-hf``,
    organization ``meta-llama``, base name ``Llama-2``, size label ``7B``, finetune
    ``chat-hf``."""

    name: str | None = None
    organization: str | None = None
    basename: str | None = None
    finetune: str | None = None
    version: str | None = None
    size_label: str | None = None


def _size_part(part: str, total_params: int, kinds: set[str]) -> str:
    """A size-like part normalised (``7b`` → ``7B``, bloom's ``7b1`` → ``7.1B``); one far
    from the parameter count is a context length (``4k``), so a finetune."""
    part = part.replace("_", ".")
    if part[-1].isdecimal():  # bloom-7b1: the digit after the unit is a decimal
        part = part[:-2] + "." + part[-1] + part[-2]
    if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
        part = part[:-1] + part[-1].upper()
    if total_params:
        try:
            label_params = float(part[:-1]) * pow(1000, " KMBT".find(part[-1]))
        except ValueError:  # "8x7B", "small": kept as a size label
            pass
        else:
            far = (label_params < abs(total_params) // 8 if total_params < 0
                   else abs(label_params - total_params) > 7 * total_params // 8)
            if far:
                kinds.add("finetune")
                part = part[:-1] + part[-1].lower()
    if not kinds:
        kinds.add("size_label")
    return part


def name_parts(model_id: str | None, total_params: int = 0) -> NameParts:
    """Split a Hugging Face model id (or a directory name) into its named parts, as
    gguf-py's ``Metadata.get_model_id_components`` does."""
    if model_id is None:
        return NameParts()
    if " " in model_id:  # a plain sentence: a name, nothing more
        return NameParts(name=model_id)
    org, sep, full = model_id.partition("/")
    organization: str | None = org if sep else None
    if not sep:
        full = model_id
    if organization and organization.startswith("."):  # "./model", "../model"
        organization = None

    parts = [p for p in full.split("-") if p]
    kinds: list[set[str]] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if _VERSION.fullmatch(part):
            kinds[i].add("version")
        elif _QUANT_TYPE.fullmatch(part):
            kinds[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and _SIZE.fullmatch(part):
            parts[i] = _size_part(part, total_params, kinds[i])
        elif i > 0 and _FINETUNE.fullmatch(part):
            kinds[i].add("type" if total_params < 0 and part.lower() == "lora" else "finetune")

    # a numeric size label makes word sizes ("mini", "large") part of the name instead
    if any(c.isdecimal() for p, k in zip(parts, kinds) if "size_label" in k for c in p):
        for p, k in zip(parts, kinds):
            if "size_label" in k and p.isalpha():
                k.discard("size_label")

    leading = True  # the base name: the leading plain words and versions
    for p, k in zip(parts, kinds):
        if leading and ((not k and p[0].isalpha()) or "version" in k):
            k.add("basename")
            continue
        leading = False
        if not k:
            k.add("finetune")
    for k in reversed(kinds):  # a trailing version is the version, not the base name
        if "basename" in k and len(k) > 1:
            k.discard("basename")
        else:
            break

    def joined(kind: str, unique: bool = False) -> str | None:
        chosen = [p for p, k in zip(parts, kinds) if kind in k and (kind != "version" or "basename" not in k)]
        if unique:
            chosen = list(dict.fromkeys(chosen))
        return "-".join(chosen) or None

    basename, size_label = joined("basename"), joined("size_label", unique=True)
    finetune, version = joined("finetune"), joined("version")
    if size_label is None and finetune is None and version is None:
        basename = None  # too ambiguous to say what the base name is
    return NameParts(full, organization, basename, finetune, version, size_label)


# -- parameter count ---------------------------------------------------------------------------


def parameter_counts(tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) of the tensors written, by GGUF name and
    shape, as ``GGUFWriter.get_total_parameter_count`` counts them."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in tensors:
        size = 1
        for d in shape:
            size *= d
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors if n_expert_tensors else 0)


def _rounded(n: int, min_digits: int = 2) -> str:
    if n > 1e12:
        scaled, unit = n * 1e-12, "T"
    elif n > 1e9:
        scaled, unit = n * 1e-9, "B"
    elif n > 1e6:
        scaled, unit = n * 1e-6, "M"
    else:
        scaled, unit = n * 1e-3, "K"
    decimals = max(min_digits - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{decimals}f}{unit}"


def size_label(total: int, shared: int, expert: int, expert_count: int) -> str:
    """``gguf.size_label``: ``156K``, ``1.1B``, ``8x7.2B`` (experts × parameters per expert)."""
    if expert_count > 0:
        return f"{expert_count}x{_rounded(abs(shared) + abs(expert))}"
    return _rounded(abs(total))


# -- the model card ----------------------------------------------------------------------------


def model_card(text: str, log: Callable[[str], None], label: str) -> dict[str, Any]:
    """The YAML front matter of a README: between a first line ``---`` and the next line
    ``---`` (or the end). Without front matter, or with front matter that is not a YAML
    mapping, nothing (and a warning for YAML that does not parse)."""
    lines = text.splitlines()
    if not lines or lines[0] != "---":
        return {}
    body: list[str] = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    yaml_text = "\n".join(body) + "\n"
    # as gguf-py: the Norway problem (a language list item "no" is Norwegian, not False),
    # and tabs, which YAML does not allow for indentation
    yaml_text = yaml_text.replace("- no\n", '- "no"\n').replace("\t", "  ")
    import yaml  # gguf-py's own dependency

    try:
        doc = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        log(f"warning: hf-to-gguf: {label}: the front matter is not valid YAML ({exc}); not used")
        return {}
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        log(f"warning: hf-to-gguf: {label}: the front matter is YAML {type(doc).__name__}, not a mapping; not used")
        return {}
    return doc


# -- the metadata ------------------------------------------------------------------------------

# (general.sampling.* key, generation_config.json keys (the first present wins), GGUF type)
_SAMPLING: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("sequence", ("sequence",), "str"), ("top_k", ("top_k",), "int"), ("top_p", ("top_p",), "float"),
    ("min_p", ("min_p",), "float"), ("xtc_probability", ("xtc_probability",), "float"),
    ("xtc_threshold", ("xtc_threshold",), "float"), ("temp", ("temperature",), "float"),
    ("penalty_last_n", ("penalty_last_n",), "int"),
    ("penalty_repeat", ("penalty_repeat", "repetition_penalty"), "float"),
    ("mirostat", ("mirostat",), "int"), ("mirostat_tau", ("mirostat_tau",), "float"),
    ("mirostat_eta", ("mirostat_eta",), "float"),
)
# model card key → field, in gguf-py's order: the first found wins
_CARD_FIELDS = (
    ("name", "name"), ("author", "author"), ("version", "version"), ("organization", "organization"),
    ("description", "description"), ("finetune", "finetune"), ("basename", "basename"),
    ("size_label", "size_label"), ("source_url", "url"), ("source_doi", "doi"), ("source_uuid", "uuid"),
    ("source_repo_url", "repo_url"),
    ("name", "model_name"), ("author", "model_author"), ("version", "model_version"),
    ("organization", "model_organization"), ("description", "model_description"),
    ("finetune", "model_finetune"), ("basename", "model_basename"), ("size_label", "model_size_label"),
    ("source_url", "model_url"), ("source_doi", "model_doi"), ("source_uuid", "model_uuid"),
    ("source_repo_url", "model_repo_url"),
    ("author", "model_creator"), ("basename", "model_type"),
)
# the string keys, in the order llama.cpp writes them
_STRING_KEYS = (
    ("name", "general.name"), ("author", "general.author"), ("version", "general.version"),
    ("organization", "general.organization"), ("finetune", "general.finetune"),
    ("basename", "general.basename"), ("description", "general.description"),
    ("quantized_by", "general.quantized_by"), ("size_label", "general.size_label"),
    ("license", "general.license"), ("license_name", "general.license.name"),
    ("license_link", "general.license.link"), ("url", "general.url"), ("doi", "general.doi"),
    ("uuid", "general.uuid"), ("repo_url", "general.repo_url"), ("source_url", "general.source.url"),
    ("source_doi", "general.source.doi"), ("source_uuid", "general.source.uuid"),
    ("source_repo_url", "general.source.repo_url"),
)
_ENTRY_KEYS = ("name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url")
_HF_URL = re.compile(r"https?://huggingface.co/([^/]+/[^/]+)$")


@dataclass
class Metadata:
    """The ``general.*`` values of one conversion (None: not written)."""

    name: Any = None
    author: Any = None
    version: Any = None
    organization: Any = None
    finetune: Any = None
    basename: Any = None
    description: Any = None
    quantized_by: Any = None
    size_label: Any = None
    license: Any = None
    license_name: Any = None
    license_link: Any = None
    url: Any = None
    doi: Any = None
    uuid: Any = None
    repo_url: Any = None
    source_url: Any = None
    source_doi: Any = None
    source_uuid: Any = None
    source_repo_url: Any = None
    base_models: list[dict[str, Any]] | None = None
    datasets: list[dict[str, Any]] | None = None
    tags: list[Any] | None = None
    languages: list[Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)

    def fill(self, parts: NameParts) -> None:
        """Set what *parts* says where nothing is set yet (name and organization as titles)."""
        if self.name is None and parts.name is not None:
            self.name = title(parts.name)
        if self.organization is None and parts.organization is not None:
            self.organization = title(parts.organization)
        for attr in ("basename", "finetune", "version", "size_label"):
            if getattr(self, attr) is None and getattr(parts, attr) is not None:
                setattr(self, attr, getattr(parts, attr))

    def keys(self, log: Callable[[str], None]) -> list[tuple[str, Any]]:
        """The keys, in llama.cpp's order (the sampling settings first)."""
        import gguf

        out: list[tuple[str, Any]] = []
        for key, value in self.sampling.items():
            out.append((f"general.sampling.{key}", value))

        def text(key: str, value: Any) -> str:
            if not isinstance(value, str):
                log(f"warning: hf-to-gguf: {key} is {type(value).__name__} {value!r} in the model card; "
                    f"written as text")
                value = str(value)
            return value

        for attr, key in _STRING_KEYS:
            value = getattr(self, attr)
            if value is None:
                continue
            if attr == "license" and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            out.append((key, text(key, value)))
        for kind, entries in (("base_model", self.base_models), ("dataset", self.datasets)):
            if entries is None:
                continue
            out.append((f"general.{kind}.count", gguf.GGUFValue(len(entries), gguf.GGUFValueType.UINT32)))
            for i, entry in enumerate(entries):
                for k in _ENTRY_KEYS:
                    if entry.get(k) is not None:
                        key = f"general.{kind}.{i}.{k}"
                        out.append((key, text(key, entry[k])))
        for attr, key in (("tags", "general.tags"), ("languages", "general.languages")):
            values = getattr(self, attr)
            if values:  # gguf-py writes no empty array
                out.append((key, [text(key, v) for v in values]))
        return out


def _sources(value: Any, total_params: int) -> list[dict[str, Any]]:
    """``base_model`` / ``datasets`` entries: a Hugging Face id or URL becomes name,
    organization, version and repository URL; a mapping is taken as it is."""
    items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    out: list[dict[str, Any]] = []
    for item in items:
        entry: dict[str, Any] = {}
        if isinstance(item, dict):
            entry = item
        elif isinstance(item, str):
            model_id: str | None = item
            if item.startswith(("http://", "https://", "ssh://")):
                entry["repo_url"] = item
                found = _HF_URL.match(item) if "huggingface.co" in item else None
                model_id = found.group(1) if found else None
            if model_id is not None:
                parts = name_parts(model_id, total_params)
                if parts.name is not None:
                    entry["name"] = title(parts.name)
                if parts.organization is not None:
                    entry["organization"] = title(parts.organization)
                if parts.version is not None:
                    entry["version"] = parts.version
                if entry.get("repo_url") is None and parts.organization is not None and parts.name is not None:
                    entry["repo_url"] = f"https://huggingface.co/{parts.organization}/{parts.name}"
        out.append(entry)  # an entry of another type stays empty, as gguf-py counts it
    return out


def _sampling(gen_config: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import gguf

    out: dict[str, Any] = {}
    for key, sources, kind in _SAMPLING:
        # present, even as null, the first key wins (gguf-py's nested gen_config.get)
        source = next((k for k in sources if k in gen_config), None)
        value = gen_config.get(source) if source is not None else None
        if value is None:
            continue
        if kind == "str":
            ok = isinstance(value, str)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        else:  # a whole float is accepted where an integer is expected (top_k: 50.0)
            ok = kind == "float" or float(value).is_integer()
        if not ok:
            log(f"warning: hf-to-gguf: generation_config.json: {source}={value!r} is not a {kind}; not written")
            continue
        if kind == "int":
            out[key] = gguf.GGUFValue(int(value), gguf.GGUFValueType.INT32)
        elif kind == "float":
            out[key] = gguf.GGUFValue(float(value), gguf.GGUFValueType.FLOAT32)
        else:
            out[key] = value
    return out


def read_metadata(*, card: dict[str, Any], config: dict[str, Any], gen_config: dict[str, Any] | None,
                  directory_name: str | None, total_params: int, size_label_fallback: str | None,
                  name_option: str | None, log: Callable[[str], None]) -> Metadata:
    """The metadata of one checkpoint, from its model card, config.json,
    generation_config.json and directory name (see the module docstring)."""
    m = Metadata()
    if gen_config:
        m.sampling = _sampling(gen_config, log)

    for attr, key in _CARD_FIELDS:
        if key in card and getattr(m, attr) is None:
            setattr(m, attr, card[key])
    for attr, key in (("base_models", ("base_model", "base_models", "base_model_sources")),
                      ("datasets", ("datasets", "dataset", "dataset_sources"))):
        if any(k in card for k in key):  # the first key present, even when its value is null
            value = card.get(key[0], card.get(key[1], card.get(key[2])))
            setattr(m, attr, _sources(value, total_params) if value is not None else [])
    for attr, key in (("license", "license"), ("license_name", "license_name"), ("license_link", "license_link")):
        if key in card and getattr(m, attr) is None:
            setattr(m, attr, card[key])
    for attr, card_keys in (("tags", ("tags", "pipeline_tag")), ("languages", ("languages", "language"))):
        for key in card_keys:
            value = card.get(key)
            if value is None:
                continue
            current = getattr(m, attr) or []
            if isinstance(value, str):
                current.append(value)
            elif isinstance(value, list):
                current.extend(value)
            setattr(m, attr, current)

    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.count("/") <= 1:  # a model id, not a local path
        m.fill(name_parts(name_or_path, total_params))
    if directory_name:
        m.fill(name_parts(directory_name, total_params))

    if name_option:
        m.name = name_option
    if m.name is None:
        m.name = "model"
    if m.size_label is None and size_label_fallback is not None:
        m.size_label = size_label_fallback
    return m
