"""Special tokens and the flags beside them: gguf-py's ``SpecialVocab``, restated.

What ``tokenizer_config.json``, tokenizer.json's post-processor and added tokens,
``config.json`` and ``generation_config.json`` say about the BOS/EOS/UNK/SEP/PAD/MASK (and
EOT/EOM) tokens, whether llama.cpp adds BOS, EOS or SEP, the chat template, and the
normalizer's lowercase / strip-accents flags. It follows the gguf-py of the llama.cpp tree
the converter is checked against (``vendor/llama.cpp/gguf-py`` of llama-cpp-python 0.3.36;
see :mod:`.tokenizer`). Also the two readers of tokenizer.json nodes both modules use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tokenizer import Vocab

# gguf-py's SpecialVocab: the special token types it looks up, in this order ("cls" is looked
# up, but GGUF has no key for it), and the keys of those written
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# gguf.Keys.Tokenizer's names for them (note llama.cpp's spelling of "seperator")
SPECIAL_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                   "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
                   "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
                   "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id"}
ADD_SPECIAL = ("bos", "eos", "sep")  # the add_*_token flags GGUF has keys for


def flat_steps(node: Any, list_key: str) -> list[dict[str, Any]]:
    """A pre-tokenizer/normalizer as a flat list of steps (Sequence flattened)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        return [{"type": repr(node)}]
    if node.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for item in node.get(list_key) or []:
            out.extend(flat_steps(item, list_key))
        return out
    return [node]


