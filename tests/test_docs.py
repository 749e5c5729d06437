"""Docs that run: every fenced block of README.md and docs/**/*.md is found, classified and
run, so an example that stops working fails here, and a new block that no rule claims fails
too (``test_doc_block`` reports it as unclassified).

How each class of block runs (``classify``):

* **Modelfile** (```` ```dockerfile ````, ```` ```Modelfile ````, or an unlabelled block that
  starts with a directive or ``# syntax=``): built for real, in a generated context. The files
  it names are written: the bundled tiny-llama model's files where a name or pattern fits
  them (``config.json``, ``*.safetensors``…; tiny-llama stands in for Qwen2-0.5B, so the
  ``CONVERT``/``QUANTIZE``/``SHARD``/``TARGET`` examples run), small stand-ins otherwise,
  or the directory tree drawn in the same section. No Modelfile example needs
  ``--print-graph`` instead of a build.
* **console** (```` ```console ````): each ``$ command`` runs, its documented output compared
  (see ``Session``). ``modelbuild …`` runs in this process with its own store (a build first
  writes stand-ins for the files its Modelfile, or its Kitfile's ``path:`` entries, name); ``cat FILE``
  writes FILE from the documented text when it does not exist yet (that is how the examples
  show their Modelfiles), else compares; ``cd``; ``echo $?`` compares the exit status;
  ``pip install ./DIST`` installs the distribution assembled from the page; anything else
  runs in bash. Registry examples run against a real registry (``docker-registry``, as in
  tests/registry) with ``registry.example.com`` replaced by its address and ``--plain-http``
  added; an interactive ``login`` is answered as a user at a terminal would.
* **sh** (```` ```sh ````): each command line runs like a console command with no output shown;
  the README's two lines are checked as described in ``test_readme_lines``.
* **python** (docs/plugins.md): the blocks of a section are assembled, in page order, into a
  plugin distribution (with the page's ``pyproject.toml``), pip-installed into a directory of
  its own, listed by ``modelbuild plugins`` and built with; the "test it" block is run as the
  plugin author's tests.
* **output** blocks are compared with what the named command prints (the step graph of
  ``--print-graph``, the registry error line), **JSON** blocks with the config, capabilities,
  file metadata or index a real build writes, **error lines** with the errors real Modelfiles
  give, **synopses** (``NAME <value>``, ``modelbuild build [-f …]``) with the directive table
  and ``--help``, **directory trees** with the files they describe.
* Blocks that cannot run are listed in ``NOT_RUN`` with the reason; an entry that matches no
  block fails ``test_not_run_entries_still_exist``.

Documented output is compared after normalising both sides (``normalize``): digests,
durations and short ids are placeholders; the directories the test made are shown as the
paths the docs use; blanks collapse; a line ``…`` stands for any number of lines and ``…``
inside a line for any text. Progress lines (``#N …``) are compared only where an example
shows them, and then the example's last step must be the build's last step. A weight
contradiction warning is compared (its value aside) where an example shows one and ignored
otherwise, since the generated weights are not the model the example describes.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import blob, read_artifact
from support import EXAMPLES, REPO, Run, age, safetensors_blob

TINY = EXAMPLES / "tiny-llama" / "model"
TINY_MODELFILE = EXAMPLES / "tiny-llama" / "Modelfile"
DOC_FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]

# Blocks that are not run, each with the reason: (file, the start of the block's first line).
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/architecture.md", "Modelfile ──frontend──▶"): "a diagram of the pipeline, not an example",
    ("docs/benchmarks.md", "machine: 2 CPUs"): "a benchmark's recorded output: the measurements are the record",
    ("docs/benchmarks.md", "python3 -m venv /tmp/nvenv"):
        "a benchmark run: a second virtualenv with a regular install, 2.15 GB of generated weights, minutes",
    ("docs/benchmarks.md", "PYTHONPATH=/tmp/before"):
        "benchmark runs: a git worktree of an older commit in /tmp/before, 2.15 GB of generated weights, minutes",
    ("docs/sources.md", "FROM hf://Qwen/Qwen2-0.5B@8f4c"):
        "needs the Hub, a web server and two registries: tests/test_source_hf.py, tests/test_source_https.py, "
        "tests/registry/test_from_oci.py and tests/registry/test_from_ollama.py build each kind",
    ("docs/sources.md", "#1  fetch hf://"): "needs the Hub: tests/test_fetch.py checks the first step's label",
    ("docs/sources.md", "FROM --include="): "needs the Hub: tests/test_fetch.py and tests/test_source_hf.py "
                                              "build with --include/--exclude",
    ("docs/sources.md", "FROM oci://registry.example.com/team/qwen2"):
        "tests/registry/test_from_oci.py re-quantizes a pushed artifact the same way",
    ("docs/signing.md", '{"critical": {"identity"'): "the payload's format: tests/test_cosign_format.py checks "
                                                       "what modelbuild writes and reads against it",
    ("docs/signing.md", '{"default": [{"type": "reject"}]'):
        "skopeo's policy: tests/registry/test_signing.py runs skopeo with it against a real registry",
    ("docs/signing.md", "docker:"): "skopeo's registries.d: tests/registry/test_signing.py runs skopeo with it",
    ("docs/scale.md", "RAY_ADDRESS=10.0.0.5:6379"): "needs a Ray cluster: tests/cluster/ builds with --executor ray",
    ("docs/scale.md", "$ ray start --head"): "starts a Ray cluster: tests/cluster/ starts one the same way (ray start "
                                              "--head, ray start --address) and builds this example on it",
    ("docs/scale.md", "apiVersion: v1"): "Kubernetes objects: tests/test_scale_docs.py validates them",
    ("docs/scale.md", "modelbuild: error: node"): "tests/test_scale_docs.py compares it with the error a node that "
                                                  "does not see the store gives",
    ("docs/benchmarks.md", "git worktree add /tmp/before"):
        "benchmark runs: git worktrees of older commits, a 1.05 GB input, 12 rounds each",
}

# Programs a documented pipeline may end in that the tests do not install: the part of the
# command before them runs, the rest is not run (e.g. ``modelbuild … --print-graph=dot | dot -Tsvg``).
TOOLS_NOT_HERE = {"dot": "Graphviz draws the graph; not a test dependency"}

# Template blocks: the template as a regular expression, and where real examples come from.
TEMPLATES = {
    "application/vnd.cncf.model.<family>.v1.<format>": r"application/vnd\.cncf\.model\.[a-z.]+\.v1\.[a-z+]+",
    "FILE:LINE:COLUMN: message (hint)": r"[^\s:]+:\d+:\d+: .+",
}

PROGRESS = re.compile(r"^#(\d+) ")


# -- finding the blocks ----------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # the opening fence's line, 1-based
    lang: str  # after the fence, lower-cased
    text: str  # the body, the fence's indentation removed
    section: str  # the nearest heading above
    before: str  # the last paragraph above the block

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def first(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


def read_blocks(path: str) -> list[Block]:
    lines = (REPO / path).read_text().splitlines()
    blocks: list[Block] = []
    section, para, last_para, i = "", [], [], 0
    while i < len(lines):
        opening = re.match(r"^( *)(`{3,}|~{3,})\s*([^`\s]*)", lines[i])
        if opening:
            indent, fence = len(opening[1]), opening[2]
            closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            body, j = [], i + 1
            while j < len(lines) and not closing.match(lines[j]):
                body.append(lines[j][indent:] if not lines[j][:indent].strip() else lines[j])
                j += 1
            assert j < len(lines), f"{path}:{i + 1}: a code block that is never closed"
            blocks.append(Block(path, i + 1, opening[3].lower(), "\n".join(body) + "\n", section,
                                " ".join(para or last_para)))
            para, last_para, i = [], [], j + 1
            continue
        heading = re.match(r"^#{1,6} +(.*?)\s*$", lines[i])
        if heading:
            section, para, last_para = heading[1], [], []
        elif lines[i].strip():
            para.append(lines[i].strip())
        elif para:
            last_para, para = para, []
        i += 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in read_blocks(path)]


def _directives() -> set[str]:
    from modelbuild.frontend.directives import DIRECTIVES

    return set(DIRECTIVES)


def not_run_reason(b: Block) -> str | None:
    return next((reason for (path, start), reason in NOT_RUN.items() if b.path == path and b.first.startswith(start)),
                None)


def classify(b: Block) -> str | None:
    """The kind of a block (which runner runs it), or None when no rule claims it."""
    if not_run_reason(b):
        return "not run"
    first = b.first
    word = re.match(r"^([A-Za-z][A-Za-z0-9_]*)\s", first)
    if b.lang in ("dockerfile", "modelfile") or (b.lang == "" and (
            re.match(r"^#\s*syntax\s*=", first, re.I) or (word and word[1].upper() in _directives()))):
        return "modelfile"
    if b.lang == "console":
        return "console"
    if b.lang in ("sh", "bash", "shell"):
        first_readme_block = min((x.line for x in ALL_BLOCKS if x.path == "README.md"), default=0)
        return "readme-lines" if b.path == "README.md" and b.line == first_readme_block else "sh"
    if b.path == "docs/plugins.md" and b.lang == "python":
        return "python"
    if b.path == "docs/plugins.md" and b.lang == "toml":
        return "pyproject"
    if b.lang == "json":
        data = b.text.strip()
        if data.startswith('"capabilities"'):
            return "json-capabilities"
        if '"typeflag"' in data:
            return "json-file-metadata"
        if '"modelfs"' in data:
            return "json-config"
        if '"manifests"' in data:
            return "json-index"
        if '"engines"' in data and '"contextLength"' in data:
            return "json-runtime"
        return None
    if "├── " in b.text or "└── " in b.text:
        return "tree"
    if b.lang in ("", "text"):
        lines = [line for line in b.text.splitlines() if line.strip()]
        if all(re.match(r"^Modelfile:\d+:\d+: ", line) for line in lines):
            return "error-lines"
        if first in TEMPLATES:
            return "template"
        if b.lang == "text" and all(line.split()[0].upper() in _directives() for line in lines):
            return "synopsis"
        if b.lang == "text" and first.startswith("modelbuild "):
            return "usage"
        if b.lang == "" and first.startswith("#1 ") and re.search(r"`(modelbuild [^`]*--print-graph[^`]*)`", b.before):
            return "graph"
        if b.lang == "" and first.startswith("modelbuild: error: registry "):
            return "registry-error"
    return None


def blocks_of(path: str, section: str | None = None, kind: str | None = None) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.path == path and (section is None or b.section == section)
            and (kind is None or classify(b) == kind)]


# -- generated contexts ----------------------------------------------------------------------
def expand(word, variables: dict[str, str]) -> str:
    """A Modelfile word's value with *variables* (enough for the docs' ARG examples)."""
    from modelbuild.frontend.syntax import VarRef

    out = []
    for part in word.parts:
        if isinstance(part, VarRef):
            value = variables.get(part.name, "")
            value = (value or part.operand) if part.op == ":-" else (part.operand if value else "") \
                if part.op == ":+" else value
            out.append(value)
        else:
            out.append(part)
    return "".join(out)


def modelfile_paths(text: str, build_args: dict[str, str]) -> tuple[str | None, list[tuple[str, str]]]:
    """The Modelfile's FROM (expanded) and its file arguments as (directive, value)."""
    from modelbuild.frontend.syntax import parse

    variables: dict[str, str] = {}
    source, files = None, []
    for ins in parse(text, "Modelfile"):
        values = [expand(w, variables) for w in ins.args]
        if ins.keyword == "ARG":
            for value in values:
                name, _, default = value.partition("=")
                variables[name] = build_args.get(name, default)
        elif ins.keyword == "FROM":
            source = values[0]
        elif ins.keyword in ("CONFIG", "MODEL", "CODE", "DATASET", "DOC"):
            files += [(ins.keyword, v) for v in values]
    return source, files


