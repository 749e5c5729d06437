"""Command-line entry point: a lazy command table, and errors turned into exit codes.

Only the chosen command's module is imported (pip's habit), so ``modelbuild --help`` and a
no-op rebuild stay close to Python's start-up time. ``modelbuild -f Modelfile`` is short for
``modelbuild build -f Modelfile``.

Exit codes: 0 success, 1 a build step failed, 2 bad input or usage, 70 a bug (set
``MODELBUILD_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Sequence

from modelbuild import __version__
from modelbuild.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, ModelbuildError

# name → (module, one-line summary). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("modelbuild.commands.build", "build a ModelPack artifact from a Modelfile"),
    "modelfile": ("modelbuild.commands.modelfile", "write a Modelfile for a directory of model files"),
    "inspect": ("modelbuild.commands.inspect", "show an artifact's manifest, config and files"),
    "ls": ("modelbuild.commands.ls", "list the artifacts in the local store"),
    "pull": ("modelbuild.commands.pull", "pull from a registry, or pick the variant for this host and write its files"),
    "push": ("modelbuild.commands.push", "push a tag of the local store to a registry"),
    "tag": ("modelbuild.commands.tag", "give an artifact of the local store another tag"),
    "sign": ("modelbuild.commands.sign", "sign an artifact in a registry (cosign's format)"),
    "verify": ("modelbuild.commands.verify", "check an artifact's signature and attestations in a registry"),
    "key": ("modelbuild.commands.key", "make a signing key pair (cosign's key files)"),
    "login": ("modelbuild.commands.login", "save credentials for a registry (docker's config.json)"),
    "logout": ("modelbuild.commands.logout", "remove the saved credentials for a registry"),
    "rm": ("modelbuild.commands.rm", "remove tags from the local store"),
    "prune": ("modelbuild.commands.prune", "free space: delete unreferenced blobs; --verify checks every blob"),
    "run": ("modelbuild.commands.run", "serve a model with an engine: llama.cpp, ONNX Runtime, vLLM…"),
    "deploy": ("modelbuild.commands.deploy", "write Kubernetes manifests (Deployment, CSI, KServe) that serve a model"),
    "plugins": ("modelbuild.commands.plugins", "list installed plugins and what they provide"),
    "version": ("modelbuild.commands.version", "show the version of modelbuild, its plugin API and Python"),
}

DESCRIPTION = """\
Build CNCF ModelPack artifacts the way BuildKit builds images: a Modelfile becomes a graph
of cached, content-addressed steps, and a rebuild redoes only what changed.

examples:
  modelbuild -f Modelfile                      build ./Modelfile, tag it from its NAME
  modelbuild build -f Modelfile -t llama:1b .  build with the current directory as context
  modelbuild build --print-graph=dot           show the step graph without building
  modelbuild ls                                list what is in the local store
  modelbuild inspect llama:1b --json           the manifest and config, for scripts
  modelbuild -f Modelfile -t registry.example.com/team/llama:1b --push
  modelbuild pull registry.example.com/team/llama:1b -o ./model

