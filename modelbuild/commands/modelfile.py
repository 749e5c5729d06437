"""``modelbuild modelfile``: work with Modelfiles; ``generate`` writes one for a directory.

``generate`` is modctl's ``modctl modelfile generate``, done so that the result builds
unchanged: weights are told by their headers, Git LFS pointers are reported with the fix,
the metadata is read from the headers the build reads, and every file left out is listed in
the Modelfile with the reason (:mod:`modelbuild.generate`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import tempfile
from pathlib import Path

HELP = """\
subcommands:
  generate DIR      write a Modelfile for the model files in DIR

examples:
  modelbuild modelfile generate ./Qwen2-0.5B                  print a Modelfile for the directory
  modelbuild modelfile generate ./Qwen2-0.5B -o ./Qwen2-0.5B/Modelfile
  modelbuild modelfile generate . --name team/qwen2:0.5b -o Modelfile && modelbuild -f Modelfile
  modelbuild modelfile generate ./model --json                how each file was classified, for scripts
  modelbuild modelfile generate hf://Qwen/Qwen2-0.5B -o Modelfile   fetch, classify, FROM pinned to the commit

`modelbuild modelfile generate --help` tells how files are classified.
"""

GENERATE_HELP = """\
Each file is classified as a person reading the directory would:
  MODEL    weights, told by their header (safetensors, GGUF, ONNX: a .bin holding safetensors
           is safetensors; a .gguf that is not GGUF is left out, with a warning), ONNX external
           data, and files of other weight formats (.pt, .pth, .ckpt, .h5, .tflite…)
  CONFIG   config.json, tokenizer and processor files, *.json, *.yaml, *.toml, chat templates
  CODE     *.py, *.sh, *.ipynb…, requirements*.txt, Makefile, Dockerfile
  DATASET  *.parquet, *.jsonl, *.csv, *.arrow…, and the files of a data/ or datasets/ folder
  DOC      README*, LICENSE*, *.md, *.txt, *.pdf, images
FORMAT, PARAMSIZE, PRECISION, QUANTIZATION, FAMILY and ARCH are read from the weights'
headers and config.json as the build reads them; LICENSE from README.md's front matter
(license:) or the LICENSE file's text; NAME from --name, else the directory's name.

Left out, and listed at the end of the Modelfile with the reason: hidden files and folders
(.git, .cache), Python caches, a Modelfile, links out of DIR or to folders, named pipes and
other special files, unreadable files, names with control characters, weights whose header
does not read, and files no rule classifies (these last with a warning).

A Git LFS pointer (a clone without `git lfs pull`) is an error naming every pointer, exit 2;
--skip-lfs-pointers leaves them out instead.

The Modelfile names paths relative to DIR: keep it in DIR (-o DIR/Modelfile), or build with
DIR as the context (modelbuild build -f FILE DIR). Written elsewhere with -o, it starts with a
relative FROM back to DIR. -o writes atomically and never replaces a file without --force.

examples:
  modelbuild modelfile generate ./model -o ./model/Modelfile && modelbuild -f ./model/Modelfile
  modelbuild modelfile generate ./model --name llama3:8b > Modelfile.llama3
  modelbuild modelfile generate ./model --json | jq '.files[] | select(.kind == "model")'
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = "Work with Modelfiles."
    p.epilog = HELP
    sub = p.add_subparsers(dest="modelfile_command", metavar="SUBCOMMAND", required=True)
    gen = sub.add_parser("generate", help="write a Modelfile for a directory of model files",
                         description="Write a Modelfile for the model files in DIR, one that builds unchanged.",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GENERATE_HELP)
    gen.add_argument("directory", metavar="DIR", help="the directory holding the model files, or a remote source "
                     "(hf://org/name[@revision], oci://…, ollama://…): fetched, then FROM names it pinned")
    gen.add_argument("--name", metavar="NAME", help="the Modelfile's NAME, a repository name such as "
                     "team/llama3:8b (default: DIR's name, lower-cased)")
    gen.add_argument("-o", "--output", metavar="FILE", help="write the Modelfile to FILE (default: standard output)")
    gen.add_argument("-f", "--force", action="store_true", help="with -o, replace FILE if it exists")
    gen.add_argument("--skip-lfs-pointers", action="store_true",
                     help="leave Git LFS pointer files out (listed in the Modelfile) instead of stopping")
    gen.add_argument("--json", action="store_true",
                     help="print the classification (each file's kind and why, the metadata, what was left "
                          "out) as JSON; with -o the Modelfile still goes to FILE")


