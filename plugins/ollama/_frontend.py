"""The ``ollama`` frontend: an Ollama Modelfile → the build description a Modelfile gives.

What each command becomes (docs/ollama.md has the table, and the carriage in full):

* ``FROM ./model.gguf``: the build context is the GGUF file's directory and the file is one
  MODEL layer (config ``format: gguf``); ``FROM ./dir``: the context is the directory, its
  ``*.safetensors`` are MODEL layers and its configuration and tokenizer files
  (:data:`CONFIG_NAMES`) CONFIG layers (``format: safetensors``), or, holding no
  safetensors, its ``*.gguf`` files MODEL layers. Paths are relative to the Modelfile's
  directory, absolute, or ``~``-relative, as Ollama's ``expandPath`` takes them. A second
  local ``FROM`` (a vision model's projector) adds its files; they must be inside the first
  one's context;
* ``FROM llama3.2``, ``FROM qwen2:0.5b``, ``FROM host/ns/model:tag`` (text that is no
  existing path and reads as an Ollama model name): the source registry opens
  ``ollama://HOST/NAMESPACE/MODEL:TAG`` (``registry.ollama.ai``, ``library`` and ``latest``
  filled in), and the listing's files, descriptor, config and annotations are the start the
  Modelfile's own values go over, as ``ollama create`` layers a Modelfile over its base;
* ``ADAPTER``, ``DRAFT``: MODEL (and CONFIG) layers from inside the context, and their
  paths in the artifact in annotations;
* ``TEMPLATE``, ``SYSTEM``, ``PARAMETER``, ``MESSAGE``, ``LICENSE``, ``REQUIRES``,
  ``RENDERER``, ``PARSER``: manifest annotations (``_carriage``); ``PARAMETER num_ctx N`` is
  also the runtime's context length (``RUNTIME context=N``); a LICENSE that is an SPDX
  identifier is also in ``descriptor.licenses``.

Everything the text alone can check (commands, parameter names and values, roles,
versions, repetitions) is checked before the file system is looked at: a typo is reported
even where the model is not there yet. Every error is located at the token at fault.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from modelbuild.api import (
    BuildDescription,
    FileKind,
    FileSpec,
    ModelfileError,
    RuntimeSpec,
    Span,
    artifact_path_problem,
    lfs_pointer_hint,
)

from . import _carriage as carriage
from ._parse import Command, Token, clip, parse

if TYPE_CHECKING:
    from modelbuild.api import OpenedSource, SourceRegistry

# what FROM ./dir packages as CONFIG beside the safetensors weights, when it exists
CONFIG_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
CONFIG_SUFFIXES = (".tiktoken", ".safetensors.index.json")
GGUF_MAGIC = b"GGUF"
MAX_LISTED = 100_000  # entries looked at in one directory FROM, ADAPTER or DRAFT names
ONCE = ("template", "system", "adapter", "draft", "requires", "renderer", "parser")
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"

# Ollama's model names (types/model/name.go, isValidPart): [host/][namespace/]model[:tag]
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"  # no "." in a namespace
_NAME = re.compile(rf"(?:(?:(?P<host>{_HOST})/)?(?P<namespace>{_NAMESPACE})/)?(?P<model>{_PART})(?::(?P<tag>{_PART}))?"
                   r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?")  # @digest: modelbuild's, to pin the manifest
# golang.org/x/mod/semver, which REQUIRES is checked with (a "v" added when missing)
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+{_BUILD}(?:\.{_BUILD})*)?)?)?")


class OllamaFrontend:
    """``# syntax=ollama``, or a build file named ``Ollama.Modelfile``, ``NAME.Ollama.Modelfile``,
    ``Ollamafile`` or ``NAME.ollama``."""

    name = "ollama"
    summary = "Ollama Modelfile: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE, REQUIRES"
    # a file named just "Modelfile" stays the core's: Ollama's own name would claim every Modelfile
    filenames = ("Ollama.Modelfile", "*.Ollama.Modelfile", "Ollamafile", "*.ollama")

    def load(self, text: str, *, filename: str, base_dir: Path, default_context: Path,
             build_args: Mapping[str, str], sources: "SourceRegistry") -> BuildDescription:
        said = _read(parse(text, filename), filename)
        return _describe(said, filename=filename, base_dir=base_dir, build_args=build_args, sources=sources)


# -- what the text says ------------------------------------------------------------------------
@dataclass
class _Said:
    """The commands of one file, checked as far as the text goes."""

    froms: list[Command] = field(default_factory=list)
    once: dict[str, Command] = field(default_factory=dict)  # TEMPLATE, SYSTEM, ADAPTER…: at most one each
    params: dict[str, Any] = field(default_factory=dict)
    param_at: dict[str, Span] = field(default_factory=dict)  # where each parameter's (last) value is
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    requires: str | None = None
    warnings: list[str] = field(default_factory=list)

    def text(self, name: str) -> str | None:
        command = self.once.get(name)
        return None if command is None else command.value.text


def _read(commands: list[Command], filename: str) -> _Said:
    said = _Said()
    for command in commands:
        if command.name in ONCE:
            prior = said.once.get(command.name)
            if prior is not None:
                raise ModelfileError.at(command.keyword.span, f"{command.name.upper()} is already set at line "
                                        f"{prior.keyword.span.line}",
                                        hint="Ollama would keep only the last one; write it once")
            said.once[command.name] = command
        value = command.value
        if command.name == "parameter":
            _parameter(command, said)
        elif command.name == "message":
            said.messages.append({"role": command.key.text, "content": value.text})  # type: ignore[union-attr]
        elif command.name == "license":
            if not value.text.strip():
                raise ModelfileError.at(value.span, "the LICENSE text is empty",
                                        hint='LICENSE MIT, or LICENSE """…"""')
            said.licenses.append(value.text)
        elif command.name == "requires":
            version = value.text if value.text.startswith("v") else "v" + value.text
            if not _SEMVER.fullmatch(version):
                raise ModelfileError.at(value.span, f"REQUIRES {clip(value.text)} is not a version",
                                        hint="a semantic version, e.g. 0.14.0, as Ollama requires")
            said.requires = version[1:]
        elif command.name in ("from", "adapter", "draft", "renderer", "parser") and not value.text:
            raise ModelfileError.at(value.span, f"{command.name.upper()} must not be empty")  # "" names nothing
        if command.name == "from":
            said.froms.append(command)
    if not said.froms:
        raise ModelfileError.at(Span(filename, 1, 1), "no FROM line",
                                hint="FROM names the model: a GGUF file, a safetensors directory, or an Ollama "
                                     "model name such as llama3.2")
    return said


def _parameter(command: Command, said: _Said) -> None:
    key, value = command.key, command.value
    assert key is not None
    name = key.text
    if name in carriage.DEPRECATED_PARAMETERS:
        said.warnings.append(f"{key.span}: parameter {name} is deprecated: Ollama ignores it, and it is not carried")
        return
    try:
        kind = carriage.check_parameter_name(name)
    except ModelfileError as exc:
        raise exc.located(key.span) from None
    try:
        typed = carriage.parse_parameter(name, value.text)
    except ModelfileError as exc:
        raise exc.located(value.span) from None
    if kind is list:
        said.params.setdefault(name, []).append(typed)
    elif name in said.params:
        raise ModelfileError.at(key.span, f"PARAMETER {name} is already set at line {said.param_at[name].line}",
                                hint="only stop may repeat; Ollama would keep the last value")
    else:
        if name == "num_ctx" and carriage.runtime_context({name: typed}) is None:
            raise ModelfileError.at(value.span, f"num_ctx {typed} is not a context length",
                                    hint=f"a whole number of tokens from 1 to {carriage.MAX_CONTEXT}: it is also "
                                         "the runtime's context length")
        said.params[name] = typed
    said.param_at[name] = value.span


# -- the files ---------------------------------------------------------------------------------
@dataclass
class _Files:
    """The build context and what is packaged from it."""

    context: str  # a real, absolute path
    specs: dict[str, FileSpec] = field(default_factory=dict)
    owner: dict[str, Command] = field(default_factory=dict)  # which command packaged each path

    def add(self, rel: str, kind: FileKind, command: Command) -> None:
        if problem := artifact_path_problem(rel):
            raise ModelfileError.at(command.value.span, f"{clip(rel)}: this file name {problem}; an artifact "
                                    "cannot carry it, rename it")
        prior = self.owner.get(rel)
        if prior is not None and not prior.name == command.name == "from":  # two FROMs of one file: once
            raise ModelfileError.at(command.value.span, f"{command.name.upper()} names {clip(rel)}, which "
                                    f"{prior.name.upper()} (line {prior.keyword.span.line}) packages already",
                                    hint="a draft model or adapter is a file of its own, not the model")
        self.specs[rel] = FileSpec(rel, kind, False, command.value.span)
        self.owner.setdefault(rel, command)


def _describe(said: _Said, *, filename: str, base_dir: Path, build_args: Mapping[str, str],
              sources: "SourceRegistry") -> BuildDescription:
    first = said.froms[0]
    path = _existing(first.value, base_dir)
    opened = None
    if path is None and not _looks_like_path(first.value.text):
        opened = _open_registry_model(said, base_dir, sources)
    if opened is not None and opened.listing is not None:
        files = _Files(str(opened.root))
        for remote in opened.listing.files:
            if remote.kind:
                files.specs[remote.path] = FileSpec(remote.path, FileKind(remote.kind), bool(remote.unpack),
                                                    first.value.span)
        listing = opened.listing
        base_labels, descriptor, config = dict(listing.labels), dict(listing.descriptor), dict(listing.config)
    else:
        if opened is not None:  # a source that gave a directory: read it as FROM ./dir
            path = str(opened.root)
        elif path is None:
            raise _not_found(first.value, base_dir)
        directory, entries, fmt = _model_entries(path, first.value, "from")
        files = _Files(directory)
        _add(files, directory, entries, first)
        for more in said.froms[1:]:
            found = _existing(more.value, base_dir)
            if found is None:
                raise _not_found(more.value, base_dir)
            directory, entries, _fmt = _model_entries(found, more.value, "from")
            _add(files, _inside(directory, files.context, more, first), entries, more)
        base_labels, descriptor, config = {}, {}, {"format": fmt} if fmt else {}
    adapters = _extra(said.once.get("adapter"), files, base_dir, first)
    drafts = _extra(said.once.get("draft"), files, base_dir, first)
    own = carriage.labels_for(template=said.text("template"), system=said.text("system"), params=said.params,
                              messages=said.messages, licenses=said.licenses, adapters=adapters, drafts=drafts,
                              requires=said.requires, renderer=said.text("renderer"), parser=said.text("parser"))
    labels = carriage.layer_labels(base_labels, own, clear_system=said.text("system") == "")
    licenses = list(descriptor.get("licenses") or [])
    licenses += [x for x in carriage.spdx_licenses(said.licenses) if x not in licenses]
    if licenses:
        descriptor["licenses"] = licenses
    warnings = list(said.warnings)
    if build_args:
        warnings.append(f"build argument(s) not used by an Ollama Modelfile: {', '.join(sorted(build_args))}")
    description = BuildDescription(
        context=Path(files.context),
        files=tuple(files.specs[p] for p in sorted(files.specs)),
        name=None,  # `ollama create NAME` names the model on the command line: here -t does
        descriptor=descriptor,
        config=config,
        labels=labels,
        source_file=filename,
        warnings=tuple(warnings),
    )
    return _with_runtime(description, said, first)


def _with_runtime(description: BuildDescription, said: _Said, first: Command) -> BuildDescription:
    """*description* with ``num_ctx`` as its runtime context length (``RUNTIME context=N``):
    the Modelfile's own, else its base model's."""
    if "num_ctx" in said.params:
        context, origin = said.params["num_ctx"], said.param_at["num_ctx"]
    elif carriage.PARAMS in description.labels:
        context = carriage.runtime_context(carriage.read_labels(description.labels).params)
        origin = first.value.span
    else:
        return description
    if context is None:
        return description
    return dataclasses.replace(description, runtime=RuntimeSpec(context=context, context_origin=origin))


def _open_registry_model(said: _Said, base_dir: Path, sources: "SourceRegistry") -> "OpenedSource":
    first = said.froms[0]
    reference = ollama_reference(first.value.text)
    if reference is None:
        raise ModelfileError.at(first.value.span, f"FROM {clip(first.value.text)} is neither an existing file or "
                                "directory nor an Ollama model name",
                                hint=f"a path relative to {base_dir}, or a name such as llama3.2 or qwen2:0.5b")
    for command in [*said.froms[1:], said.once.get("adapter"), said.once.get("draft")]:
        if command is not None:
            raise ModelfileError.at(command.keyword.span, f"{command.name.upper()} cannot be combined with a FROM "
                                    f"that names a registry model (line {first.keyword.span.line})",
                                    hint="the build context is then the fetched model; pull its GGUF file and "
                                         "name it by path to add local files")
    try:
        return sources.open(reference, base_dir=base_dir)
    except ModelfileError as exc:
        if exc.span is None and reference not in exc.message:  # say what the name became
            exc.message = f"{reference}: {exc.message}"
        raise exc.located(first.value.span) from None


def ollama_reference(text: str) -> str | None:
    """``ollama://HOST/NAMESPACE/MODEL:TAG`` for an Ollama model name (``llama3.2``,
    ``qwen2:0.5b``, ``library/qwen2:0.5b``, ``hf.co/org/model:Q4_K_M``), the parts Ollama
    fills in filled in; None when *text* is no such name. ``NAME@sha256:…`` (not Ollama's:
    modelbuild's, as ``FROM ollama://…@sha256:…``) pins the manifest."""
    if len(text) > 600:
        return None
    match = _NAME.fullmatch(text)
    if match is None:
        return None
    host = match["host"] or DEFAULT_HOST
    namespace = match["namespace"] or DEFAULT_NAMESPACE
    if match["digest"]:  # pinned: the tag, if any, only says where the digest came from
        tag = f":{match['tag']}" if match["tag"] else ""
        return f"ollama://{host}/{namespace}/{match['model']}{tag}@{match['digest']}"
    return f"ollama://{host}/{namespace}/{match['model']}:{match['tag'] or DEFAULT_TAG}"


def _extra(command: Command | None, files: _Files, base_dir: Path, first: Command) -> list[str]:
    """ADAPTER's or DRAFT's files added to *files*; their paths for the annotation."""
    if command is None:
        return []
    path = _existing(command.value, base_dir)
    if path is None:
        raise _not_found(command.value, base_dir)
    what = command.name
    directory, entries, _fmt = _model_entries(path, command.value, what)
    rel_dir = _inside(directory, files.context, command, first)
    is_dir = os.path.isdir(path)
    if is_dir and rel_dir == ".":
        raise ModelfileError.at(command.value.span, f"{what.upper()} names the whole build context",
                                hint=f"put the {'adapter' if what == 'adapter' else 'draft model'} in a "
                                     "directory of its own beside the model")
    _add(files, directory, entries, command, base=rel_dir)
    if is_dir and any(name.endswith(".safetensors") for name, _kind in entries):
        return [rel_dir]  # a safetensors adapter is its directory (weights and adapter_config.json)
    return [_join(rel_dir, name) for name, kind in entries if kind is FileKind.MODEL]


def _add(files: _Files, directory: str, entries: list[tuple[str, FileKind]], command: Command,
         base: str | None = None) -> None:
    rel_dir = base if base is not None else os.path.relpath(directory, files.context).replace(os.sep, "/")
    for name, kind in entries:
        files.add(_join(rel_dir, name), kind, command)


def _join(rel_dir: str, name: str) -> str:
    return name if rel_dir == "." else f"{rel_dir}/{name}"


def _inside(directory: str, context: str, command: Command, first: Command) -> str:
    """*directory* relative to the context; an error when it is outside."""
    if os.path.commonpath([directory, context]) != context:
        raise ModelfileError.at(command.value.span, f"{command.name.upper()} {clip(command.value.text)} is outside "
                                f"the build context {context}",
                                hint=f"the context is the directory of FROM's model (line {first.keyword.span.line}) "
                                     "and an artifact carries only paths inside it: copy or link the file into it")
    return os.path.relpath(directory, context).replace(os.sep, "/")


# -- reading paths ------------------------------------------------------------------------------
def _existing(token: Token, base_dir: Path) -> str | None:
    """The absolute path *token* names, as Ollama's expandPath makes it (absolute, ``~``,
    ``~user``, else relative to the Modelfile's directory), when something is there; None
    when nothing is."""
    text = token.text
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded == text:
            user = text[1:].split("/", 1)[0]
            raise ModelfileError.at(token.span, f"{clip(text)}: no user named {clip(user)}",
                                    hint="~ is your home directory, ~NAME that of user NAME")
        text = expanded
    path = os.path.abspath(os.path.join(base_dir, text))
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ModelfileError.at(token.span, f"{clip(token.text)}: broken symlink (points to "
                                    f"{os.readlink(path)!r})") from None
        return None
    except (OSError, ValueError) as exc:  # too long a name, a loop of links
        raise ModelfileError.at(token.span, f"{clip(token.text)}: cannot access "
                                f"({getattr(exc, 'strerror', None) or exc})") from None
    return path


def _looks_like_path(text: str) -> bool:
    """Whether FROM's text is meant as a path (so a missing one is an error, not a model to
    pull): it starts as a path does or ends as a weight file does."""
    return (text in (".", "..") or text.startswith(("./", "../", "/", "~", ".\\", "\\"))
            or text.lower().endswith((".gguf", ".safetensors", ".bin")))


def _not_found(token: Token, base_dir: Path) -> ModelfileError:
    return ModelfileError.at(token.span, f"{clip(token.text)}: no such file or directory",
                             hint=f"a relative path is relative to the Modelfile's directory, {base_dir}")


def _model_entries(path: str, token: Token, what: str) -> tuple[str, list[tuple[str, FileKind]], str | None]:
    """The real directory *path* is or is in, the names in it to package (with their kind),
    and their weight format: a GGUF file; or a directory's safetensors and configuration
    files, else its GGUF files."""
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        directory = os.path.realpath(os.path.dirname(path))
        name = os.path.basename(path)
        head = _head(path, token)
        if head.startswith(GGUF_MAGIC):
            return directory, [(name, FileKind.MODEL)], "gguf"
        if what != "from" and name.endswith(".safetensors"):
            return directory, [(name, FileKind.MODEL)], "safetensors"
        raise ModelfileError.at(token.span, f"{clip(token.text)} is not a GGUF file: it does not start with the "
                                "GGUF magic", hint=lfs_pointer_hint(head) or f"{what.upper()} takes a GGUF file or "
                                                                             "a directory of safetensors weights")
    if not stat.S_ISDIR(st.st_mode):
        raise ModelfileError.at(token.span, f"{clip(token.text)} is not a regular file or directory")
    directory = os.path.realpath(path)
    names = _list(directory, token)
    weights = [n for n in names if n.endswith(".safetensors")]
    if weights:
        configs = [n for n in names if n in CONFIG_NAMES or n.endswith(CONFIG_SUFFIXES)
                   or (what != "from" and n.endswith(".json"))]  # an adapter's adapter_config.json
        entries = [(n, FileKind.MODEL) for n in weights] + [(n, FileKind.CONFIG) for n in configs]
        return directory, sorted(entries), "safetensors"
    ggufs = [n for n in names if n.endswith(".gguf")]
    if ggufs:
        return directory, [(n, FileKind.MODEL) for n in ggufs], "gguf"
    raise ModelfileError.at(token.span, f"{clip(token.text)}: no *.safetensors or *.gguf files in {directory}",
                            hint=f"{what.upper()} takes a GGUF file or a directory of safetensors weights")


def _list(directory: str, token: Token) -> list[str]:
    """The regular files (or links to them) directly in *directory*, sorted; at most MAX_LISTED looked at."""
    names = []
    try:
        with os.scandir(directory) as it:
            for n, entry in enumerate(it):
                if n >= MAX_LISTED:
                    raise ModelfileError.at(token.span, f"more than {MAX_LISTED} entries in {directory}")
                try:
                    if entry.is_file():  # follows a link, as the build does for its content
                        names.append(entry.name)
                except OSError:
                    continue
    except OSError as exc:
        raise ModelfileError.at(token.span, f"{clip(token.text)}: cannot list ({exc.strerror})") from None
    return sorted(names)


def _head(path: str, token: Token) -> bytes:
    """The first bytes of the file at *path* (opened without blocking: never a FIFO's wait)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            return os.read(fd, 64)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ModelfileError.at(token.span, f"{clip(token.text)}: cannot read ({exc.strerror})") from None


__all__ = ["CONFIG_NAMES", "OllamaFrontend", "ollama_reference"]