def token_text(entry: Any) -> str | None:
    """A token as tokenizer_config.json names it: a string, or an AddedToken dict's content."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def normalizer_flags(tok: dict[str, Any], label: str, log: Any) -> dict[str, bool]:
    """gguf-py's ``SpecialVocab._parse_normalizer``: ``lowercase`` / ``strip_accents`` from
    the normalizer's ``Lowercase`` and ``StripAccents`` steps and ``BertNormalizer``'s
    attributes, the last step that says winning. (A byte-level tokenizer gets here only
    with no normalizer or NFC, which say nothing.)"""
    out: dict[str, bool] = {}
    for s in flat_steps(tok.get("normalizer"), "normalizers"):
        kind = s.get("type")
        if kind == "Lowercase":
            out["lowercase"] = True
        elif kind == "StripAccents":
            out["strip_accents"] = True
        elif kind == "BertNormalizer":
            for flag in ("lowercase", "strip_accents"):
                if flag not in s:
                    continue
                value = s[flag]
                if isinstance(value, bool):
                    out[flag] = value
                else:  # null: unset, as gguf-py then writes nothing
                    out.pop(flag, None)
                    if value is not None:
                        log(f"warning: hf-to-gguf: {label}: BertNormalizer {flag}={value!r} is not a boolean; "
                            f"not written")
    return out


def _special_id(item: Any) -> Any:
    """The token a TemplateProcessing item names (``{"SpecialToken": {"id": "<s>"}}``)."""
    special = item.get("SpecialToken") if isinstance(item, dict) else None
    return special.get("id") if isinstance(special, dict) else None


def special_tokens(v: Vocab, tok: dict[str, Any], tok_config: dict[str, Any] | None, config: dict[str, Any],
                    gen_config: dict[str, Any] | None, n_vocab: int, chat_template_alt: Any, log: Any) -> None:
    """gguf-py's ``SpecialVocab``, reading the same files: special token ids, in the order
    found, from ``tokenizer_config.json``'s ``*_token`` (looked up among tokenizer.json's
    added tokens) then ``config.json``'s ``*_token_id`` (then, beyond llama.cpp,
    ``generation_config.json``'s, for an id neither gives); ``add_bos``/``add_eos``/
    ``add_sep`` from the post-processor (a ``ByteLevel`` step adds neither BOS nor EOS),
    else from ``tokenizer_config.json``'s ``add_*_token`` (where the two disagree, the
    post-processor wins, with a warning, as in llama.cpp's gguf-py); the chat template."""
    tc = dict(tok_config) if tok_config else None  # gguf-py amends it as it reads the post-processor
    types = list(SPECIAL_TYPES)
    added = [a for a in tok.get("added_tokens") or [] if isinstance(a, dict)]
    add = v.add_special

    def set_id(typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in v.special_ids:
            return
        if 0 <= tid < n_vocab:
            v.special_ids[typ] = tid
        else:
            log(f"warning: hf-to-gguf: {typ} token id {tid} is outside the vocabulary of {n_vocab}; not written")

    bos, cls = (tc or {}).get("bos_token"), (tc or {}).get("cls_token")
    eos, sep = (tc or {}).get("eos_token"), (tc or {}).get("sep_token")
    if not bos and cls and tc:
        tc["bos_token"] = bos = cls
    if not eos and sep and tc:
        tc["eos_token"] = eos = sep
    post = tok.get("post_processor")
    processors = (post.get("processors", [post]) if isinstance(post, dict) else None) or []
    for p in processors:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "ByteLevel":  # no special tokens: unless another step adds them
            add.setdefault("bos", False)
            add.setdefault("eos", False)
            continue
        if p.get("type") == "RobertaProcessing":
            add["bos"] = add["eos"] = add["sep"] = True
            if not cls and tc:
                tc["cls_token"] = cls = (p.get("cls") or [bos])[0]
            if not sep and tc:
                tc["sep_token"] = sep = (p.get("sep") or [eos])[0]
            continue
        if p.get("type") != "TemplateProcessing":
            continue
        single, pair = p.get("single") or [], p.get("pair") or []
        first = last = None
        if len(single) > 1:
            first = _special_id(single[0])
            if first:
                if not tc:
                    bos = first
                elif first not in (bos, cls):  # an unknown leading token: the BOS (and CLS) where unset
                    if not bos:
                        tc["bos_token"] = bos = first
                    if not cls:
                        tc["cls_token"] = cls = first
                add["bos"] = first in (bos, cls)
            last = _special_id(single[-1])
            if last:
                if not tc:
                    eos = last
                elif last != eos:  # the template ends with another token: that is the EOS, the old one EOT
                    for extra in ("eot", "eom"):
                        if extra not in types:
                            types.append(extra)
                            tc[f"{extra}_token"] = eos
                            break
                    tc["eos_token"] = eos = last
                add["eos"] = last == eos
        if not pair:
            continue
        start = 1 if first and _special_id(pair[0]) == first else 0
        stop = -1 if last and _special_id(pair[-1]) == last else None
        middle = pair[start:stop]
        if not middle or not isinstance(middle[0], dict) or not isinstance(middle[-1], dict):
            continue
        a, b = (middle[0].get("Sequence") or {}).get("id"), (middle[-1].get("Sequence") or {}).get("id")
        between = middle[1:-1]
        if a == "A" and b == "B" and between:  # A [sep] [eos] B
            entry = _special_id(between[0])
            add_sep = bool(entry) and entry in (sep, eos) and not last
            if len(between) == 2:
                entry = _special_id(between[1])
                add_sep = add_sep or (bool(entry) and entry in (sep, eos))
            add["sep"] = add_sep
            if add_sep and not sep and tc:
                tc["sep_token"] = eos

    if tc:
        template = tc.get("chat_template", chat_template_alt)
        if isinstance(template, (str, list)):
            v.chat_template = template
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                if typ not in add:
                    add[typ] = flag
                elif add[typ] != flag:
                    log(f"warning: hf-to-gguf: tokenizer_config.json says add_{typ}_token={str(flag).lower()}, "
                        f"tokenizer.json's post-processor {'adds' if add[typ] else 'does not add'} it: "
                        f"the post-processor's add_{typ}_token={str(add[typ]).lower()} is written, as llama.cpp does")
            text = token_text(tc.get(f"{typ}_token"))
            if text is not None:
                set_id(typ, next((a.get("id") for a in added if a.get("content") == text), None))
    for typ in types:
        tid = config.get(f"{typ}_token_id")
        if tid is None and isinstance(config.get("text_config"), dict):
            tid = config["text_config"].get(f"{typ}_token_id")
        set_id(typ, tid)
    for typ in types:
        set_id(typ, (gen_config or {}).get(f"{typ}_token_id"))


__all__ = ["ADD_SPECIAL", "SPECIAL_ID_KEYS", "SPECIAL_TYPES", "flat_steps", "normalizer_flags", "special_tokens",
           "token_text"]
