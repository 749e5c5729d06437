"""The tokenizer: ``tokenizer.json`` (and its companions) read into the ``tokenizer.*`` keys:
vocabulary, token types, merges or scores, the pre-tokenizer, special tokens, chat template."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelbuild.api import FormatError

# gguf.TokenType
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# -- the tokenizer -----------------------------------------------------------------------------

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Split regexes (as tokenizer.json writes them) that llama.cpp implements, and its name for each.
PRE_TOKENIZER_REGEXES: dict[str, str] = {
    GPT2_REGEX: "gpt-2",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "llama-bpe",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "qwen2",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "qwen35",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "tekken",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "gpt-4o",
}
SUPPORTED_PRE_TOKENIZERS = (
    "ByteLevel(use_regex=true) → gpt-2",
    "Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)] → starcoder",
    "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)] with the regex of "
    + ", ".join(f"{name}" for name in PRE_TOKENIZER_REGEXES.values()),
)
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")
# gguf.Keys.Tokenizer's names for them (note llama.cpp's spelling of "seperator")
SPECIAL_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                   "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
                   "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id"}
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class Vocab:
    """What goes under ``tokenizer.*``."""

    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None

    def keys(self) -> list[tuple[str, Any]]:
        import gguf

        out: list[tuple[str, Any]] = [("tokenizer.ggml.model", self.model), ("tokenizer.ggml.pre", self.pre),
                                      ("tokenizer.ggml.tokens", self.tokens)]
        if self.scores is not None:
            out.append(("tokenizer.ggml.scores",
                        gguf.GGUFValue(self.scores, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)))
        out.append(("tokenizer.ggml.token_type",
                    gguf.GGUFValue(self.types, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)))
        if self.add_space_prefix is not None:
            out.append(("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        if self.merges:
            out.append(("tokenizer.ggml.merges", self.merges))
        for typ, tid in self.special_ids.items():
            out.append((SPECIAL_ID_KEYS[typ], gguf.GGUFValue(tid, gguf.GGUFValueType.UINT32)))
        for typ, value in self.add_special.items():
            out.append((f"tokenizer.ggml.add_{typ}_token", bool(value)))
        template = self.chat_template
        if isinstance(template, list):
            default = None
            names = []
            for choice in template:
                if not isinstance(choice, dict):
                    continue
                name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
                text = choice.get("template")
                if name and isinstance(text, str):
                    if name == "default":
                        default = text
                    else:
                        names.append(name)
                        out.append((f"tokenizer.chat_template.{name}", text))
            if names:
                out.append(("tokenizer.chat_templates", names))
            template = default
        if isinstance(template, str):
            out.append(("tokenizer.chat_template", template))
        return out


def looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special``."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _steps(node: Any, list_key: str) -> list[dict[str, Any]]:
    """A pre-tokenizer/normalizer as a flat list of steps (Sequence flattened)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        return [{"type": repr(node)}]
    if node.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for item in node.get(list_key) or []:
            out.extend(_steps(item, list_key))
        return out
    return [node]


def _describe(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "none"
    parts = []
    for s in steps:
        args = {k: v for k, v in s.items() if k != "type"}
        if "pattern" in args and isinstance(args["pattern"], dict):
            args["pattern"] = next(iter(args["pattern"].values()), "")
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in ("trim_offsets",))
        parts.append(f"{s.get('type')}({inner})")
    return "Sequence[" + ", ".join(parts) + "]" if len(parts) > 1 else parts[0]


