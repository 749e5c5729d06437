"""``--label`` and ``--annotation`` in buildx's syntax, and where each one goes.

The ModelPack config schema is closed, so a label cannot live in the config as Docker's
do: ``--label KEY=VALUE`` is the command-line form of the Modelfile's ``LABEL``, an
annotation on every manifest. ``--annotation [LEVEL[,LEVEL…]:]KEY=VALUE`` takes buildx's
levels. Annotations are placed once the stages are known (``build.prepare``), so the
planner receives each manifest's, the index's and each index entry's annotations ready to
write: they enter only the manifest and index steps' keys, so a new annotation rewrites two
small JSON blobs and re-runs nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from modelbuild.errors import UsageError

# buildx's --annotation levels: manifest (the default), index (a multi-platform build's
# index), manifest-descriptor (the index's entry for each manifest), index-descriptor (the
# entry for the result in an OCI layout's index.json: the store's tags, --output type=oci)
ANNOTATION_LEVELS = ("manifest", "index", "manifest-descriptor", "index-descriptor")
_LEVELS = re.compile(r"([a-z-]+(?:\[[^\]]*\])?(?:,[a-z-]+(?:\[[^\]]*\])?)*):(.*)", re.DOTALL)
_LEVEL = re.compile(r"([a-z-]+)(?:\[([^\]]*)\])?")
RESERVED_ENTRY_PREFIX = "dev.modelbuild."  # the index entries' stage-selection annotations


@dataclass(frozen=True, slots=True)
class Annotation:
    """One ``--annotation``, at one level, for one stage (or every one)."""

    level: str
    stage: str | None
    key: str
    value: str
    written: str  # the flag's value, for messages


def key_value(text: str, flag: str) -> tuple[str, str]:
    """``KEY=VALUE`` split at the first ``=``; the key must be non-empty, without blanks."""
    from modelbuild.frontend.syntax import shown

    key, eq, value = text.partition("=")
    if not eq:
        raise UsageError(f"{flag} {shown(text)}: expected KEY=VALUE")
    _check_key(key, f"{flag} {shown(text)}")
    return key, value


def _check_key(key: str, where: str) -> None:
    if not key:
        raise UsageError(f"{where}: the key is empty")
    if not key.isprintable() or any(c.isspace() for c in key):
        raise UsageError(f"{where}: the key contains a space or a control character")


def parse_labels(texts: Sequence[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` values; a later one for a key wins."""
    return dict(key_value(t, "--label") for t in texts)


def parse_annotations(texts: Sequence[str]) -> list[Annotation]:
    """``--annotation [LEVEL[,LEVEL…]:]KEY=VALUE`` values, LEVEL optionally ``level[STAGE]``."""
    from modelbuild.frontend.syntax import shown

    out = []
    for text in texts:
        key, value = key_value(text, "--annotation")
        match = _LEVELS.fullmatch(key)
        levels: list[tuple[str, str | None]] = [("manifest", None)]
        if match is not None:
            key = match.group(2)
            levels = []
            for level in match.group(1).split(","):
                name, stage = _LEVEL.fullmatch(level).groups()  # type: ignore[union-attr]
                if name not in ANNOTATION_LEVELS:
                    raise UsageError(f"--annotation {shown(text)}: unknown level {name!r}",
                                     hint=f"levels: {', '.join(ANNOTATION_LEVELS)}")
                if stage is not None and name not in ("manifest", "manifest-descriptor"):
                    raise UsageError(f"--annotation {shown(text)}: {name} is one document; [STAGE] selects "
                                     "a manifest", hint="manifest[STAGE]: or manifest-descriptor[STAGE]:")
                if stage == "":
                    raise UsageError(f"--annotation {shown(text)}: [] names no stage")
                levels.append((name, stage))
            _check_key(key, f"--annotation {shown(text)}")  # the key after the levels
        out.extend(Annotation(level, stage, key, value, text) for level, stage in levels)
    return out


def place_annotations(labels: Mapping[str, str], annotations: Sequence[Annotation], resolved: Any) -> dict[str, Any]:
    """Where each label and annotation goes, as :class:`~modelbuild.planner.BuildOptions`
    fields. A manifest's annotations are the Modelfile's LABELs (the planner adds them), then
    ``--label``, then ``--annotation KEY`` / ``manifest:KEY``, then ``manifest[STAGE]:KEY``:
    later wins. An annotation for something the build does not write is a usage error."""
    from modelbuild.frontend.syntax import shown

    variants = resolved.variants
    stages = resolved.description.stages
    single = len(variants) == 1 and variants[0].stage is None
    manifests: dict[str | None, dict[str, str]] = {v.stage: dict(labels) for v in variants}
    entries: dict[str | None, dict[str, str]] = {v.stage: {} for v in variants}
    index: dict[str, str] = {}
    layout: dict[str, str] = {}
    selected = []
    for a in sorted(annotations, key=lambda a: a.stage is not None):  # a stage's own last: it wins
        flag = f"--annotation {shown(a.written)}"
        if a.level in ("index", "manifest-descriptor") and single:
            raise UsageError(f"{flag}: this build writes one manifest and no index",
                             hint="use manifest: (the default), or build TARGET stages")
        if a.level == "manifest-descriptor" and a.key.startswith(RESERVED_ENTRY_PREFIX):
            raise UsageError(f"{flag}: {RESERVED_ENTRY_PREFIX}* keys are modelbuild's own (how pull picks a variant)")
        if a.level == "index-descriptor" and a.key == "org.opencontainers.image.ref.name":
            raise UsageError(f"{flag}: the layout's ref.name is the tag", hint="use -t")
        if a.stage is not None:
            if not any(a.stage in (s.name, s.target) for s in stages):
                known = ", ".join(s.name for s in stages)
                raise UsageError(f"{flag}: no stage {shown(a.stage)}",
                                 hint=f"stages: {known}" if known else "the Modelfile has no TARGET stage")
            selected = [v.stage for v in variants if v.stage is not None
                        and any(v.stage == s.name and a.stage in (s.name, s.target) for s in stages)]
        else:
            selected = list(manifests)
        if a.level == "index":
            index[a.key] = a.value
        elif a.level == "index-descriptor":
            layout[a.key] = a.value
        else:
            for stage in selected:  # a stage that --platform left out is not built: nothing to annotate
                (manifests if a.level == "manifest" else entries)[stage][a.key] = a.value
    return {"manifest_annotations": manifests, "index_annotations": index, "entry_annotations": entries,
            "layout_annotations": layout}


__all__ = ["ANNOTATION_LEVELS", "Annotation", "key_value", "parse_annotations", "parse_labels", "place_annotations"]