def bf16_safetensors(n: int = 64) -> bytes:
    header = json.dumps({"weight": {"dtype": "BF16", "shape": [n], "data_offsets": [0, 2 * n]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + bytes(2 * n)


def write_stand_in(path: Path, directory: bool = False) -> None:
    """A file (or directory) named by an example: tiny-llama's file of that name, the tiny
    weights for the first ``.safetensors``, a small stand-in otherwise."""
    if path.exists():
        return
    if directory:
        (path / "train.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (path / "train.jsonl").write_text('{"text": "hello"}\n')
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if (TINY / path.name).is_file():
        shutil.copyfile(TINY / path.name, path)
    elif path.suffix == ".safetensors":
        weights = [p for p in path.parent.glob("*.safetensors") if p != path]
        data = safetensors_blob(path.name.encode() * 8, name=path.stem) if weights else \
            (TINY / "model.safetensors").read_bytes()
        path.write_bytes(data)
    else:
        path.write_text({".py": "print('hello')\n", ".json": "{}\n", ".jsonl": '{"text": "hello"}\n',
                         ".md": "# example\n"}.get(path.suffix, "example\n"))
    age(path)


def generate_context(modelfile: Path, build_args: dict[str, str] | None = None,
                     paths: dict[str, Path] | None = None) -> Path:
    """Write the files *modelfile* names, where its FROM says (or beside it); return the
    context. *paths* maps absolute paths of the docs (``/data/…``) to directories of the test."""
    source, files = modelfile_paths(modelfile.read_text(), build_args or {})
    if source is None:
        context = modelfile.parent
    else:
        source = source.removeprefix("file://")
        for doc, real in (paths or {}).items():
            if source.startswith(doc):
                source = str(real) + source[len(doc):]
        context = (modelfile.parent / os.path.expanduser(source)).resolve()
    context.mkdir(parents=True, exist_ok=True)
    pool = sorted(p.name for p in TINY.iterdir())
    for directive, value in files:
        value = value.removeprefix("./")
        if not re.search(r"[*?\[]", value):
            write_stand_in(context / value, directory=value.endswith("/") or (directive == "DATASET" and
                                                                             "." not in value))
            continue
        matching = [n for n in pool if fnmatch.fnmatchcase(n, value.removeprefix("**/"))]
        if any(True for _ in context.glob(value)):
            continue
        for name in matching or [re.sub(r"\[!?\^?(.)[^\]]*\]", r"\1", value.replace("**/", "")).replace("*", "x")
                                 .replace("?", "x")]:
            write_stand_in(context / name)
    return context


def is_kitfile(path: Path) -> bool:
    """Whether the ``kitfile`` frontend reads *path*: a ``# syntax=kitfile`` first line, or,
    without a syntax line, a name its ``filenames`` patterns claim."""
    from modelbuild.frontend.syntax import syntax_directive
    from modelbuild_plugins.kitfile import KitfileFrontend

    chosen = syntax_directive(path.read_text())
    if chosen is not None:
        return chosen[0] == "kitfile"
    return any(fnmatch.fnmatchcase(path.name, p) for p in KitfileFrontend.filenames)


def generate_kitfile_context(kitfile: Path) -> None:
    """Stand-ins beside *kitfile* for every ``path:`` it names (a directory for a path that
    ends in ``/`` or has no suffix), unless they exist."""
    import yaml

    data = yaml.safe_load(kitfile.read_text()) or {}
    model = data.get("model") or {}
    entries = [model, *(model.get("parts") or [])] + [e for key in ("code", "datasets", "docs", "prompts")
                                                      for e in data.get(key) or []]
    for entry in entries:
        value = str(entry.get("path") or "").removeprefix("./")
        if value and value != ".":
            write_stand_in(kitfile.parent / value, directory=value.endswith("/") or "." not in Path(value).name)


def write_tree(text: str, root: Path, modelfile: str | None) -> Path:
    """The files a drawn directory tree names, under *root*; the tree's ``Modelfile`` is
    *modelfile*. Returns the tree's top directory."""
    stack: list[tuple[int, Path]] = []
    top = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^([│ ]*)(?:[├└]── )?(.+?)\s*$", line)
        depth = (len(m[1]) // 4 + 1) if ("── " in line) else 0
        name = m[2]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = (stack[-1][1] if stack else root) / name.rstrip("/")
        if depth == 0:
            top = path
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            stack.append((depth, path))
        elif name == "Modelfile" and modelfile is not None:
            path.write_text(modelfile)
        else:
            write_stand_in(path)
    assert top is not None
    return top


# -- comparing output ------------------------------------------------------------------------
def normalize(line: str, paths: list[tuple[str, str]] = ()) -> str:
    for real, shown in sorted(paths, key=lambda p: -len(p[0])):
        line = line.replace(real, shown)
    line = re.sub(r"sha256:[0-9a-f]{64}|sha256:[0-9a-f]*…", "sha256:<digest>", line)
    line = re.sub(r"\b[0-9a-f]{12}\b", "<id>", line)
    line = re.sub(r"\b\d+\.\d+s\b", "<t>s", line)
    return " ".join(line.split())


def _pattern(lines: list[str]) -> re.Pattern:
    parts = []
    for line in lines:
        parts.append(r"(?:[^\n]*\n)*?" if line == "…" else ".*?".join(map(re.escape, line.split("…"))) + r"\n")
    return re.compile("".join(parts))


def compare_output(shown: list[str], run: Run, paths: list[tuple[str, str]], where: str,
                   stand_in_weights: bool = False) -> None:
    """The documented lines *shown* against what *run* printed (see the module docstring).
    With *stand_in_weights* (a generated context), weight contradiction warnings the example
    does not show are left out: they come from the stand-ins, not from the example's model."""
    doc = [normalize(line, paths) for line in shown if line.strip()]
    real = [normalize(line, paths) for line in (run.err + run.out).splitlines() if line.strip()]
    doc_progress = [line for line in doc if PROGRESS.match(line)]
    real_progress = [line for line in real if PROGRESS.match(line)]
    if doc_progress:
        for line in doc_progress:
            assert any(_pattern([line]).fullmatch(r + "\n") for r in real_progress), (
                f"{where}: the example shows {line!r}; the build's steps are:\n" + "\n".join(real_progress))
        last_shown = doc.index(doc_progress[-1])
        if "…" not in doc[last_shown + 1:last_shown + 2]:
            step = lambda line: int(PROGRESS.match(line)[1])  # noqa: E731
            assert step(doc_progress[-1]) == max(map(step, real_progress)), (
                f"{where}: the example's steps end at {doc_progress[-1]!r}, the build's at "
                f"{max(real_progress, key=step)!r}")
    doc = [line for line in doc if not PROGRESS.match(line)]
    doc = [line for k, line in enumerate(doc) if not (line == "…" and k and doc[k - 1] == "…")]
    real = [line for line in real if not PROGRESS.match(line)]
    if any("contradicts the weights" in line for line in doc):
        say = lambda line: re.sub(r"which say [^;]+;", "which say <x>;", line)  # noqa: E731
        doc, real = [say(line) for line in doc], [say(line) for line in real]
    elif stand_in_weights:
        real = [line for line in real if "contradicts the weights" not in line]
    text = "".join(line + "\n" for line in real)
    assert _pattern(doc).fullmatch(text), f"{where}: documented output\n  " + "\n  ".join(doc) + \
        "\ndiffers from the real output\n  " + "\n  ".join(real)


# -- running console sessions ----------------------------------------------------------------
@dataclass
class Command:
    text: str
    output: list[str] = field(default_factory=list)


def console_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:].strip()))
        elif commands:
            commands[-1].output.append(line)
        else:
            assert not line.strip(), f"output before the first command: {line!r}"
    return commands


def sh_commands(text: str) -> list[Command]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [Command(line.strip()) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


class Session:
    """A shell session of a console example: a working directory, the last exit status, and
    how paths and hosts of the docs map to the test's."""

    def __init__(self, where: str, mb, cwd: Path, monkeypatch) -> None:
        self.where, self.mb, self.cwd, self.monkeypatch = where, mb, cwd, monkeypatch
        self.rc = 0
        self.generate = True  # write the files a Modelfile names before a build
        self.stand_ins = True  # the weights are stand-ins, not the example's model
        self.paths: dict[str, Path] = {}  # absolute paths of the docs → the test's directories
        self.hosts: dict[str, str] = {}  # registry.example.com → 127.0.0.1:PORT
        self.variables: dict[str, str] = {}  # $REF, $REPO
        self.install = None  # `pip install ./DIST`: puts the distribution assembled from the page on sys.path
        self.password: str | None = None  # what an interactive login types
        cwd.mkdir(parents=True, exist_ok=True)

    def shown_paths(self) -> list[tuple[str, str]]:
        return [(str(real), doc) for doc, real in self.paths.items()]

    def run(self, commands: list[Command]) -> None:
        for k, command in enumerate(commands):
            checked_by_next = k + 1 < len(commands) and commands[k + 1].text == "echo $?"
            self.one(command, checked_by_next)

    def expand(self, text: str) -> str:
        text = re.sub(r"\$\(([^)]*)\)", lambda m: subprocess.run(["bash", "-c", m[1]], cwd=REPO, text=True,
                                                                   capture_output=True, check=True).stdout.strip(),
                      text)
        return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: self.variables.get(m[1], m[0]), text)

    def one(self, command: Command, checked_by_next: bool) -> None:
        where = f"{self.where}: $ {command.text}"
        words = shlex.split(command.text, comments=True)
        if command.text == "echo $?":
            assert command.output and command.output[0].strip() == str(self.rc), (where, self.rc)
            return
        if words[0] == "cd":
            self.cwd = self.cwd / words[1]
            assert self.cwd.is_dir(), where
            return
        if words[0] == "cat" and len(words) == 2:
            path = self.cwd / words[1]
            text = "".join(line + "\n" for line in command.output)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            else:
                assert path.read_text() == text, where
            return
        if words[:2] == ["pip", "install"]:
            dist = words[2].removeprefix("./")
            assert self.install and dist in PLUGIN_DISTS, f"{where}: no distribution {dist} assembled from this page"
            self.install(dist)
            return
        if "|" in words or ">" in words or not re.search(r"(^|\s|/)modelbuild$", self._program(command.text)):
            self.bash(command, where)
            return
        self.modelbuild(command, where, checked_by_next)

    @staticmethod
    def _program(text: str) -> str:
        """The program of a command line, after any NAME=value assignments."""
        words = [w for w in shlex.split(re.sub(r"\$\([^)]*\)", "X", text), comments=True)]
        return next((w for w in words if not re.match(r"^[A-Za-z_]\w*=", w)), "")

    def bash(self, command: Command, where: str) -> None:
        text = command.text
        for tool, reason in TOOLS_NOT_HERE.items():  # run the pipeline up to a tool not installed here
            text = re.split(rf"\|\s*{tool}\b", text)[0] if not shutil.which(tool) else text
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "MODELBUILD_HOME": os.environ["MODELBUILD_HOME"], "DOCKER_CONFIG": os.environ["DOCKER_CONFIG"]}
        # benchmark scripts run from the repository's root, as the docs show them
        cwd = REPO if re.match(r"python benchmarks/", text) else self.cwd
        proc = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        self.rc = proc.returncode
        if command.output:
            compare_output(command.output, Run(proc.returncode, proc.stdout, proc.stderr), self.shown_paths(), where)
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stderr}"

    def modelbuild(self, command: Command, where: str, checked_by_next: bool) -> None:
        words = shlex.split(self.expand(command.text), comments=True)
        env = {}
        while re.match(r"^[A-Za-z_]\w*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        args = [self.real(w) for w in words[1:]]
        command_name = args[0] if args and not args[0].startswith("-") else "build"
        if command_name in ("build", "push", "pull", "login", "sign", "verify") and self.hosts and (
                any(host in command.text for host in self.hosts) or any("type=registry" in a for a in args)):
            args.append("--plain-http")
        if command_name == "build" and "--print-graph" not in " ".join(args) and self.generate:
            self.prepare(args)
        login = command_name == "login" and "-u" not in args and "--password-stdin" not in args
        if login:  # answered as a user at a terminal would: a username, then a password
            class Terminal(io.StringIO):
                def isatty(self) -> bool:
                    return True

            self.monkeypatch.setattr(sys, "stdin", Terminal("mbuser\n"))
            self.monkeypatch.setattr("getpass.getpass", lambda prompt="": self.password)
        run = self.mb(*args, cwd=self.cwd, env=env, timeout=300)
        self.rc = run.rc
        if command.output:
            compare_output(command.output, run, self.shown_paths(), where, self.stand_ins)
        if not checked_by_next and not any("error" in line for line in command.output):
            assert run.rc == 0, f"{where}: exit {run.rc}\n{run.err}"

    def real(self, word: str) -> str:
        for doc, real in self.paths.items():
            word = word.replace(doc, str(real))
        for doc, real in self.hosts.items():
            word = word.replace(doc, real)
        return word

    def prepare(self, args: list[str]) -> None:
        """Write the files the build's Modelfile names, unless they exist."""
        modelfile = "Modelfile"
        build_args = {}
        for k, a in enumerate(args):
            if a in ("-f", "--file"):
                modelfile = args[k + 1]
            if a == "--build-arg":
                name, _, value = args[k + 1].partition("=")
                build_args[name] = value
        path = self.cwd / modelfile
        if path.is_file() and is_kitfile(path):
            generate_kitfile_context(path)
        elif path.is_file() and path.suffix == "" or path.name == "Modelfile":
            for doc, real in self.paths.items():
                real.mkdir(parents=True, exist_ok=True)
            generate_context(path, build_args, {str(real): real for real in self.paths.values()})


# -- per-section set-ups of console and sh examples -------------------------------------------
def demo_context(session: Session) -> None:
    """docs/modelfile.md §9: "run in /tmp/demo, a directory holding the Modelfile,
    model.safetensors and config.json"."""
    (session.cwd / "model.safetensors").write_bytes(bf16_safetensors())
    (session.cwd / "config.json").write_text("{}\n")
    for p in session.cwd.iterdir():
        age(p)
    session.paths["/tmp/demo"] = session.cwd
    session.generate = False


def getting_started(session: Session) -> None:
    """docs/modelfile.md §8: modctl's getting-started Modelfile (tests/test_modctl_compat.py
    holds it verbatim), with gemma's files."""
    from test_modctl_compat import GETTING_STARTED

    (session.cwd / "Modelfile").write_text(GETTING_STARTED)
    (session.cwd / "config.json").write_text('{"model_type": "gemma"}\n')
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (session.cwd / shard).write_bytes(bf16_safetensors())  # gemma's weights are bfloat16
    generate_context(session.cwd / "Modelfile")


def tiny_example(session: Session) -> None:
    shutil.copy(TINY_MODELFILE, session.cwd / "Modelfile")
    shutil.copytree(TINY, session.cwd / "model")


def section_modelfile(session: Session, block: Block) -> None:
    """The Modelfile shown earlier in the same section (and its drawn tree, when there is one)."""
    modelfile = [b for b in blocks_of(block.path, block.section, "modelfile") if b.line < block.line]
    tree = [b for b in blocks_of(block.path, block.section, "tree") if b.line < block.line]
    if tree:
        write_tree(tree[-1].text, session.cwd, modelfile[-1].text if modelfile else None)
    elif modelfile:
        (session.cwd / "Modelfile").write_text(modelfile[-1].text)


SETUP = {
    ("docs/modelfile.md", "Examples"): lambda s, b: demo_context(s),
    ("docs/modelfile.md", "SOURCE_DATE_EPOCH"): lambda s, b: (demo_context(s), (s.cwd / "Modelfile").write_text(
        "NAME demo\nCONFIG config.json\nMODEL model.safetensors\n")),
    ("docs/modelfile.md", "What builds unchanged"): lambda s, b: getting_started(s),
}


# -- the test ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def doc_registry(tmp_path_factory):
    """A real registry behind basic auth (tests/registry/conftest.py starts it), started for
    the registry examples only."""
    servers, fixtures = [], None

    def start():
        nonlocal fixtures
        if not servers:
            spec = importlib.util.spec_from_file_location("registry_fixtures",
                                                          REPO / "tests" / "registry" / "conftest.py")
            fixtures = sys.modules["registry_fixtures"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(fixtures)
            root = tmp_path_factory.mktemp("doc-registry")
            (root / "htpasswd").write_text(f"{fixtures.USER}:{fixtures._bcrypt_hash(fixtures.PASSWORD)}\n")
            servers.append(fixtures._start(root, root / "htpasswd"))
        return servers[0], fixtures

    yield start
    for server in servers:
        fixtures._stop(server)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """``dists(name)``: the plugin distribution assembled from docs/plugins.md, pip-installed
    into a directory of its own (built once per module); returns (source, installed)."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in done:
            src = assemble(name, tmp_path_factory.mktemp("dist-src"))
            target = tmp_path_factory.mktemp("dist-site")
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                   "--disable-pip-version-check", "--target", str(target), str(src)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            done[name] = (src, target)
        return done[name]

    return get


# Which sections of docs/plugins.md make which distribution: (module, sections' numbers).
PLUGIN_DISTS = {
    "modelbuild-int8": ("modelbuild_int8", ("3.", "4.")),
    "modelbuild-listfile": ("modelbuild_listfile", ("7.",)),
    "modelbuild-ovms": ("modelbuild_ovms", ("8.",)),
}
PLUGIN_TESTS_SECTION = "6."


def assemble(name: str, root: Path) -> Path:
    """A distribution from docs/plugins.md: its sections' python blocks, in page order, as the
    module; the page's pyproject.toml where it declares this distribution."""
    module, sections = PLUGIN_DISTS[name]
    code = "\n".join(b.text for b in blocks_of("docs/plugins.md", kind="python") if b.section.startswith(sections))
    src = root / name
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(code)
    pyprojects = [b.text for b in blocks_of("docs/plugins.md", kind="pyproject") if f'name = "{name}"' in b.text]
    (src / "pyproject.toml").write_text(pyprojects[0] if pyprojects else
                                        f'[project]\nname = "{name}"\nversion = "1.0.0"\n\n'
                                        f'[project.entry-points.modelbuild]\n{name.split("-")[-1]} = "{module}"\n')
    return src


@pytest.fixture
def use_dist(dists, monkeypatch):
    """Put an assembled distribution on sys.path for this test (its module forgotten after)."""
    def use(name: str) -> Path:
        src, target = dists(name)
        monkeypatch.syspath_prepend(str(target))
        module = PLUGIN_DISTS[name][0]
        monkeypatch.delitem(sys.modules, module, raising=False)
        return target

    yield use
    for name, (module, _) in PLUGIN_DISTS.items():
        sys.modules.pop(module, None)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_doc_block(block: Block, request, tmp_path, mb, build, monkeypatch):
    kind = classify(block)
    assert kind is not None, (
        f"{block.id}: a ```{block.lang} block no rule in tests/test_docs.py runs ({block.first!r}): "
        "make it one the rules run (a Modelfile, a console session…), or add a rule, or list it in NOT_RUN "
        "with the reason")
    if kind == "not run":
        return  # NOT_RUN says why; test_not_run_entries_still_exist keeps the list honest
    runner = RUNNERS[kind]
    fixtures = {name: request.getfixturevalue(name) for name in inspect.signature(runner).parameters
                if name != "block"}
    runner(block, **fixtures)


def test_every_doc_file_is_read():
    assert {b.path for b in ALL_BLOCKS} >= {"README.md", "docs/modelfile.md", "docs/plugins.md", "docs/registry.md"}
    assert len(ALL_BLOCKS) > 50


def test_not_run_entries_still_exist():
    for (path, start), reason in NOT_RUN.items():
        assert any(b.path == path and b.first.startswith(start) for b in ALL_BLOCKS), (
            f"NOT_RUN lists a block of {path} starting {start!r} that is gone: remove the entry")


def test_a_block_no_rule_claims_is_unclassified():
    assert classify(Block("docs/new.md", 1, "yaml", "kind: Model\n", "", "")) is None
    assert classify(Block("docs/new.md", 1, "python", "print(1)\n", "", "")) is None  # only plugins.md assembles
    assert classify(Block("docs/new.md", 1, "dockerfile", "NAME x\n", "", "")) == "modelfile"


def test_output_comparison_catches_a_shortened_step_list():
    real = Run(0, "sha256:" + "a" * 64 + "  t:latest\n", "#1 load\n#1 CACHED\n#2 export t:latest\n#2 DONE 0.1s\n"
                                                            "#3 export t:latest\n#3 DONE 0.0s\n")
    compare_output(["#1 load", "…", "#3 export t:latest", "#3 DONE 0.0s", "sha256:…  t:latest"], real, [], "ok")
    with pytest.raises(AssertionError, match="end at"):
        compare_output(["#1 load", "#2 export t:latest", "sha256:…  t:latest"], real, [], "short")
    with pytest.raises(AssertionError, match="differs"):
        compare_output(["sha256:…  other:latest"], real, [], "wrong tag")


def test_readme_lists_every_doc():
    readme = (REPO / "README.md").read_text()
    for path in DOC_FILES[1:]:
        assert f"]({path})" in readme, f"README.md's Docs list omits {path}"


# -- runners -------------------------------------------------------------------------------------
def place_modelfile(block: Block, text: str, tmp_path: Path) -> Path:
    """Write the Modelfile *text* where the section's drawn tree puts it (else in a fresh
    directory), with a generated context beside it; its path."""
    work = tmp_path / "work"
    work.mkdir()
    tree = [b for b in blocks_of(block.path, block.section, "tree") if b.line < block.line]
    if tree and "Modelfile" in tree[-1].text:
        modelfile = write_tree(tree[-1].text, work, text) / "Modelfile"
    else:
        modelfile = work / "Modelfile"
        modelfile.write_text(text)
    generate_context(modelfile)
    return modelfile


def run_modelfile(block: Block, mb, tmp_path):
    """Build the Modelfile in a generated context (or the section's drawn tree)."""
    modelfile = place_modelfile(block, block.text, tmp_path)
    run = mb("build", "-f", str(modelfile), "--json", "--progress", "quiet", cwd=modelfile.parent, timeout=600)
    assert run.rc == 0, f"{block.id}: the example does not build:\n{run.err}"
    return run.json()


def built(block: Block, mb, home, tmp_path, *args: str):
    """The manifest and config of the Modelfile shown before *block* in its section, built
    with the build arguments of the section's console example."""
    modelfile = [b for b in blocks_of(block.path, block.section, "modelfile") if b.line < block.line][-1]
    console = " ".join(b.text for b in blocks_of(block.path, block.section, "console"))
    path = place_modelfile(block, modelfile.text, tmp_path)
    build_args = [a for arg in re.findall(r"--build-arg (\S+)", console) for a in ("--build-arg", arg)]
    run = mb("build", "-f", str(path), "--json", "--progress", "quiet", *build_args, *args, cwd=path.parent)
    assert run.rc == 0, run.err
    return read_artifact(home / "store", run.json()["digest"])


def run_console(block: Block, mb, tmp_path, monkeypatch, doc_registry, use_dist):
    session = Session(block.id, mb, tmp_path / "work", monkeypatch)
    commands = console_commands(block.text)
    setup_registry_session(block, session, mb, doc_registry)
    if block.path == "README.md":
        session.cwd, session.stand_ins = REPO, False  # the README's commands run from the checkout
    elif (block.path, block.section) in SETUP:
        SETUP[(block.path, block.section)](session, block)
        session.stand_ins = False  # the context the docs describe
    elif block.path == "docs/plugins.md":
        plugins_session(block, session, use_dist)
    else:
        section_modelfile(session, block)
        session.paths.update({p: tmp_path / "abs" / p.strip("/") for c in commands
                              for p in re.findall(r"(?<![\w.])(/data/[\w./-]+)", c.text)})
    session.run(commands)


def plugins_session(block: Block, session: Session, use_dist) -> None:
    """docs/plugins.md: ``pip install ./modelbuild-int8`` installs the distribution assembled
    from the page; the frontend's example runs with the frontend installed, on tiny-llama."""
    session.install = use_dist
    if block.section.startswith("7."):
        use_dist("modelbuild-listfile")
        shutil.copytree(TINY, session.cwd / "model")
    if block.section.startswith("8."):  # the engine serves the bundled ONNX example
        shutil.copytree(REPO / "Modelfile.examples" / "onnx", session.cwd / "onnx")
        session.generate = False


def setup_registry_session(block: Block, session: Session, mb, doc_registry) -> None:
    """docs/registry.md: a real registry stands for registry.example.com; the working
    directory holds the bundled example's Modelfile, the store its build tagged qwen2:0.5b."""
    if block.path not in ("docs/registry.md", "docs/signing.md"):
        return
    server, fixtures = doc_registry()
    session.hosts["registry.example.com"] = server.host
    session.password = fixtures.PASSWORD
    tiny_example(session)
    assert mb("build", "-f", "Modelfile", "-t", "qwen2:0.5b", "--progress", "quiet", cwd=session.cwd).rc == 0
    if "login" not in block.text:
        Path(os.environ["DOCKER_CONFIG"]).mkdir(parents=True, exist_ok=True)
        fixtures.write_docker_config(Path(os.environ["DOCKER_CONFIG"]), server.host)
    session.variables.update(REF=f"{server.host}/team/qwen2:0.5b", REPO=f"{server.host}/team/qwen2")
    if block.path == "docs/signing.md":
        signing_session(block, session, server.host)


def signing_session(block: Block, session: Session, host: str) -> None:
    """docs/signing.md: after §1 the working directory holds its cosign.key (passphrase
    correct-horse) and cosign.pub; from §3 on, §2's push --sign and sign have run."""
    if "key generate" in block.text and "--output-key-prefix" not in block.text:
        return
    env = {"COSIGN_PASSWORD": "correct-horse"}
    assert session.mb("key", "generate", cwd=session.cwd, env=env).rc == 0
    if "modelbuild push" not in block.text and "modelbuild verify" in block.text or "--verify-key" in block.text:
        ref = f"{host}/team/qwen2:0.5b"
        for args in (("push", "qwen2:0.5b", ref, "--sign"), ("sign", ref)):
            run = session.mb(*args, "--key", "cosign.key", "--plain-http", cwd=session.cwd, env=env)
            assert run.rc == 0, run.err
        if "other.pub" in block.text and "--output-key-prefix other" not in block.text:
            assert session.mb("key", "generate", "--output-key-prefix", "other", cwd=session.cwd, env=env).rc == 0


def run_sh(block: Block, mb, tmp_path, monkeypatch, doc_registry):
    session = Session(block.id, mb, tmp_path / "work", monkeypatch)
    setup_registry_session(block, session, mb, doc_registry)
    session.run(sh_commands(block.text))


def run_readme_lines(block: Block, mb):
    """The README's two lines. The second is the test suite itself (this test is part of it):
    .ci/run must run exactly it. The first's build runs here (the virtualenv and the pip
    install are how this suite's own environment was made)."""
    first, second = [line.strip() for line in block.text.splitlines() if line.strip()]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert second in ci, ".ci/run must run the README's test line unchanged"
    assert second.startswith("scripts/setup-system") and (REPO / "scripts" / "setup-system").stat().st_mode & 0o111
    build_cmd = first.split(" && ")[-1].split()
    assert build_cmd[0].endswith("/modelbuild")
    run = mb(*build_cmd[1:], "--progress", "quiet", cwd=REPO)
    assert run.rc == 0, run.err


def run_python(block: Block, mb, tmp_path, use_dist, build, home):
    if block.section.startswith(PLUGIN_TESTS_SECTION):
        use_dist("modelbuild-int8")
        namespace: dict = {"__name__": "test_plugin_docs"}
        exec(compile(block.text, f"{block.id}", "exec"), namespace)
        tests = {name: f for name, f in namespace.items() if name.startswith("test_") and callable(f)}
        assert tests, f"{block.id}: no test functions"
        for name, test in tests.items():
            arguments = {"tmp_path": tmp_path / name} if "tmp_path" in inspect.signature(test).parameters else {}
            for path in arguments.values():
                path.mkdir()
            test(**arguments)
        return
    dist = next(d for d, (_, sections) in PLUGIN_DISTS.items() if block.section.startswith(sections))
    use_dist(dist)
    plugins = {p["name"]: p for p in mb("plugins", "--json").json()}
    ctx = tmp_path / "model"
    shutil.copytree(TINY, ctx)
    for p in ctx.iterdir():
        age(p)
    if dist == "modelbuild-int8":
        assert plugins["int8"]["provides"] == ["quantizer:int8-rowwise"], plugins.get("int8")
        result = build(ctx, "NAME int8\nCONFIG config.json\nMODEL model.safetensors\n"
                            "QUANTIZE int8-rowwise --keep=lm_head.weight\n")
        from safetensors.numpy import load_file

        manifest, _ = read_artifact(home / "store", result["digest"])
        layer = next(l for l in manifest["layers"] if l["annotations"]["org.cncf.model.filepath"] == "model.safetensors")
        (tmp_path / "out.safetensors").write_bytes(blob(home / "store", layer["digest"]))
        names = set(load_file(str(tmp_path / "out.safetensors")))
        assert "lm_head.weight" in names and "model.layers.0.mlp.up_proj.weight.int8" in names, sorted(names)
    elif dist == "modelbuild-ovms":
        assert plugins["ovms"]["provides"] == ["engine:ovms"], plugins.get("ovms")
        import modelbuild.api as api
        from modelbuild.testing import plugin_host

        assert isinstance(plugin_host().engines.get("ovms"), api.Engine)
        onnx = REPO / "Modelfile.examples" / "onnx"
        assert mb("build", "-f", str(onnx / "Modelfile"), "-t", "mlp:1", "-q", str(onnx)).rc == 0
        plan = mb("run", "mlp:1", "--engine", "ovms", "--param", "nireq=2", "--dry-run", "--json").json()
        assert plan["argv"][:2] == ["ovms", "--model_name"] and plan["argv"][-4:-2] == ["--nireq", "2"]
        assert Path(plan["workLinks"]["model/1/model.onnx"]).name == "model.onnx"
        if not shutil.which("ovms"):  # not installed here: the error says how to install it
            run = mb("run", "mlp:1", "--engine", "ovms")
            assert run.rc == 2 and "engine ovms is not installed here: no ovms on PATH" in run.err, run.err
    else:
        assert plugins["listfile"]["provides"] == ["frontend:listfile"], plugins.get("listfile")
        (ctx / "build.list").write_text("# syntax=listfile\nname tiny\nconfig *.json\nmodel *.safetensors\n"
                                        "quantize bfloat16\n")
        run = mb("build", "-f", "build.list", "--json", "--progress", "quiet", cwd=ctx)
        assert run.rc == 0, run.err
        assert run.json()["tags"] == ["tiny:latest"]


def run_pyproject(block: Block, dists):
    name = re.search(r'^name = "([^"]+)"', block.text, re.M)[1]
    assert name in PLUGIN_DISTS, f"{block.id}: pyproject of an unknown distribution {name}"
    src, target = dists(name)
    assert (target / PLUGIN_DISTS[name][0] / "__init__.py").is_file()


def run_tree(block: Block, mb, tmp_path, dists):
    if block.path == "docs/plugins.md":  # the distribution's layout
        top = write_tree(block.text, tmp_path, None)
        src, _ = dists(top.name)
        drawn = sorted(str(p.relative_to(top)) for p in top.rglob("*"))
        made = sorted(str(p.relative_to(src)) for p in src.rglob("*") if "egg-info" not in str(p)
                      and "build" not in p.relative_to(src).parts)
        assert drawn == made, (drawn, made)
        return
    modelfile = [b for b in blocks_of(block.path, block.section, "modelfile") if b.line > block.line]
    assert modelfile, f"{block.id}: a tree with no Modelfile after it in its section"
    run_modelfile(modelfile[0], mb, tmp_path)


def run_json_config(block: Block, mb, home, tmp_path):
    manifest, config = built(block, mb, home, tmp_path)
    shown = json.loads(block.text)
    shown_ids = shown["modelfs"].pop("diffIds")
    real_ids = config["modelfs"].pop("diffIds")
    assert config == shown
    assert len(real_ids) == len(manifest["layers"]) and all(i.startswith("sha256:") for i in shown_ids if i != "…")


def run_json_capabilities(block: Block, mb, home, tmp_path):
    _, config = built(block, mb, home, tmp_path)
    assert {"capabilities": config["config"]["capabilities"]} == json.loads("{" + block.text + "}")


def run_json_file_metadata(block: Block, mb, home, tmp_path):
    """"A file stored with mode 0600": tiny-llama's weights, chmod 0600."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copyfile(TINY / "model.safetensors", ctx / "model.safetensors")
    (ctx / "model.safetensors").chmod(0o600)
    (ctx / "Modelfile").write_text("NAME m\nMODEL model.safetensors\n")
    run = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx)
    assert run.rc == 0, run.err
    manifest, _ = read_artifact(home / "store", run.json()["digest"])
    assert manifest["layers"][0]["annotations"]["org.cncf.model.file.metadata+json"] == block.text.strip()


def run_json_index(block: Block, mb, home, tmp_path):
    """The index the same page's multi-platform Modelfile builds: the same fields, digests and
    sizes aside; the example's entries in the same order."""
    modelfile = next(b for b in blocks_of(block.path, kind="modelfile") if "TARGET" in b.text)
    work = tmp_path / "work"
    work.mkdir()
    (work / "Modelfile").write_text(modelfile.text)
    generate_context(work / "Modelfile")
    run = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=work)
    assert run.rc == 0, run.err
    index = json.loads((home / "store" / "blobs" / "sha256" / run.json()["digest"][7:]).read_bytes())
    shown = json.loads(block.text)
    assert {k: v for k, v in index.items() if k != "manifests"} == {k: v for k, v in shown.items() if k != "manifests"}
    stage = lambda e: e["annotations"]["dev.modelbuild.platform.stage"]  # noqa: E731
    real = {stage(e): e for e in index["manifests"]}
    order = [stage(e) for e in index["manifests"]]
    shown_stages = [stage(e) for e in shown["manifests"]]
    assert shown_stages == [s for s in order if s in shown_stages]
    for entry in shown["manifests"]:
        strip = lambda e: {k: v for k, v in e.items() if k not in ("digest", "size")}  # noqa: E731
        assert strip(real[stage(entry)]) == strip(entry)


def run_json_runtime(block: Block, mb, home):
    """A runtime description (docs/spec/runtime.md §4.4): it parses as the spec says, its
    canonical form is itself, and it is what a build of the bundled multi-platform example
    attaches to the variant of its ``target``, byte for byte."""
    from modelbuild.runtime.description import find_description, parse
    from modelbuild.store import Store

    shown = json.loads(block.text)
    parsed = parse(block.text.encode(), block.id)
    assert parsed.as_dict() == shown
    multi = EXAMPLES / "multi-platform"
    run = mb("build", "-f", str(multi / "Modelfile"), "--json", "--progress", "quiet", str(multi))
    assert run.rc == 0, run.err
    store = Store(home / "store")
    index = json.loads((home / "store" / "blobs" / "sha256" / run.json()["digest"][7:]).read_bytes())
    entry = next(e for e in index["manifests"]
                 if e["annotations"]["dev.modelbuild.platform.target"] == shown["target"])
    found = find_description(store, entry["digest"])
    assert found is not None and found.to_json() == parsed.to_json()


def run_error_lines(block: Block, mb, tmp_path):
    """Each documented ``Modelfile:L:C: DIRECTIVE 'VALUE' …`` error, from a Modelfile with
    ``DIRECTIVE VALUE`` on line L (comment lines before it) in the §9 demo directory."""
    for line in (line.strip() for line in block.text.splitlines() if line.strip()):
        m = re.match(r"^Modelfile:(\d+):(\d+): ([A-Z]+) '([^']*)'", line)
        assert m, f"{block.id}: cannot tell which Modelfile gives {line!r}"
        number, directive, value = int(m[1]), m[3], m[4]
        ctx = tmp_path / f"ctx{number}-{len(list(tmp_path.iterdir()))}"
        ctx.mkdir()
        (ctx / "model.safetensors").write_bytes(bf16_safetensors())
        quoted = f'"{value}"' if re.search(r"\s", value) else value
        (ctx / "Modelfile").write_text("# comment\n" * (number - 1) + f"{directive} {quoted}\nMODEL model.safetensors\n")
        run = mb("build", "-f", "Modelfile", cwd=ctx)
        assert run.rc == 2 and run.err.strip() == line, (line, run.rc, run.err)


def run_template(block: Block, mb, tmp_path, home):
    pattern = re.compile(TEMPLATES[block.first])
    ctx = tmp_path / "ctx"
    shutil.copytree(TINY, ctx)
    if block.first.startswith("FILE"):
        (ctx / "Modelfile").write_text("NAME demo\nMODLE model.safetensors\n")
        samples = [mb("build", "-f", "Modelfile", cwd=ctx).err.strip()]
    else:
        shutil.copy(TINY_MODELFILE, ctx / "Modelfile")
        (ctx / "Modelfile").write_text((ctx / "Modelfile").read_text().replace("FROM ./model", ""))
        samples = []
        for fmt in ("raw", "tar+zstd"):
            run = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", "--layer-format", fmt, cwd=ctx)
            samples += [l["mediaType"] for l in read_artifact(home / "store", run.json()["digest"])[0]["layers"]]
    assert samples and all(pattern.fullmatch(s) for s in samples), samples


def run_synopsis(block: Block):
    for line in block.text.splitlines():
        if line.strip():
            assert line.split()[0].upper() in _directives(), line


def run_usage(block: Block, mb):
    words = block.first.split()
    help_text = mb(*words[1:2], "--help").out
    for option in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", block.first):
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", help_text), (option, block.first)


def run_graph(block: Block, mb):
    command = shlex.split(re.search(r"`(modelbuild [^`]*--print-graph[^`]*)`", block.before)[1])
    run = mb(*command[1:], cwd=REPO)
    assert run.rc == 0, run.err
    compare_output([line for line in block.text.splitlines()], Run(0, run.out, ""), [], block.id)


def run_registry_error(block: Block, mb):
    """The slow-blob error line: a registry dripping a blob (tests/registry/hostile_registry.py),
    with small limits; numbers, host, repository and digest aside, the same line."""
    import hashlib

    from hostile_registry import Answer, HostileRegistry

    from modelbuild.oci import mediatypes as mt

    sha = lambda data: "sha256:" + hashlib.sha256(data).hexdigest()  # noqa: E731
    layer = os.urandom(200_000)
    config = json.dumps({"descriptor": {"name": "m"}, "config": {}, "modelfs": {"type": "layers",
                         "diffIds": [sha(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
        "config": {"mediaType": mt.MODEL_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": sha(layer),
                    "size": len(layer), "annotations": {mt.ANNOTATION_FILEPATH: "w.bin"}}]}).encode()
    server = HostileRegistry()
    try:
        server.route("GET", "/v2/team/m/manifests/v1", Answer(headers={"Content-Type": mt.OCI_MANIFEST},
                                                                body=manifest))
        server.route("GET", f"/v2/team/m/blobs/{sha(config)}", Answer(body=config))
        server.route("GET", f"/v2/team/m/blobs/{sha(layer)}", Answer(body=layer, drip=0.2))
        limits = {"MODELBUILD_REGISTRY_CONNECT_TIMEOUT": "1", "MODELBUILD_REGISTRY_READ_TIMEOUT": "0.5",
                  "MODELBUILD_REGISTRY_STALL_TIMEOUT": "1", "MODELBUILD_REGISTRY_MIN_RATE": "2000",
                  "MODELBUILD_REGISTRY_RATE_WINDOW": "1", "MODELBUILD_REGISTRY_RETRIES": "1"}
        run = mb("pull", f"{server.host}/team/m:v1", "--plain-http", "--progress", "quiet", env=limits, timeout=120)
    finally:
        server.stop()
    numbers = lambda line: re.sub(r"\d+(\.\d+)?", "<n>", normalize(line, [(server.host, "r.example.com")]))  # noqa
    assert run.rc == 1, run.err
    assert numbers(run.err.strip()) == numbers(block.text.strip())


RUNNERS = {
    "modelfile": run_modelfile, "console": run_console, "sh": run_sh, "readme-lines": run_readme_lines,
    "python": run_python, "pyproject": run_pyproject, "tree": run_tree, "json-config": run_json_config,
    "json-capabilities": run_json_capabilities, "json-file-metadata": run_json_file_metadata,
    "json-index": run_json_index, "json-runtime": run_json_runtime, "error-lines": run_error_lines, "template": run_template,
    "synopsis": run_synopsis, "usage": run_usage, "graph": run_graph, "registry-error": run_registry_error,
}
