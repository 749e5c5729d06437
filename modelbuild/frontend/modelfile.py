"""The Modelfile interpreter: instructions → :class:`BuildDescription`.

It expands ``ARG`` variables, resolves ``FROM`` through the source plugins, matches file
patterns against the context, and checks every argument against the directive table. An
error raised anywhere below an instruction without a location gets that instruction's span
here, in one place.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from modelbuild.context import BuildContext
from modelbuild.description import BuildDescription, FileKind, FileSpec, StageSpec, TransformSpec
from modelbuild.errors import ModelfileError, Span
from modelbuild.frontend import syntax
from modelbuild.frontend.limits import Limits, raise_hint
from modelbuild.frontend.runtime import RuntimeLines
from modelbuild.frontend.directives import (
    CAPABILITY_KEYS,
    DIRECTIVES,
    KNOWN_PRECISIONS,
    MODALITIES,
    Directive,
)

if TYPE_CHECKING:
    from modelbuild.api._sources import OpenedSource
    from modelbuild.plugins import Registry

_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAMSIZE = re.compile(r"\d+(\.\d)?[QTBMK]")
# A TARGET stage's name ends its variant's tags (NAME:TAG-STAGE): a tag's characters, kept short
STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_SUGGEST_MAX = 64  # names longer than this get no "did you mean": difflib is quadratic


class ModelfileFrontend:
    """The built-in ``modelfile`` frontend (``# syntax=modelfile``)."""

    name = "modelfile"
    summary = "modctl-compatible Modelfile with ARG, FROM, LABEL and ModelPack descriptor fields"

    def load(
        self,
        text: str,
        *,
        filename: str,
        base_dir: Path,
        default_context: Path,
        build_args: Mapping[str, str],
        sources: "Registry",
    ) -> BuildDescription:
        limits = Limits.from_env()
        try:
            instructions = syntax.parse(text, filename, limits)
            return _Interpreter(filename, base_dir, default_context, build_args, sources, limits).run(instructions)
        except ModelfileError as exc:
            if exc.span is not None and (command := _ollama_command(text, exc.span.line)):
                exc.hint = (f"{command} is an Ollama Modelfile command: start the file with '# syntax=ollama' "
                            "or name it Ollama.Modelfile (docs/ollama.md)")
            raise


_OLLAMA_ONLY = ("PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "MESSAGE", "REQUIRES")


def _ollama_command(text: str, line: int) -> str | None:
    """The Ollama-only command that starts line *line* of *text*, if one does: an Ollama
    Modelfile given to this frontend fails there, and the hint names the fix."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    word = lines[line - 1].strip().split(None, 1)[0].upper() if lines[line - 1].strip() else ""
    return word if word in _OLLAMA_ONLY else None


class _Interpreter:
    def __init__(
        self,
        filename: str,
        base_dir: Path,
        default_context: Path,
        build_args: Mapping[str, str],
        sources: "Registry",
        limits: Limits | None = None,
    ) -> None:
        self.filename = filename
        self.limits = limits or Limits()
        self.expanded_total = 0  # characters produced by expansions so far, against limits.expansion_total
        self.current: syntax.Instruction | None = None
        self.base_dir = base_dir
        self.default_context = default_context
        self.build_args = dict(build_args)
        self.sources = sources
        self.env: dict[str, str] = {}
        self.used_args: set[str] = set()
        self.context: BuildContext | None = None
        self.from_span: Span | None = None
        self.first_file_span: Span | None = None
        self.set_at: dict[str, Span] = {}
        self.value_at: dict[str, Span] = {}  # where each scalar's value is written
        self.descriptor: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.labels: dict[str, str] = {}
        self.files: dict[str, FileSpec] = {}
        self.transforms: list[TransformSpec] = []
        self.stages: list[StageSpec] = []
        # per stage, the transforms added so far: appending to a list, not rebuilding the
        # stage's tuple each time, keeps a long run of QUANTIZE lines linear
        self.stage_transforms: list[list[TransformSpec]] = []
        self.stage_names: dict[str, StageSpec] = {}
        self.runtime = RuntimeLines()  # RUNTIME lines before the first TARGET
        self.stage_runtime: list[RuntimeLines] = []  # and each stage's
        self.list_seen: dict[str, set[str]] = {}  # values of each list directive, for O(1) de-duplication
        self.warnings: list[str] = []
        self.opened: "OpenedSource | None" = None  # a remote FROM: its pin and listing

    # -- driver -----------------------------------------------------------------------
    def run(self, instructions: list[syntax.Instruction]) -> BuildDescription:
        for ins in instructions:
            self.current = ins
            directive = DIRECTIVES.get(ins.keyword)
            if directive is None:
                raise _unknown_directive(ins)
            try:
                self._check_arity(ins, directive)
                if self.stages and directive.role not in ("transform", "target", "arg", "runtime"):
                    raise ModelfileError.at(
                        ins.span,
                        f"{directive.name} must come before the first TARGET (line {self.stages[0].origin.line})",
                        hint="a TARGET stage holds only CONVERT, QUANTIZE, SHARD and RUNTIME",
                    )
                getattr(self, f"_do_{directive.role}")(ins, directive)
            except ModelfileError as exc:
                raise exc.located(ins.span) from None
        unused = sorted(set(self.build_args) - self.used_args)
        if unused:
            self.warnings.append(f"build argument(s) not declared by any ARG: {', '.join(unused)}")
        if self.opened is not None:
            self._source_defaults(self.opened)
        if not self.files:
            raise ModelfileError.at(
                Span(self.filename, 1, 1),
                "nothing to package",
                hint="add MODEL, CONFIG, CODE, DATASET or DOC",
            )
        files = _drop_nested(self.files, self.warnings)
        return BuildDescription(
            context=self._context().root,
            files=tuple(files[p] for p in sorted(files)),
            name=self.descriptor.get("name"),
            name_origin=self.value_at.get("NAME"),
            descriptor=self.descriptor,
            config=self.config,
            capabilities=self.capabilities,
            labels=self.labels,
            transforms=tuple(self.transforms),
            stages=tuple(
                dataclasses.replace(stage, transforms=tuple(transforms), runtime=runtime.spec())
                for stage, transforms, runtime in zip(self.stages, self.stage_transforms, self.stage_runtime)
            ),
            source_file=self.filename,
            warnings=tuple(self.warnings),
            runtime=self.runtime.spec(),
            ignore=self._context().ignore,
            source=self.opened,
        )

    def _source_defaults(self, opened: "OpenedSource") -> None:
        """A remote FROM's defaults under the Modelfile's own values: descriptor fields
        (``sourceURL`` and ``revision`` from the pin), annotations, the name; and, when no
        file directive names a file, every file the source packages by default, as the kind
        it says (a base artifact's layers keep their kinds)."""
        listing, pin = opened.listing, opened.pin
        assert listing is not None and pin is not None
        defaults = {**({"sourceURL": pin.source_url} if pin.source_url else {}),
                    **({"revision": pin.revision} if pin.revision else {}), **listing.descriptor}
        if listing.name:
            defaults.setdefault("name", listing.name)
        for key, value in defaults.items():
            self.descriptor.setdefault(key, value)
        for key, value in listing.labels.items():
            self.labels.setdefault(key, value)
        if not self.files:
            kinds = {k.value: k for k in FileKind}
            for f in listing.files:
                if f.kind in kinds:  # an archive may hold one file (modctl packs files as tar layers)
                    is_dir = bool(f.unpack) and (opened.root / f.path).is_dir()
                    self.files[f.path] = FileSpec(f.path, kinds[f.kind], is_dir, self.from_span)

    def _check_arity(self, ins: syntax.Instruction, d: Directive) -> None:
        n = len(ins.args)
        if n < d.min_args:
            what = "at least one file or pattern" if d.role == "files" else "an argument"
            raise ModelfileError.at(ins.span, f"{d.name} needs {what}", hint=d.summary)
        if d.max_args is not None and n > d.max_args:
            extra = ins.args[d.max_args]
            raise ModelfileError.at(
                extra.span,
                f"{d.name} takes {'one argument' if d.max_args == 1 else f'{d.max_args} arguments'}, got {n}",
                hint='quote a value that contains spaces: "like this"',
            )

    def _context(self) -> BuildContext:
        if self.context is None:
            self.context = self._new_context(self.default_context)
        return self.context

    def _new_context(self, root: Path) -> BuildContext:
        """The context at *root*, less what its ignore file (or ``<Modelfile>.modelbuildignore``
        beside this Modelfile) and ``--exclude`` exclude (:mod:`modelbuild.ignore`)."""
        from modelbuild.ignore import context_rules

        modelfile = None if self.filename == "<stdin>" else self.base_dir / Path(self.filename).name
        return BuildContext(root, context_rules(root, modelfile))

    # -- words ----------------------------------------------------------------------
    def expand(self, word: syntax.Word) -> str:
        """The word's text with its variables replaced, within the expansion limits.

        Sizes are added up before any string is joined, so an ``ARG`` chain that doubles at
        every line is refused once it passes the limit, in time linear in the limit.
        """
        literal = word.literal
        if literal is not None:
            return literal  # bounded by the line length limit already
        out = []
        size = 0
        for part in word.parts:
            if isinstance(part, str):
                value, at = part, word.span
            else:
                value, at = self._value(part), part.span
            size += len(value)
            self._check_expansion(word, size, at)
            out.append(value)
        self.expanded_total += size
        return "".join(out)

    def _value(self, ref: syntax.VarRef) -> str:
        if ref.name not in self.env:
            raise ModelfileError.at(ref.span, f"undefined variable {syntax.clip(ref.name)}", hint=self._undefined_hint(ref.name))
        value = self.env[ref.name]
        if ref.op == ":-":
            return value or ref.operand
        if ref.op == ":+":
            return ref.operand if value else ""
        return value

    def _undefined_hint(self, name: str) -> str:
        """Suggest a close ARG name; difflib is quadratic in length, so only for short names."""
        hint = f"declare it with ARG {syntax.clip(name)}"
        if len(name) > _SUGGEST_MAX:
            return hint
        candidates = [n for n in self.env if len(n) <= _SUGGEST_MAX]
        import difflib

        close = difflib.get_close_matches(name, candidates, n=1)
        return f"did you mean {close[0]}?" if close else hint

    def _check_expansion(self, word: syntax.Word, size: int, at: Span) -> None:
        """Refuse a word past the per-value limit, or a Modelfile past the total budget."""
        limits = self.limits
        if size > limits.expansion_length:
            raise ModelfileError.at(
                at,
                f"{self._subject(word)} expands to more than {limits.expansion_length} characters, "
                "the expansion limit per value",
                hint=raise_hint("expansion_length"),
            )
        if self.expanded_total + size > limits.expansion_total:
            raise ModelfileError.at(
                at,
                f"{self._subject(word)}: expanded values add up to more than {limits.expansion_total} "
                "characters, the expansion limit per Modelfile",
                hint=raise_hint("expansion_total"),
            )

    def _subject(self, word: syntax.Word) -> str:
        """What an expansion error names: ``ARG NAME`` for an ARG, else the directive."""
        ins = self.current
        keyword = ins.keyword if ins is not None else "value"
        head = word.parts[0] if word.parts else ""
        if keyword == "ARG" and isinstance(head, str) and "=" in head:
            return f"ARG {syntax.clip(head.partition('=')[0])}"
        return keyword

    # -- handlers, one per directive role ------------------------------------------
    def _do_arg(self, ins: syntax.Instruction, d: Directive) -> None:
        for word in ins.args:
            text = self.expand(word)
            name, eq, default = text.partition("=")
            if not _ARG_NAME.fullmatch(name):
                raise ModelfileError.at(
                    word.span, f"bad ARG name {syntax.shown(name)}", hint="names are letters, digits and _, not starting with a digit"
                )
            if name in self.build_args:
                self.used_args.add(name)
                self.env[name] = self.build_args[name]
            else:
                self.env[name] = default if eq else ""

    def _do_from(self, ins: syntax.Instruction, d: Directive) -> None:
        if self.from_span is not None:
            raise ModelfileError.at(
                ins.span, f"FROM is already set at line {self.from_span.line}", hint="a Modelfile has one FROM"
            )
        if self.first_file_span is not None:
            raise ModelfileError.at(
                ins.span, f"FROM must come before the first file directive (line {self.first_file_span.line})"
            )
        options: dict[str, list[str]] = {"include": [], "exclude": []}
        refs = []
        for word in ins.args:
            text = self.expand(word)
            name, eq, value = text.partition("=")
            if text.startswith("--") and name[2:] in options and eq and value:
                options[name[2:]].append(value)
            elif text.startswith("--") and not refs:
                raise ModelfileError.at(word.span, f"unknown FROM option {syntax.shown(name)}",
                                        hint="FROM takes --include=GLOB and --exclude=GLOB before the reference")
            else:
                refs.append((word, text))
        if len(refs) != 1:
            at = refs[1][0].span if len(refs) > 1 else ins.span
            raise ModelfileError.at(at, f"FROM takes one argument, got {len(refs)}",
                                    hint='quote a value that contains spaces: "like this"')
        word, ref = refs[0]
        try:
            opened = self.sources.open(ref, base_dir=self.base_dir, include=tuple(options["include"]),
                                       exclude=tuple(options["exclude"]))
        except ModelfileError as exc:
            raise exc.located(word.span) from None
        except OSError as exc:  # the path itself is unusable: too long a name, a loop of links
            raise ModelfileError.at(word.span, f"FROM {syntax.shown(ref)}: cannot access ({exc.strerror})") from None
        self.from_span = ins.span
        self.opened = opened if opened.pin is not None else None
        self.context = self._new_context(opened.root)

    def _do_files(self, ins: syntax.Instruction, d: Directive) -> None:
        if self.first_file_span is None:
            self.first_file_span = ins.span
        context = self._context()
        assert d.kind is not None
        for word in ins.args:
            pattern = self.expand(word)
            try:
                matches = context.match(pattern)
            except ModelfileError as exc:
                raise exc.located(word.span) from None
            for m in matches:
                prior = self.files.get(m.path)
                if prior is None:
                    self.files[m.path] = FileSpec(m.path, d.kind, m.is_dir, word.span)
                elif prior.kind != d.kind and not syntax_has_magic(pattern):
                    self.warnings.append(
                        f"{word.span}: {m.path} is already packaged as {prior.kind.value} "
                        f"(line {prior.origin.line if prior.origin else '?'}); keeping that"
                    )

    def _do_scalar(self, ins: syntax.Instruction, d: Directive) -> None:
        word = ins.args[0]
        value = self.expand(word)
        if d.name in self.set_at:
            raise ModelfileError.at(
                ins.span,
                f"duplicate {d.name}: already set at line {self.set_at[d.name].line}",
                hint=f"a Modelfile sets {d.name} once",
            )
        if not value:
            raise ModelfileError.at(word.span, f"{d.name} must not be empty")
        self.set_at[d.name] = ins.span
        self.value_at[d.name] = word.span
        self._lint_scalar(d, value, word.span)
        section, key = d.target.split(".")
        (self.descriptor if section == "descriptor" else self.config)[key] = value

    def _lint_scalar(self, d: Directive, value: str, span: Span) -> None:
        if d.name == "PARAMSIZE" and not _PARAMSIZE.fullmatch(value):
            self.warnings.append(
                f"{span}: PARAMSIZE {syntax.shown(value)} does not follow the ModelPack grammar "
                "<count><Q|T|B|M|K>, e.g. 7B or 494M"
            )
        if d.name == "PRECISION":
            for part in value.split(","):
                if part in KNOWN_PRECISIONS:  # never an alias (a test keeps the two apart)
                    continue
                from modelbuild.schema import PRECISION_ALIASES  # imports importlib.resources: only here

                if part in PRECISION_ALIASES:
                    self.warnings.append(
                        f"{span}: PRECISION {syntax.shown(part)} is not a ModelPack precision; did you mean {PRECISION_ALIASES[part]!r}?"
                    )
                else:
                    self.warnings.append(f"{span}: PRECISION {syntax.shown(part)} is not a known ModelPack precision")

    def _do_list(self, ins: syntax.Instruction, d: Directive) -> None:
        key = d.target.split(".")[1]
        values = self.descriptor.setdefault(key, [])
        seen = self.list_seen.setdefault(key, set())
        for word in ins.args:
            value = self.expand(word)
            if not value:
                raise ModelfileError.at(word.span, f"{d.name} must not be empty")
            if value not in seen:
                seen.add(value)
                values.append(value)

    def _do_label(self, ins: syntax.Instruction, d: Directive) -> None:
        for word in ins.args:
            key, value = _key_value(self.expand(word), word.span, "LABEL")
            self.labels[key] = value

    def _do_capabilities(self, ins: syntax.Instruction, d: Directive) -> None:
        for word in ins.args:
            raw_key, value = _key_value(self.expand(word), word.span, "CAPABILITIES")
            norm = raw_key.lower().replace("-", "").replace("_", "")
            if norm not in CAPABILITY_KEYS:
                import difflib

                close = difflib.get_close_matches(norm, list(CAPABILITY_KEYS), n=1)
                names = ", ".join(k for k, _ in CAPABILITY_KEYS.values())
                raise ModelfileError.at(
                    word.span,
                    f"unknown capability {syntax.shown(raw_key)}",
                    hint=f"did you mean {CAPABILITY_KEYS[close[0]][0]}?" if close else f"known: {names}",
                )
            key, kind = CAPABILITY_KEYS[norm]
            if key in self.capabilities:
                raise ModelfileError.at(word.span, f"capability {key} is set twice")
            self.capabilities[key] = _capability_value(key, kind, value, word.span)


    def _do_target(self, ins: syntax.Instruction, d: Directive) -> None:
        first, *rest = ins.args
        target, _, variant = self.expand(first).partition("/")
        target = target.lower()
        words = [(w, self.expand(w)) for w in rest]
        name = target + (f"-{variant}" if variant else "")
        name_span = first.span
        if len(words) >= 2 and words[-2][1].upper() == "AS":
            name, name_span = words[-1][1], words[-1][0].span
            words = words[:-2]
        if not STAGE_NAME.fullmatch(name):  # it ends every variant's tag: NAME:TAG-STAGE
            raise ModelfileError.at(name_span, f"stage name {syntax.clip(name)} cannot end a tag",
                                    hint="use letters, digits, '.', '_' and '-', at most 64 characters, "
                                         "not starting with '.' or '-'")
        constraints = []
        for word, text in words:
            from modelbuild.targets import ConstraintError, parse_constraint

            try:
                constraints.append(parse_constraint(text))
            except ConstraintError as exc:
                raise ModelfileError.at(word.span, str(exc)) from None
        other = self.stage_names.get(name)
        if other is not None:
            raise ModelfileError.at(
                ins.span, f"two stages named {syntax.clip(name)} (the other is at line {other.origin.line})",
                hint="name one with AS: TARGET cuda compute>=9.0 AS cuda-hopper")
        stage = StageSpec(name, target, variant or None, tuple(constraints), (), ins.span)
        self.stage_names[name] = stage
        self.stages.append(stage)
        self.stage_transforms.append([])
        self.stage_runtime.append(RuntimeLines())

    def _do_runtime(self, ins: syntax.Instruction, d: Directive) -> None:
        """Before the first TARGET a RUNTIME line is every stage's; after, the stage's."""
        (self.stage_runtime[-1] if self.stages else self.runtime).add(ins.span, [(w, self.expand(w)) for w in ins.args])

    def _do_transform(self, ins: syntax.Instruction, d: Directive) -> None:
        first, *rest = ins.args
        arg = self.expand(first).strip()
        if d.name == "SHARD":
            if arg.lower() in ("none", "off", "merge"):
                self.transforms.append(TransformSpec("merge", arg.lower(), (), ins.span))
                return
            from modelbuild.weights import parse_size

            try:
                max_bytes = parse_size(arg)
            except ValueError as exc:
                raise ModelfileError.at(first.span, str(exc), hint="or SHARD none to merge shards") from None
            except OverflowError:  # parse_size turns the digits into a float: 400 nines are infinity
                raise ModelfileError.at(first.span, f"shard size {syntax.shown(arg)} is too large") from None
            self._add_transform(TransformSpec("shard", arg, (), ins.span, max_bytes=max_bytes))
            return
        options: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for word in rest:
            text = self.expand(word)
            key, eq, value = text.removeprefix("--").partition("=")
            if not text.startswith("--") or not eq or not key:
                raise ModelfileError.at(word.span, f"expected an option --name=value, got {syntax.shown(text)}",
                                        hint="e.g. --keep=lm_head.weight")
            # a repeated option becomes a list; the plugin's declaration decides whether it may
            # be (a list option) or not (an error at the repetition); keep is always a list
            if key == "keep":
                options.setdefault("keep", []).extend(v for v in value.split(",") if v)
                spans.setdefault(key, word.span)
            elif key in options:
                previous = options[key]
                options[key] = [*(previous if isinstance(previous, list) else [previous]), value]
                spans[key] = word.span
            else:
                options[key] = value
                spans[key] = word.span
        action = "convert" if d.name == "CONVERT" else "quantize"
        self._add_transform(TransformSpec(action, arg.lower(), tuple(sorted(options.items())), ins.span,
                                          option_spans=tuple(sorted(spans.items()))))

    def _add_transform(self, t: TransformSpec) -> None:
        """Before the first TARGET a transform is shared by every stage; after, it is the stage's."""
        (self.stage_transforms[-1] if self.stages else self.transforms).append(t)


def syntax_has_magic(pattern: str) -> bool:
    from modelbuild.context import has_magic

    return has_magic(pattern)


def _unknown_directive(ins: syntax.Instruction) -> ModelfileError:
    import difflib

    close = difflib.get_close_matches(ins.keyword, list(DIRECTIVES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "see docs/modelfile.md for the directives"
    return ModelfileError.at(ins.span, f"unknown directive {syntax.clip(ins.raw_keyword)}", hint=hint)


def _key_value(text: str, span: Span, directive: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ModelfileError.at(span, f"{directive} expects key=value, got {syntax.shown(text)}")
    return key, value


def _capability_value(key: str, kind: str, value: str, span: Span) -> Any:
    if kind == "bool":
        low = value.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ModelfileError.at(span, f"capability {key} must be true or false, got {syntax.shown(value)}")
    if kind == "modalities":
        items = [v.strip().lower() for v in value.split(",") if v.strip()]
        for item in items:
            if item not in MODALITIES:
                raise ModelfileError.at(
                    span, f"unknown modality {syntax.shown(item)} in {key}", hint=f"one of {', '.join(MODALITIES)}"
                )
        return items
    if kind == "languages":
        items = [v.strip().lower() for v in value.split(",") if v.strip()]
        for item in items:
            if not re.fullmatch(r"[a-z]{2}", item):
                raise ModelfileError.at(
                    span, f"bad language code {syntax.shown(item)}", hint="use two-letter ISO 639-1 codes such as en, zh"
                )
        return items
    return _rfc3339(value, span, key)


def _rfc3339(value: str, span: Span, key: str) -> str:
    """Normalise a date or date-time to RFC 3339 in UTC, as the schema's date-time wants."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ModelfileError.at(
            span, f"{key} must be a date (2024-06-01) or an RFC 3339 date-time, got {syntax.shown(value)}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        utc = parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise ModelfileError.at(span, f"{key} {syntax.shown(value)} is out of range in UTC") from None
    # isoformat, not strftime("%Y"): that writes year 999 as "999", which is not RFC 3339
    return utc.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _drop_nested(files: dict[str, FileSpec], warnings: list[str]) -> dict[str, FileSpec]:
    """Drop files that a packaged directory already contains, so no byte is packaged twice."""
    dirs = {p for p, f in files.items() if f.is_dir}
    if not dirs:
        return files
    kept = {}
    for path, spec in files.items():
        parent = _packaged_ancestor(path, dirs)
        if parent is None:
            kept[path] = spec
        else:
            warnings.append(f"{spec.origin}: {path} is inside directory {parent}, which is packaged whole")
    return kept



def _packaged_ancestor(path: str, dirs: set[str]) -> str | None:
    """The outermost packaged directory above *path*: a set lookup per ancestor, not a scan
    of every directory per file (which made a context of many directories quadratic)."""
    i = path.find("/")
    while i >= 0:
        if path[:i] in dirs:
            return path[:i]
        i = path.find("/", i + 1)
    return None


__all__ = ["ModelfileFrontend", "FileKind"]