The store lives in $MODELBUILD_HOME (default: $XDG_DATA_HOME/modelbuild).
Docs: docs/modelfile.md (the Modelfile reference), docs/architecture.md.
"""


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with *only*, holding that command's subparser alone (a
    command that runs needs no other: each subparser costs argparse's gettext look-ups)."""
    parser = argparse.ArgumentParser(
        prog="modelbuild", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"modelbuild {__version__}")
    parser.add_argument("--home", metavar="DIR", help="store and cache directory (default: $MODELBUILD_HOME)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, summary) in COMMANDS.items():
        if only is None or name == only:
            sub.add_parser(name, help=summary, description=summary)
    return parser


def _split_global(argv: list[str]) -> tuple[list[str], list[str]]:
    """Leading global options (``--home DIR``) and the rest of the command line."""
    i = 0
    while i < len(argv):
        if argv[i] == "--home":
            i += 2
        elif argv[i].startswith("--home="):
            i += 1
        else:
            break
    return argv[:i], argv[i:]


def main(argv: Sequence[str] | None = None) -> int:
    head, rest = _split_global(list(sys.argv[1:] if argv is None else argv))
    command = rest[0] if rest else None
    if command is not None and command.startswith("-") and command not in ("-h", "--help", "--version"):
        command = "build"  # `modelbuild -f Modelfile` is `modelbuild build -f Modelfile`
        rest.insert(0, command)
    args_list = head + rest
    parser = _parser(command if command in COMMANDS else None)
    module = None
    passthrough: list[str] = []
    if command in COMMANDS:
        module = importlib.import_module(COMMANDS[command][0])
        if getattr(module, "PASSTHROUGH", False) and "--" in args_list:  # `run REF -- ENGINE ARGS`
            cut = args_list.index("--")
            args_list, passthrough = args_list[:cut], args_list[cut + 1:]
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparser = subparsers.choices[command]
        module.configure(subparser)
        # argparse hands a subcommand's unknown arguments up to the top-level parser, whose
        # usage line says nothing about them: the subcommand's usage is what helps (exit 2)
        args, extra = parser.parse_known_args(args_list)
        if extra:
            subparser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.passthrough = passthrough
    else:
        args = parser.parse_args(args_list)
    if module is None:
        parser.print_help()
        return 0 if not args_list else EXIT_USER_ERROR
    # with --progress json, standard error is an NDJSON stream: the final error is an event too
    report = _json_error if getattr(args, "progress", None) == "json" else _text_error
    try:
        return int(module.run(args) or 0)
    except ModelbuildError as exc:
        return report(exc.render() if _is_located(exc) else f"modelbuild: error: {exc.render()}", exc.exit_code)
    except KeyboardInterrupt:
        return report("modelbuild: interrupted", 130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so, hide the traceback unless asked
        if os.environ.get("MODELBUILD_DEBUG", "0") not in ("", "0"):
            import traceback

            traceback.print_exc()
            return EXIT_INTERNAL_ERROR
        return report(
            f"modelbuild: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in modelbuild or one of its plugins; please report it "
            "(set MODELBUILD_DEBUG=1 to see the traceback).",
            EXIT_INTERNAL_ERROR,
        )


def run() -> NoReturn:
    """The ``modelbuild`` command (and ``python -m modelbuild``): :func:`main`, then
    :func:`exit_now` with its code. In-process callers (tests, scripts) call :func:`main`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with *code* once everything Python's own exit does that is seen
    outside the process is done, and skip the rest: the teardown of every module and object,
    one by one, whose memory the kernel frees at once anyway. That teardown took 0.4–0.5 s
    of every build that had loaded Ray, and 16 ms of a 0.12 s no-op rebuild (measured here).

    Done first, in Python's order: the threads that are not daemons are waited for
    (``threading``'s shutdown, which also runs ``concurrent.futures``' exit hooks), then the
    ``atexit`` handlers run (multiprocessing's, logging's, ``weakref.finalize``'s, a
    plugin's), then the standard streams are flushed; a closed pipe there is not an error."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first
    if shutdown is not None:
        shutdown()
    else:  # pragma: no cover - another Python: the same, by hand
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), or a stream closed
            pass
    os._exit(code)


def _text_error(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def _json_error(message: str, code: int) -> int:
    """The error as the last event of a ``--progress json`` stream (``kind: "error"``,
    step 0: the build's, not a step's), so every line of standard error parses."""
    import json

    print(json.dumps({"kind": "error", "step": 0, "message": message, "exitCode": code}, sort_keys=True),
          file=sys.stderr, flush=True)
    return code


def _is_located(exc: ModelbuildError) -> bool:
    return getattr(exc, "span", None) is not None


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["main", "COMMANDS", "EXIT_USER_ERROR"]
