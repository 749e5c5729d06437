"""Fuzzing the Modelfile frontend: hostile text ends in a clean error, never a crash or a hang.

Every case is Modelfile bytes made from a seeded generator: mutations of the real Modelfiles
(``Modelfile.examples/`` and ``tests/errors/*``), random bytes, directive soup, deep ``${``
nesting, lines around the length limit, doubling ``ARG`` chains, NUL bytes, invalid UTF-8,
CRLF. Each runs in-process through :func:`modelbuild.frontend.load_description` (file read,
decode, ``# syntax=`` choice, lexer, interpreter, context matching), and a handful through
``modelbuild.cli.main`` so the command's own error handling is covered too.

A case passes when it builds a description or raises a :class:`ModelbuildError` with exit
code 1 or 2 whose message is one line, located when it is a Modelfile error; it must finish
within ``PER_CASE_S``. A ``SIGALRM`` turns a case that hangs into a failure instead of a stuck
suite.

The run is deterministic for a seed and bounded both in cases and in time; to fuzz longer::

    MODELBUILD_FUZZ_SEED=7 MODELBUILD_FUZZ_SECONDS=600 MODELBUILD_FUZZ_CASES=100000 \\
        pytest tests/frontend/test_fuzz.py
"""

from __future__ import annotations

import os
import random
import signal
import time
import types
from pathlib import Path
from typing import Callable, Iterator

import pytest

from modelbuild import cli
from modelbuild.errors import ModelbuildError, ModelfileError
from modelbuild.frontend import load_description
from modelbuild.frontend.directives import DIRECTIVES
from modelbuild.frontend.limits import Limits
from support import REPO, safetensors_blob, write_model_dir

SEED = int(os.environ.get("MODELBUILD_FUZZ_SEED", "20261202"))
BUDGET_S = float(os.environ.get("MODELBUILD_FUZZ_SECONDS", "20"))
MAX_CASES = int(os.environ.get("MODELBUILD_FUZZ_CASES", "4000"))
PER_CASE_S = 5.0  # generous for a shared CI core; a case normally takes milliseconds
HANG_S = 30.0  # past this the alarm fires: the case hangs

LIMITS = Limits()
EXAMPLES = sorted((REPO / "Modelfile.examples").glob("*/Modelfile"))
SEEDS = sorted([*EXAMPLES, *(REPO / "tests" / "errors").glob("*/Modelfile")])
NAMES = list(DIRECTIVES) + ["FORM", "MODLE", "", "arg", "Target", "#", "# syntax=modelfile", "# syntax=nope"]
# text that means something to the lexer or the interpreter; mutations splice these in
TOKENS = [
    "${", "}", "$", "${A}", "$A", "${A:-d}", "${A:+x}", "${1}", "${}", "\\", "\\\n", '"', "'", "\n", "\r\n",
    "#", " ", "\t", "=", ":-", ":+", "*", "**", "?", "[", "[!a]", "]", "..", "/", "~", ".", "file://", "x://",
    "AS ", "--keep=", "--outtype=f16", "cuda>=12.1", "compute>=8.0", "2GB", "none", "true", "yes",
    "inputTypes=text", "knowledgeCutoff=0001-01-01T00:00:00+05:00", "knowledgeCutoff=0999-01-01", "languages=en,zz9",
    "9" * 400, "a" * 300, "model.safetensors", "config.json", "sub", "sub/**", "sub/*", "README.md", "\u00e9",
]
# what is not text: kept for the encodings and random-bytes cases
BINARY = [b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"\xef\xbb\xbf", b"\x1b[31m", b"\x0c", b"\r",
          b"\xc2\x85"]
