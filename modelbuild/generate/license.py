"""The licence of a model directory, as an SPDX expression, from what its authors wrote.

Two places say it: the ``license:`` key of the model card's YAML front matter (Hugging Face's
ids: ``apache-2.0``, ``llama3.1``, ``other`` with ``license_name``), and the text of a
``LICENSE`` file. The front matter is the authors' declaration and wins; the file's text is
recognised for the common licences by phrases that only they contain (an explicit
``SPDX-License-Identifier:`` line first). Licences SPDX has no id for (Llama's and Gemma's
terms) become ``LicenseRef-<id>``, valid SPDX syntax. Anything not recognised gives no
``LICENSE`` line: a wrong licence is worse than none. Only the first 64 KiB are read.
"""

from __future__ import annotations

import re

from .scan import Found

MAX_TEXT = 64 * 1024

# Hugging Face license ids → SPDX ids (the ones that differ only in case are found by case).
_HF_TO_SPDX = {
    "gpl-2.0": "GPL-2.0-only", "gpl-3.0": "GPL-3.0-only", "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only", "agpl-3.0": "AGPL-3.0-only", "lgpl-lr": "LGPLLR", "bsd": "BSD-3-Clause",
    "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0", "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0", "unlicense": "Unlicense",
    "wtfpl": "WTFPL", "bsl-1.0": "BSL-1.0", "postgresql": "PostgreSQL", "zlib": "Zlib", "ncsa": "NCSA",
}
_SPDX_IDS = (
    "Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "BSD-3-Clause-Clear", "ISC", "MPL-2.0", "EPL-2.0",
    "EUPL-1.2", "Artistic-2.0", "CC0-1.0", "CC-BY-2.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0",
    "CC-BY-SA-4.0", "CC-BY-NC-2.0", "CC-BY-NC-3.0", "CC-BY-NC-4.0", "CC-BY-NC-SA-2.0", "CC-BY-NC-SA-3.0",
    "CC-BY-ND-4.0", "OFL-1.1", "OSL-3.0", "AFL-3.0", "ECL-2.0", "LPPL-1.3c", "MS-PL", "ODbL-1.0", "PDDL-1.0",
    "ODC-By-1.0", "C-UDA-1.0", "CDLA-Permissive-1.0", "CDLA-Permissive-2.0", "CDLA-Sharing-1.0", "GFDL-1.3-only",
)
_BY_LOWER = {spdx.lower(): spdx for spdx in _SPDX_IDS}

# (phrases that must all appear, the SPDX expression), most specific first; text lower-cased,
# blanks collapsed.
_TEXT_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("llama 4 community license agreement",), "LicenseRef-llama4"),
    (("llama 3.3 community license agreement",), "LicenseRef-llama3.3"),
    (("llama 3.2 community license agreement",), "LicenseRef-llama3.2"),
    (("llama 3.1 community license agreement",), "LicenseRef-llama3.1"),
    (("meta llama 3 community license agreement",), "LicenseRef-llama3"),
    (("llama 2 community license agreement",), "LicenseRef-llama2"),
    (("gemma terms of use",), "LicenseRef-gemma"),
    (("apache license", "version 2.0"), "Apache-2.0"),
    (("permission is hereby granted, free of charge",), "MIT"),
    (("redistribution and use in source and binary forms", "neither the name"), "BSD-3-Clause"),
    (("redistribution and use in source and binary forms", "names of its contributors"), "BSD-3-Clause"),
    (("redistribution and use in source and binary forms",), "BSD-2-Clause"),
    (("mozilla public license version 2.0",), "MPL-2.0"),
    (("cc0 1.0 universal",), "CC0-1.0"),
    (("attribution-noncommercial-sharealike 4.0 international",), "CC-BY-NC-SA-4.0"),
    (("attribution-noncommercial 4.0 international",), "CC-BY-NC-4.0"),
    (("attribution-sharealike 4.0 international",), "CC-BY-SA-4.0"),
    (("attribution 4.0 international",), "CC-BY-4.0"),
)
_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+()\- ]+?)\s*(?:\*/|-->|$)", re.MULTILINE)
_LICENSE_FILES = ("license", "license.txt", "license.md", "licence", "licence.txt", "licence.md", "copying")


def detect(found: dict[str, Found]) -> tuple[list[str], str | None]:
    """(SPDX expressions, a warning when the model card and the LICENSE file disagree)."""
    card = next((found[p] for p in sorted(found) if p.lower() in ("readme.md", "model_card.md")), None)
    declared = from_front_matter(_read(card)) if card else []
    file = next((found[p] for p in sorted(found) if p.lower() in _LICENSE_FILES), None)
    recognised = from_text(_read(file)) if file else None
    if declared:
        warning = None
        if recognised and recognised not in declared:
            warning = (f"{card.path} declares license {', '.join(declared)}, while {file.path} reads as "
                       f"{recognised}; writing {', '.join(declared)}")
        return declared, warning
    return ([recognised] if recognised else []), None


def _read(found: Found | None) -> str:
    if found is None:
        return ""
    try:
        with open(found.source, "rb") as fh:
            return fh.read(MAX_TEXT).decode("utf-8", errors="replace")
    except OSError:
        return ""


def from_front_matter(text: str) -> list[str]:
    """The ``license:`` of YAML front matter (a scalar or a list), as SPDX expressions.
    Only the few YAML forms model cards use are read: no YAML library, no surprises."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return []
    block: list[str] = []
    for line in lines[1:]:
        if line.strip() in ("---", "..."):
            break
        block.append(line)
    else:
        return []
    values: dict[str, list[str]] = {}
    key = None
    for line in block:
        top = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$", line)
        if top:
            key = top.group(1).lower()
            values[key] = [_scalar(top.group(2))] if top.group(2) else []
        elif key and (item := re.match(r"^\s+-\s+(.*?)\s*$", line)):
            values[key].append(_scalar(item.group(1)))
    ids = [v for v in values.get("license", []) if v]
    if ids == ["[]"]:
        return []
    if len(ids) == 1 and ids[0].startswith("["):
        ids = [_scalar(v) for v in ids[0].strip("[]").split(",") if v.strip()]
    names = [v for v in values.get("license_name", []) if v]
    out: list[str] = []
    for value in ids:
        spdx = to_spdx(value, names[0] if names else None)
        if spdx and spdx not in out:
            out.append(spdx)
    return out


def _scalar(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value.strip()


def to_spdx(value: str, license_name: str | None = None) -> str | None:
    """A Hugging Face license id as an SPDX expression (``LicenseRef-…`` when SPDX has none)."""
    low = value.strip().lower()
    if not low or low in ("unknown", "none"):
        return None
    if low == "other":
        return _license_ref(license_name) if license_name else None
    if low in _HF_TO_SPDX:
        return _HF_TO_SPDX[low]
    if low in _BY_LOWER:
        return _BY_LOWER[low]
    return _license_ref(value)


def _license_ref(name: str) -> str | None:
    idstring = re.sub(r"[^A-Za-z0-9.-]+", "-", name.strip()).strip("-")
    return f"LicenseRef-{idstring}" if idstring else None


def from_text(text: str) -> str | None:
    """The licence a LICENSE file's text is, when it is one of the common ones."""
    spdx = _SPDX_LINE.search(text[:4096])
    if spdx:
        return spdx.group(1).strip()
    flat = " ".join(text.lower().split())
    for phrases, expression in _TEXT_RULES:
        if all(p in flat for p in phrases):
            return expression
    return None