def run(args: argparse.Namespace) -> int:
    from modelbuild.errors import UsageError

    if args.modelfile_command != "generate":  # pragma: no cover - argparse allows only generate
        raise UsageError(f"unknown subcommand {args.modelfile_command!r}")
    return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from modelbuild.errors import UsageError
    from modelbuild.generate import generate
    from modelbuild.generate.render import modelfile

    if args.force and not args.output:
        raise UsageError("--force replaces the file -o names; there is no -o", hint="add -o FILE")
    target = _check_output(Path(args.output), args.force) if args.output else None
    if _is_remote(args.directory):
        plan = _generate_remote(args)
    else:
        plan = generate(args.directory, name=args.name, output=str(target) if target else None,
                        skip_lfs_pointers=args.skip_lfs_pointers)
    for warning in plan.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    text = modelfile(plan)
    if target is not None:
        _write(target, text.encode(), args.force)
        print(f"wrote {target} ({len(plan.files)} files)", file=sys.stderr)
    if args.json:
        from modelbuild.commands._common import print_json

        print_json({**plan.to_json(), "modelfile": text})
    elif target is None:
        sys.stdout.write(text)
    return 0


def _is_remote(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _generate_remote(args: argparse.Namespace):  # noqa: ANN202 - a generate.Plan
    """``generate hf://…`` (any remote source): fetch it as a build would (pinned, into the
    store, cached), classify the snapshot's files, and write a Modelfile whose FROM is the
    pinned reference, so the build finds the same files, from the cache."""
    from modelbuild.fetch_session import FetchSession, fetching
    from modelbuild.generate import generate
    from modelbuild.home import home_dir
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.progress import Emitter, PlainRenderer

    host = make_plugin_manager()
    emitter = Emitter(PlainRenderer(sys.stderr))
    try:
        with fetching(FetchSession(home_dir(getattr(args, "home", None)), emitter)):
            opened = host.sources.open(args.directory, base_dir=Path.cwd())
    finally:
        emitter.close()
    assert opened.pin is not None and opened.listing is not None
    plan = generate(opened.root, name=args.name, default_name=opened.listing.name, host=host,
                    skip_lfs_pointers=args.skip_lfs_pointers)
    plan.from_ref = opened.pin.identity
    plan.directory_shown = opened.pin.identity
    return plan


def _check_output(target: Path, force: bool) -> Path:
    """Refuse, before any work, an output that exists (without --force), is a directory, or
    lies in a directory that does not exist."""
    from modelbuild.errors import UsageError

    if target.is_dir():
        raise UsageError(f"{target}: is a directory", hint="name the Modelfile to write, e.g. DIR/Modelfile")
    if os.path.lexists(target) and not force:
        raise UsageError(f"{target} exists", hint="pass --force to replace it")
    if not target.parent.is_dir():
        raise UsageError(f"{target}: directory {target.parent} does not exist")
    return target


def _write(target: Path, data: bytes, force: bool) -> None:
    """Write atomically: a reader sees no file or the whole one. Without *force*, the final
    link fails if the file appeared meanwhile (no check-then-write race)."""
    from modelbuild.errors import BuildError, UsageError

    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise BuildError(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the Modelfile from other users
        if force:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    except FileExistsError:
        raise UsageError(f"{target} exists", hint="pass --force to replace it") from None
    except OSError as exc:
        raise BuildError(f"{target}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _link_no_clobber(tmp: str, target: Path) -> None:
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):  # a file system without hard links: check, then rename
            raise FileExistsError(target) from None
        os.replace(tmp, target)