FILES = {
    "model.safetensors": safetensors_blob(b"\x01\x02\x03\x04"),
    "config.json": '{"architectures": ["LlamaForCausalLM"]}',
    "README.md": "# demo\n",
    "sub/tokenizer.json": "{}",
    "sub/deeper/notes.txt": "n",
    # what Modelfile.examples/tiny-llama's FROM ./model names, so its mutations get past FROM
    **{f"model/{name}": "{}" for name in ("config.json", "generation_config.json", "tokenizer.json",
                                          "tokenizer_config.json", "README.md", "LICENSE")},
    "model/model.safetensors": safetensors_blob(b"\x00" * 8),
}


# -- case generators: each takes a Random and returns Modelfile bytes ---------------------------
def _seed_text(rng: random.Random) -> bytes:
    """A real Modelfile; the valid examples half the time, so mutations reach the interpreter."""
    return rng.choice(EXAMPLES if rng.random() < 0.5 else SEEDS).read_bytes()


def mutated(rng: random.Random) -> bytes:
    data = bytearray(_seed_text(rng))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randint(0, len(data))
        j = min(len(data), i + rng.randint(0, 40))
        if op == 0:
            data[i:i] = rng.choice(TOKENS).encode()
        elif op == 1:
            del data[i:j]
        elif op == 2:
            data[i:i] = data[i:j] * rng.randint(1, 50)
        elif op == 3 and data:
            data[min(i, len(data) - 1)] = rng.randrange(32, 127)
        elif op == 4:
            lines = bytes(data).split(b"\n")
            rng.shuffle(lines)
            data = bytearray(b"\n".join(lines))
        else:
            data[i:i] = rng.choice(NAMES).encode() + b" "
    return bytes(data)


def random_bytes(rng: random.Random) -> bytes:
    n = rng.randint(0, 2048)
    if rng.random() < 0.5:
        return rng.randbytes(n)
    alphabet = b" \t\n\\\"$#{}=:-+*/.AZaz09_\r"
    return bytes(rng.choice(alphabet) for _ in range(n))


def soup(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(1, 30)):
        name = rng.choice(NAMES)
        if rng.random() < 0.3:
            name = "ARG"
        args = ["".join(rng.choices(TOKENS, k=rng.randint(1, 3))) for _ in range(rng.randint(0, 5))]
        if name == "ARG" and rng.random() < 0.7:
            args = [f"A={rng.choice(['x', '${A}${A}', '', 'model.safetensors'])}"]
        lines.append(" ".join([name, *args]))
    return ("\n".join(lines) + rng.choice(["\n", "", "\\\n", "\r\n"])).encode()


def values(rng: random.Random) -> bytes:
    """A valid Modelfile with one more directive of hostile arguments: reaches every handler."""
    name = rng.choice(list(DIRECTIVES))
    args = ["".join(rng.choices(TOKENS, k=rng.choice([1, 1, 2]))) for _ in range(rng.randint(1, 3))]
    lines = ["ARG A=model.safetensors", "NAME demo", "MODEL model.safetensors"]
    lines.insert(rng.randint(0, len(lines)), f"{name} {' '.join(args)}")
    return "\n".join(lines).encode()


def repeated(rng: random.Random) -> bytes:
    """Many instructions or values: a handler that is quadratic in their number shows here."""
    n = rng.choice([1000, 10000, 40000])
    line = rng.choice(["LICENSE l{i}", "AUTHOR a{i}", "TARGET cuda AS s{i}", "QUANTIZE int8", "LABEL k{i}=v",
                       "MODEL sub/deeper/notes.txt sub", "ARG V{i}=x", "NAME ${{V{i}}}"])
    body = "\n".join(line.format(i=i) for i in range(n))
    return f"NAME demo\nMODEL model.safetensors\n{body}\n".encode()


def nesting(rng: random.Random) -> bytes:
    depth = rng.choice([2, 10, 100, 1000, 20000])
    body = rng.choice(["${" * depth + "A" + "}" * depth, "${A:-" * depth + "}" * depth, "$" * depth + "{A}",
                       "${" * depth, "\\" * depth + "${A}", '"' * depth + "${A}"])
    return f"ARG A=model.safetensors\nNAME demo\nMODEL {body}\n".encode()