def derive_pre(tok: dict[str, Any], label: str) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level tokenizer, from its structure."""
    steps = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    types = [s.get("type") for s in steps]

    def byte_level_ok(s: dict[str, Any]) -> None:
        if s.get("add_prefix_space"):
            raise FormatError(label, "a ByteLevel pre-tokenizer with add_prefix_space=true: llama.cpp's BPE "
                                     "tokenizer cannot add a prefix space, and would tokenize differently",
                              hint="pass --pre=NAME to convert anyway")

    if types == ["ByteLevel"]:
        byte_level_ok(steps[0])
        if steps[0].get("use_regex", True):
            return "gpt-2"
    elif types == ["Digits", "ByteLevel"]:
        byte_level_ok(steps[1])
        if steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "starcoder"
    elif types == ["Split", "ByteLevel"]:
        split, bl = steps
        byte_level_ok(bl)
        pattern = split.get("pattern") or {}
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if (regex in PRE_TOKENIZER_REGEXES and split.get("behavior") == "Isolated" and not split.get("invert")
                and not bl.get("use_regex", True)):
            return PRE_TOKENIZER_REGEXES[regex]
    raise FormatError(label, f"pre-tokenizer {_describe(steps)} is not one llama.cpp implements; supported: "
                             + "; ".join(SUPPORTED_PRE_TOKENIZERS),
                      hint="pass --pre=NAME to name llama.cpp's pre-tokenizer yourself")


def _is_sentencepiece_bpe(tok: dict[str, Any]) -> bool:
    model = tok.get("model") or {}
    if not model.get("byte_fallback"):
        return False
    norm = _steps(tok.get("normalizer"), "normalizers")
    pre = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    prepends = any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in norm)
    replaces = any(s.get("type") == "Replace" and (s.get("pattern") or {}).get("String") == " "
                   and s.get("content") == "▁" for s in norm)
    metaspace = [s for s in pre if s.get("type") == "Metaspace"]
    if pre and not (len(pre) == 1 and metaspace):
        return False
    return replaces or prepends or bool(metaspace)


def _merges(model: dict[str, Any], label: str) -> list[str]:
    merges = model.get("merges") or []
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in m))
        else:
            raise FormatError(label, f"model.merges holds {m!r}, neither \"a b\" nor [\"a\", \"b\"]")
    return out


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def read_vocab(tok: dict[str, Any], n_vocab: int | None, *, label: str, tok_config: dict[str, Any] | None,
               config: dict[str, Any], gen_config: dict[str, Any] | None, chat_template_alt: Any,
               pre_override: str | None, log: Any) -> Vocab:
    model = tok.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(label, "no model.vocab: not a tokenizers tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise FormatError(label, f"a {model.get('type')} tokenizer model is not supported",
                          hint="hf-to-gguf converts BPE tokenizers (byte-level, or SentencePiece-style with byte "
                               "fallback)")
    steps = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    if any(s.get("type") == "ByteLevel" for s in steps):
        kind = "gpt2"
        normalizer = _steps(tok.get("normalizer"), "normalizers")
        if any(s.get("type") != "NFC" for s in normalizer):
            raise FormatError(label, f"normalizer {_describe(normalizer)} is not supported for a byte-level "
                                     f"tokenizer (llama.cpp does not normalize; NFC alone is accepted)")
        pre = pre_override or derive_pre(tok, label)
    elif _is_sentencepiece_bpe(tok):
        kind = "llama"
        for s in steps:
            if s.get("split"):
                raise FormatError(label, "a Metaspace pre-tokenizer with split=true: llama.cpp's SentencePiece "
                                         "tokenizer does not split words")
        pre = "default"
    else:
        raise FormatError(label, f"tokenizer with pre-tokenizer {_describe(steps)} and normalizer "
                                 f"{_describe(_steps(tok.get('normalizer'), 'normalizers'))} is not supported",
                          hint="hf-to-gguf converts byte-level BPE (GPT-2, Llama 3, Qwen2) and SentencePiece-style "
                               "BPE with byte fallback (Llama 2, Mistral)")

    vocab: dict[str, int] = model["vocab"]
    added = {}
    for a in tok.get("added_tokens") or []:
        if isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str):
            added[a["id"]] = a
    by_id: dict[int, str] = {}
    for text, tid in vocab.items():
        if not isinstance(tid, int) or tid < 0:
            raise FormatError(label, f"token {text!r} has id {tid!r}")
        if tid in by_id:
            raise FormatError(label, f"tokens {by_id[tid]!r} and {text!r} share id {tid}")
        by_id[tid] = text
    for tid, a in added.items():
        by_id[tid] = a["content"]
    largest = max(by_id) + 1 if by_id else 0
    if n_vocab is None:
        n_vocab = largest
    elif largest > n_vocab:
        raise FormatError("config.json", f"vocab_size={n_vocab} is smaller than the tokenizer's {largest} token ids "
                                         f"(tokenizer.json)")

    merges = _merges(model, label)
    first_merge: dict[str, int] = {}
    if kind == "llama":
        for rank, m in enumerate(merges):
            a, _, b = m.partition(" ")
            first_merge.setdefault(a + b, rank)

    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    seen: dict[str, int] = {}
    for i in range(n_vocab):
        text = by_id.get(i)
        score = 0.0
        if text is None:
            text, ttype, score = f"[PAD{i}]", TOKEN_UNUSED, -1000.0
        elif i in added:
            a = added[i]
            if a.get("special") or looks_special(text):
                ttype = TOKEN_CONTROL
            else:
                text = text.replace("▁", " ")  # llama.cpp's converter pre-normalizes user-defined spaces
                ttype = TOKEN_USER_DEFINED
            score = -1000.0
        elif kind == "llama" and _BYTE_TOKEN.match(text):
            ttype = TOKEN_BYTE
        else:
            ttype = TOKEN_NORMAL
            if text in first_merge:
                score = -float(first_merge[text])
        if text in seen:
            raise FormatError(label, f"ids {seen[text]} and {i} both have the text {text!r}: llama.cpp needs "
                                     f"distinct token texts")
        if not text:
            raise FormatError(label, f"token {i} is empty")
        seen[text] = i
        tokens.append(text)
        types.append(ttype)
        scores.append(score)

    v = Vocab(kind, pre, tokens, types)
    if kind == "gpt2":
        if not merges:
            raise FormatError(label, "a byte-level BPE tokenizer without merges")
        v.merges = merges
    else:
        v.scores = scores
        norm = _steps(tok.get("normalizer"), "normalizers")
        prefix = any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in norm)
        for s in steps:
            if s.get("type") == "Metaspace":
                prefix = s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
        if tok_config and isinstance(tok_config.get("add_prefix_space"), bool):
            prefix = tok_config["add_prefix_space"]
        v.add_space_prefix = prefix
    _special_tokens(v, tok, tok_config, config, gen_config, n_vocab, log)
    template = (tok_config or {}).get("chat_template", chat_template_alt)
    if isinstance(template, (str, list)):
        v.chat_template = template
    return v


def _special_tokens(v: Vocab, tok: dict[str, Any], tok_config: dict[str, Any] | None, config: dict[str, Any],
                    gen_config: dict[str, Any] | None, n_vocab: int, log: Any) -> None:
    """gguf-py's SpecialVocab, reading the same files."""
    tc = dict(tok_config or {})
    added = [a for a in tok.get("added_tokens") or [] if isinstance(a, dict)]

    def set_id(typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in v.special_ids:
            return
        if 0 <= tid < n_vocab:
            v.special_ids[typ] = tid
        else:
            log(f"warning: hf-to-gguf: {typ} token id {tid} is outside the vocabulary of {n_vocab}; not written")

    bos = _token_text(tc.get("bos_token")) or _token_text(tc.get("cls_token"))
    eos = _token_text(tc.get("eos_token")) or _token_text(tc.get("sep_token"))
    post = tok.get("post_processor")
    if isinstance(post, dict):
        processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        for p in processors:
            if not isinstance(p, dict):
                continue
            if p.get("type") == "ByteLevel":
                v.add_special.setdefault("bos", False)
                v.add_special.setdefault("eos", False)
            elif p.get("type") == "TemplateProcessing":
                single = p.get("single") or []
                if len(single) > 1:
                    first = (single[0].get("SpecialToken") or {}).get("id")
                    if first:
                        if not tc or not bos:
                            bos = first
                        v.add_special["bos"] = first == bos
                    last = (single[-1].get("SpecialToken") or {}).get("id")
                    if last:
                        if not tc or not eos:
                            eos = last
                        v.add_special["eos"] = last == eos
    for typ in _SPECIAL_TYPES:
        add_entry = tc.get(f"add_{typ}_token")
        if isinstance(add_entry, bool) and typ not in v.add_special:
            v.add_special[typ] = add_entry
    names = {"bos": bos, "eos": eos}
    for typ in _SPECIAL_TYPES:
        text = names.get(typ) or _token_text(tc.get(f"{typ}_token"))
        if text is None:
            continue
        set_id(typ, next((a.get("id") for a in added if a.get("content") == text), None))
    for source in (config, gen_config or {}):
        for typ in _SPECIAL_TYPES:
            set_id(typ, source.get(f"{typ}_token_id"))
    order = {t: i for i, t in enumerate(_SPECIAL_TYPES)}
    v.special_ids = dict(sorted(v.special_ids.items(), key=lambda kv: order[kv[0]]))
    v.add_special = {t: v.add_special[t] for t in ("bos", "eos", "sep") if t in v.add_special}
