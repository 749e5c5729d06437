"""The tokenizer: ``tokenizer.json`` (and its companions) read into the ``tokenizer.*`` keys:
vocabulary, token types, merges or scores, the pre-tokenizer, special tokens, chat template,
normalizer flags.

The special tokens follow the gguf-py of the llama.cpp tree the converter is checked against
(``vendor/llama.cpp/gguf-py`` of llama-cpp-python 0.3.36), which is newer than PyPI's
``gguf`` 0.19.0 though it carries the same version number: a ``ByteLevel`` post-processor
adds neither BOS nor EOS, a template's unknown leading token becomes the BOS, the
post-processor's ``add_*`` wins over ``tokenizer_config.json``'s, and the normalizer's
lowercase / strip-accents flags are written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelbuild.api import FormatError

from .special import ADD_SPECIAL, SPECIAL_ID_KEYS, flat_steps, normalizer_flags, special_tokens

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
    special_ids: dict[str, int] = field(default_factory=dict)  # in the order they were found
    add_special: dict[str, bool] = field(default_factory=dict)  # likewise
    chat_template: Any = None
    normalizer: dict[str, bool] = field(default_factory=dict)  # "lowercase", "strip_accents"

    def keys(self) -> list[tuple[str, Any]]:
        """The keys in llama.cpp's order: ``add_space_prefix`` first (llama.cpp's Llama
        converter writes it before the vocabulary), then gguf-py's: the vocabulary, the
        merges, the special token ids and ``add_*`` flags as ``SpecialVocab`` found them,
        the chat template, the normalizer flags."""
        import gguf

        out: list[tuple[str, Any]] = []
        if self.add_space_prefix is not None:
            out.append(("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        out += [("tokenizer.ggml.model", self.model), ("tokenizer.ggml.pre", self.pre),
                ("tokenizer.ggml.tokens", self.tokens)]
        if self.scores is not None:
            out.append(("tokenizer.ggml.scores",
                        gguf.GGUFValue(self.scores, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)))
        out.append(("tokenizer.ggml.token_type",
                    gguf.GGUFValue(self.types, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)))
        if self.merges:
            out.append(("tokenizer.ggml.merges", self.merges))
        for typ, tid in self.special_ids.items():
            if typ in SPECIAL_ID_KEYS:
                out.append((SPECIAL_ID_KEYS[typ], gguf.GGUFValue(tid, gguf.GGUFValueType.UINT32)))
        for typ, value in self.add_special.items():
            if typ in ADD_SPECIAL:
                out.append((f"tokenizer.ggml.add_{typ}_token", bool(value)))
        template = self.chat_template
        if isinstance(template, list):
            default = None
            named: dict[str, str] = {}
            for choice in template:
                if not isinstance(choice, dict):
                    continue
                name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
                text = choice.get("template")
                if name and isinstance(text, str):
                    if name == "default":
                        default = text
                    else:
                        named[name] = text
            out += [(f"tokenizer.chat_template.{name}", text) for name, text in named.items()]
            if named:
                out.append(("tokenizer.chat_templates", list(named)))
            template = default
        if isinstance(template, str):
            out.append(("tokenizer.chat_template", template))
        for flag in ("lowercase", "strip_accents"):
            if flag in self.normalizer:
                out.append((f"tokenizer.ggml.normalizer.{flag}", self.normalizer[flag]))
        return out


def looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special``."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


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
    steps = flat_steps(tok.get("pre_tokenizer"), "pretokenizers")
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
    norm = flat_steps(tok.get("normalizer"), "normalizers")
    pre = flat_steps(tok.get("pre_tokenizer"), "pretokenizers")
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


def read_vocab(tok: dict[str, Any], n_vocab: int | None, *, label: str, tok_config: dict[str, Any] | None,
               config: dict[str, Any], gen_config: dict[str, Any] | None, chat_template_alt: Any,
               pre_override: str | None, log: Any, sp_pieces: list[Any] | None = None, sp_label: str = "",
               added_tokens_json: dict[str, Any] | None = None) -> Vocab:
    """The ``tokenizer.*`` keys of a checkpoint. *sp_pieces* are the pieces of its
    ``tokenizer.model`` (:func:`.sentencepiece.read_pieces`), when it has one: a
    SentencePiece-style tokenizer then takes its tokens, scores and types from them, as
    llama.cpp's converter does; *added_tokens_json* is ``added_tokens.json``, which that
    path reads too."""
    model = tok.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(label, "no model.vocab: not a tokenizers tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise FormatError(label, f"a {model.get('type')} tokenizer model is not supported",
                          hint="hf-to-gguf converts BPE tokenizers (byte-level, or SentencePiece-style with byte "
                               "fallback)")
    steps = flat_steps(tok.get("pre_tokenizer"), "pretokenizers")
    if any(s.get("type") == "ByteLevel" for s in steps):
        kind = "gpt2"
        normalizer = flat_steps(tok.get("normalizer"), "normalizers")
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
                                 f"{_describe(flat_steps(tok.get('normalizer'), 'normalizers'))} is not supported",
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
    configured = n_vocab
    if n_vocab is None:
        n_vocab = largest
    elif largest > n_vocab:
        raise FormatError("config.json", f"vocab_size={n_vocab} is smaller than the tokenizer's {largest} token ids "
                                         f"(tokenizer.json)")

    merges = _merges(model, label)
    source = label
    if kind == "llama" and sp_pieces is not None:
        source = sp_label
        tokens, types, scores = _sentencepiece_tokens(sp_pieces, configured, tok_config, added_tokens_json,
                                                      sp_label, log)
    else:
        if sp_pieces is not None:
            log(f"hf-to-gguf: {sp_label} is not used: {label} is a byte-level BPE tokenizer")
        tokens, types, scores = _tokenizer_json_tokens(kind, by_id, added, merges, n_vocab)
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if text in seen:
            raise FormatError(source, f"ids {seen[text]} and {i} both have the text {text!r}: llama.cpp needs "
                                      f"distinct token texts")
        if not text:
            raise FormatError(source, f"token {i} is empty")
        seen[text] = i

    v = Vocab(kind, pre, tokens, types)
    if kind == "gpt2":
        if not merges:
            raise FormatError(label, "a byte-level BPE tokenizer without merges")
        v.merges = merges
    else:
        v.scores = scores
        v.add_space_prefix = _add_space_prefix(tok, steps, tok_config)
    v.normalizer = normalizer_flags(tok, label, log)
    if any(v.normalizer.values()):
        log(f"warning: hf-to-gguf: {label}: the normalizer lowercases or strips accents; the "
            f"tokenizer.ggml.normalizer.* keys say so, as llama.cpp's converter writes them, but llama.cpp "
            f"reads them only for WordPiece and whitespace tokenizers: it will tokenize such text differently")
    special_tokens(v, tok, tok_config, config, gen_config, len(tokens), chat_template_alt, log)
    return v


def _tokenizer_json_tokens(kind: str, by_id: dict[int, str], added: dict[int, dict[str, Any]], merges: list[str],
                           n_vocab: int) -> tuple[list[str], list[int], list[float]]:
    """Tokens, types and scores from tokenizer.json: ids without a token are ``[PAD{id}]``
    (UNUSED); added tokens are CONTROL when special (or when they look special),
    USER_DEFINED otherwise; ``<0xXX>`` of a SentencePiece-style tokenizer are BYTE. A
    SentencePiece-style token scores ``-r`` for the first merge *r* that makes it, so that
    llama.cpp, which merges the pair of highest score, merges in the order Hugging Face
    does (llama.cpp's converter scores every token -1000 on this path)."""
    first_merge: dict[str, int] = {}
    if kind == "llama":
        for rank, m in enumerate(merges):
            a, _, b = m.partition(" ")
            first_merge.setdefault(a + b, rank)
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        score = 0.0
        if text is None:
            text, ttype, score = f"[PAD{i}]", TOKEN_UNUSED, -1000.0
        elif i in added:
            if added[i].get("special") or looks_special(text):
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
        tokens.append(text)
        types.append(ttype)
        scores.append(score)
    return tokens, types, scores


def _sentencepiece_tokens(pieces: list[Any], n_vocab: int | None, tok_config: dict[str, Any] | None,
                          added_tokens_json: dict[str, Any] | None, label: str,
                          log: Any) -> tuple[list[str], list[int], list[float]]:
    """llama.cpp's ``_create_vocab_sentencepiece``: each piece's text, score and type (its
    UNKNOWN, CONTROL, UNUSED and BYTE pieces keep their type, the rest are NORMAL, user-defined
    pieces included); ids past the pieces up to ``vocab_size`` are ``[PAD{id}]`` (UNUSED,
    score -10000); then ``added_tokens.json`` (USER_DEFINED) and ``tokenizer_config.json``'s
    ``added_tokens_decoder`` (CONTROL when special or special-looking, else USER_DEFINED)
    replace the tokens they name, scoring -1000."""
    size = n_vocab or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TOKEN_UNUSED] * size
    scores = [-10000.0] * size
    kept = (TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_BYTE)
    if len(pieces) > size:
        log(f"warning: hf-to-gguf: {label}: pieces from id {size} on are past vocab_size={size}; left out")
    for i, piece in enumerate(pieces[:size]):
        tokens[i], scores[i] = piece.text, piece.score
        types[i] = piece.type if piece.type in kept else TOKEN_NORMAL

    def place(tid: Any, text: str, ttype: int, where: str) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < size:
            log(f"warning: hf-to-gguf: {where}: token {text!r} has id {tid!r}, outside the vocabulary of {size}; "
                f"left out")
            return
        tokens[tid], types[tid], scores[tid] = text, ttype, -1000.0

    for text, tid in (added_tokens_json or {}).items():
        place(tid, str(text), TOKEN_USER_DEFINED, "added_tokens.json")
    decoder = (tok_config or {}).get("added_tokens_decoder")
    for key, entry in (decoder.items() if isinstance(decoder, dict) else ()):
        text = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not str(key).isdecimal():
            continue
        if entry.get("special") or looks_special(text):
            place(int(key), text, TOKEN_CONTROL, "tokenizer_config.json")
        else:
            place(int(key), text.replace("▁", " "), TOKEN_USER_DEFINED, "tokenizer_config.json")
    return tokens, types, scores


def _add_space_prefix(tok: dict[str, Any], steps: list[dict[str, Any]],
                      tok_config: dict[str, Any] | None) -> bool | None:
    """``tokenizer.ggml.add_space_prefix`` of a SentencePiece-style tokenizer:
    ``tokenizer_config.json``'s ``add_prefix_space`` when it says (llama.cpp's converter
    writes that); otherwise false when the normalizer or Metaspace does not prepend ``▁``
    (llama.cpp would add the space: its default for this tokenizer is true), else nothing."""
    if tok_config and isinstance(tok_config.get("add_prefix_space"), bool):
        return tok_config["add_prefix_space"]
    norm = flat_steps(tok.get("normalizer"), "normalizers")
    prefix = any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in norm)
    for s in steps:
        if s.get("type") == "Metaspace":
            prefix = s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
    return None if prefix else False