def huge(rng: random.Random) -> bytes:
    n = LIMITS.line_length + rng.randint(-12, 12)
    pieces = rng.choice(["plain", "words", "vars", "continued", "comment"])
    if pieces == "plain":
        line = "DESCRIPTION " + "a" * n
    elif pieces == "words":
        line = "LABEL " + "k=v " * (n // 4)
    elif pieces == "vars":
        line = "DESCRIPTION " + "${A}" * (n // 4)
    elif pieces == "continued":
        line = "DESCRIPTION " + " \\\n".join(["b" * 1000] * (n // 1002 + 1))
    else:
        line = "#" + "c" * n * 3
    return f"ARG A=x\nNAME demo\nMODEL model.safetensors\n{line}\n".encode()


def doubling(rng: random.Random) -> bytes:
    lines = ["ARG A0=" + "x" * rng.randint(1, 64)]
    for i in range(1, rng.randint(2, 45)):
        refs = "".join(f"${{A{max(0, i - rng.choice([1, 1, 1, 2, 5]))}}}" for _ in range(rng.randint(1, 3)))
        lines.append(f"ARG A{i}={refs}")
    lines += ["NAME demo", f"MODEL model.safetensors", f"LABEL x=${{A{len(lines) - 1}}}"]
    return "\n".join(lines).encode()


def encodings(rng: random.Random) -> bytes:
    data = _seed_text(rng)
    choice = rng.randrange(4)
    if choice == 0:
        return data.replace(b"\n", b"\r\n")
    if choice == 1:
        return data.replace(b"\n", rng.choice([b"\r", b"\r\r\n", b"\n\r"]))
    if choice == 2:
        return b"\xef\xbb\xbf" + data
    i = rng.randint(0, len(data))
    return data[:i] + rng.choice(BINARY) + data[i:]


GENERATORS: list[Callable[[random.Random], bytes]] = [
    mutated, mutated, mutated, values, values, random_bytes, soup, nesting, huge, doubling, encodings, repeated
]


def cases(seed: int) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) for ever: generators round-robin, each case from its own seeded Random."""
    for index in range(MAX_CASES):
        gen = GENERATORS[index % len(GENERATORS)]
        yield f"{gen.__name__}#{index} (seed {seed})", gen(random.Random(f"{seed}:{index}"))


# -- running a case ----------------------------------------------------------------------------
class _Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the code swallows it."""


class _ConfinedSources:
    """The real source plugins, with FROM kept inside the fuzz context.

    A mutation can write ``FROM /`` or ``FROM ~`` and then ``MODEL **``: the frontend would
    rightly walk that tree, which is a slow test, not a bug.
    """

    def __init__(self, real: object, root: Path) -> None:
        self.real = real
        self.root = root.resolve()

    def get_for_reference(self, ref: str) -> object:
        source = self.real.get_for_reference(ref)  # type: ignore[attr-defined]
        confined = self

        class Confined:
            def resolve(self, reference: str, *, base_dir: Path) -> Path:
                path = source.resolve(reference, base_dir=base_dir)
                if not path.resolve().is_relative_to(confined.root):
                    raise ModelfileError(f"FROM {reference}: outside the fuzz context")
                return path

        return Confined()

    def open(self, ref: str, *, base_dir: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> object:
        from modelbuild.api import OpenedSource

        if "://" in ref and not ref.startswith("file://"):  # a remote source would reach for the network
            raise ModelfileError(f"FROM {ref}: no remote sources in the fuzz test")
        return OpenedSource(root=self.get_for_reference(ref).resolve(ref, base_dir=base_dir))  # type: ignore[attr-defined]


def _problem(exc: BaseException) -> str | None:
    """Why a raised error is not a clean user-facing one, or None when it is."""
    if not isinstance(exc, ModelbuildError):
        return f"{type(exc).__name__}: {exc}"
    if exc.exit_code not in (1, 2):
        return f"exit code {exc.exit_code}: {exc.render()}"
    text = exc.render()
    if len(text.splitlines()) != 1:
        return f"message is not one line: {text!r}"
    if isinstance(exc, ModelfileError) and exc.span is None:
        return f"Modelfile error without a location: {text}"
    return None


def _run_bounded(fn: Callable[[], object]) -> tuple[str | None, float]:
    """Run *fn*; return what is wrong with how it ended (None: fine) and the seconds it took."""
    def alarm(signum: int, frame: object) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    start = time.perf_counter()
    try:
        fn()
        problem = None
    except _Hang:
        problem = f"hangs (stopped after {HANG_S:.0f} s)"
    except BaseException as exc:  # noqa: BLE001 - anything but a clean error is the finding
        problem = _problem(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if problem is None and elapsed > PER_CASE_S:
        problem = f"took {elapsed:.1f} s (bound {PER_CASE_S:.0f} s)"
    return problem, elapsed


@pytest.fixture(scope="module")
def plugin_host():
    from modelbuild.plugins import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture
def context(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "ctx", FILES)


def test_fuzz_frontend_in_process(plugin_host, context: Path):
    host = types.SimpleNamespace(frontends=plugin_host.frontends, sources=_ConfinedSources(plugin_host.sources, context))
    modelfile = context / "Modelfile"
    failures: list[str] = []
    deadline = time.monotonic() + BUDGET_S
    ran = 0
    for label, data in cases(SEED):
        if time.monotonic() > deadline:
            break
        modelfile.write_bytes(data)
        problem, _ = _run_bounded(lambda: load_description(str(modelfile), host=host))
        ran += 1
        if problem:
            failures.append(f"{label}: {problem[:300]}\n    input: {data[:200]!r}")
    assert ran >= min(MAX_CASES, 200), f"only {ran} cases in {BUDGET_S} s"
    assert not failures, f"{len(failures)} of {ran} cases failed:\n" + "\n".join(failures[:20])


def test_fuzz_through_the_cli(context: Path, tmp_path: Path, capsys):
    """A handful of cases through ``modelbuild build`` in-process: parsing, planning, building."""
    home = tmp_path / "home"
    modelfile = context / "Modelfile"
    valid = b"NAME demo\nCONFIG config.json\nMODEL model.safetensors\nDOC README.md sub\n"
    picked = [valid, valid.replace(b"\n", b"\r\n"), doubling(random.Random(SEED)),
              huge(random.Random(SEED)), nesting(random.Random(SEED)), b"NAME demo\x00\n", b"\xff"]
    picked += [gen(random.Random(f"{SEED}:cli:{i}")) for i, gen in enumerate([mutated, soup, encodings] * 3)]
    failures = []
    codes = []
    for i, data in enumerate(picked):
        # no FROM: it could point the build at a real tree outside tmp_path
        data = b"\n".join(line for line in data.split(b"\n") if not line.strip().upper().startswith(b"FROM"))
        modelfile.write_bytes(data)
        box: dict[str, int] = {}

        def build() -> None:
            box["rc"] = cli.main(["--home", str(home), "build", "-f", str(modelfile), "--progress", "plain"])

        problem, _ = _run_bounded(build)
        captured = capsys.readouterr()
        rc = box.get("rc")
        codes.append(rc)
        if problem is None and rc not in (0, 1, 2):
            problem = f"exit code {rc}: {captured.err.strip()[:300]}"
        if problem is None and rc == 2 and len(captured.err.strip().splitlines()) != 1:
            problem = f"stderr is not one line: {captured.err[:300]!r}"
        if problem:
            failures.append(f"cli case {i}: {problem}\n    input: {data[:200]!r}")
    assert not failures, "\n".join(failures)
    assert codes[0] == 0 and 2 in codes, codes  # the valid one builds; the hostile ones are refused
