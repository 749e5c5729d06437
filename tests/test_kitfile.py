"""The ``kitfile`` frontend (``plugins/kitfile/``): KitOps' Kitfiles build into ModelPack
artifacts that carry every field they set, and bad ones fail at the line, in one line.

The samples, in ``tests/data/kitfiles/``, each cited where it is used:

* three Kitfiles from KitOps' documentation (kitops-ml/kitops at commit a041892867ad),
  unchanged, with small stand-in files beside them: ``reference/`` (the format reference's
  example), ``flightsat/`` (the Kitfile overview's full example), ``filmslm/`` (the "next
  steps" guide; its model directory is filled with tiny-llama at test time);
* KitOps' own tests, run against modelbuild: ``kitops-pack/`` (which files ``kit pack``
  packs, with ``.kitignore`` and nested entries) and ``kitops-parameters/`` (the JSON a
  ``parameters`` section becomes);
* ``errors/<case>/``: a Kitfile, the exact line the user sees in ``expected.txt``
  (``{context}`` is the build context) and the files around it in ``setup.json``, as
  tests/test_modelfile_errors.py does for Modelfiles.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from helpers import blob, read_artifact, validate_against_shared_schema
from support import EXAMPLES, age, write_model_dir

DATA = Path(__file__).resolve().parent / "data" / "kitfiles"
TINY = EXAMPLES / "tiny-llama" / "model"
PREFIX = "dev.modelbuild.kitfile."
MT = "application/vnd.cncf.model."
WEIGHT, CONFIG, CODE, DATASET, DOC = (MT + f for f in ("weight.v1", "weight.config.v1", "code.v1", "dataset.v1",
                                                        "doc.v1"))
ERROR_CASES = sorted(p for p in (DATA / "errors").iterdir() if p.is_dir())
LOCATED = re.compile(r"^Kitfile:\d+:\d+: .+")


# -- helpers -----------------------------------------------------------------------------------
def context(name: str, tmp_path: Path) -> Path:
    """A copy of ``tests/data/kitfiles/NAME``, its files aged past the stat cache's racy window."""
    ctx = tmp_path / name
    shutil.copytree(DATA / name, ctx)
    for path in ctx.rglob("*"):
        age(path)
    return ctx


def build(mb, home: Path, ctx: Path, *args: str, kitfile: str = "Kitfile") -> tuple[dict, dict]:
    """``modelbuild build -f KITFILE ARGS`` in *ctx*; the manifest and config it stored."""
    run = mb("build", "-f", kitfile, "--json", "--progress", "quiet", *args, cwd=ctx, timeout=300)
    assert run.rc == 0, run.err
    manifest, config = read_artifact(home / "store", run.json()["digest"])
    validate_against_shared_schema(config)
    return manifest, config


def layers(manifest: dict) -> list[tuple[str, str]]:
    """(path, media type) of each layer, in manifest order."""
    return [(l["annotations"]["org.cncf.model.filepath"], l["mediaType"]) for l in manifest["layers"]]


def kitfile_annotations(manifest: dict) -> dict:
    """The manifest's ``dev.modelbuild.kitfile.*`` annotations, JSON sections decoded."""
    out = {}
    for key, value in manifest.get("annotations", {}).items():
        if key.startswith(PREFIX):
            section = key[len(PREFIX):]
            out[section] = value if section == "manifestVersion" else json.loads(value)
    return out


def packed_files(home: Path, manifest: dict) -> dict[str, str]:
    """Every regular file the artifact holds → its layer's media type (tar layers opened)."""
    out = {}
    for layer in manifest["layers"]:
        if layer["mediaType"].endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(blob(home / "store", layer["digest"]))) as tar:
                out.update({m.name: layer["mediaType"] for m in tar.getmembers() if m.isfile()})
        else:
            out[layer["annotations"]["org.cncf.model.filepath"]] = layer["mediaType"]
    return out


# -- three Kitfiles from KitOps' documentation ---------------------------------------------------
def test_the_format_references_example_builds_with_every_field(mb, home, tmp_path):
    """kitops-ml/kitops pkg/artifact/kitfile.md "## Example" (the Kitfile format reference,
    docs/src/docs/kitfile/format.md), unchanged: YAML numbers as strings (``manifestVersion:
    1.0``), a folded description, flow-style authors, a code directory."""
    ctx = context("reference", tmp_path)
    manifest, config = build(mb, home, ctx, "-t", "aiproject:1.2.3")
    assert config["descriptor"] == {
        "name": "AIProjectName",  # package.name
        "version": "1.2.3",  # package.version
        "description": "A brief description of the AI/ML project.",  # package.description, folded
        "authors": ["Author Name", "Contributor Name"],  # package.authors
        "licenses": ["Apache-2.0"],  # model.license (the package sets none)
    }
    assert config["config"] == {}  # model.h5 is no weight format modelbuild reads
    assert layers(manifest) == [("data/dataset.csv", DATASET + ".raw"), ("models/model.h5", WEIGHT + ".raw"),
                                ("src", CODE + ".tar")]
    assert packed_files(home, manifest) == {"data/dataset.csv": DATASET + ".raw", "models/model.h5": WEIGHT + ".raw",
                                            "src/train.py": CODE + ".tar", "src/util.py": CODE + ".tar"}
    assert kitfile_annotations(manifest) == {
        "manifestVersion": "1.0",
        "package": {"name": "AIProjectName", "version": "1.2.3",
                    "description": "A brief description of the AI/ML project.",
                    "authors": ["Author Name", "Contributor Name"]},
        "code": [{"path": "src/", "description": "Source code for the AI models.", "license": "Apache-2.0"}],
        "datasets": [{"name": "DatasetName", "path": "data/dataset.csv", "description": "Description of the dataset.",
                      "license": "CC-BY-4.0"}],
        "model": {"name": "ModelName", "path": "models/model.h5", "framework": "TensorFlow", "version": "1.0",
                  "description": "Model description.", "license": "Apache-2.0"},
    }


def test_the_overviews_full_example_builds_with_every_field(mb, home, tmp_path):
    """kitops-ml/kitops docs/src/docs/kitfile/kf-overview.md "Example: Full Kitfile",
    unchanged: ``./`` paths, two datasets, block-style authors, a ``v``-prefixed version."""
    ctx = context("flightsat", tmp_path)
    manifest, config = build(mb, home, ctx, "-t", "flightsatml:1.0.0")
    assert config["descriptor"] == {
        "name": "FlightSatML",
        "version": "1.0.0",  # model.version: the package sets none
        "description": "Updated model to analyze flight trait and passenger satisfaction data",
        "authors": ["Jozu"],
        "licenses": ["Apache-2.0"],  # package.license and model.license, the same: once
    }
    assert layers(manifest) == [("data/test.csv", DATASET + ".raw"), ("data/train.csv", DATASET + ".raw"),
                                ("models/scikit_class_model_v2.joblib", WEIGHT + ".raw"), ("notebooks", CODE + ".tar")]
    assert "notebooks/train.ipynb" in packed_files(home, manifest)
    assert kitfile_annotations(manifest) == {
        "manifestVersion": "v1.0.0",
        "package": {"authors": ["Jozu"],
                    "description": "Updated model to analyze flight trait and passenger satisfaction data",
                    "license": "Apache-2.0", "name": "FlightSatML"},
        "code": [{"description": "Jupyter notebook with model training code in Python", "path": "./notebooks"}],
        "model": {"description": "Flight satisfaction and trait analysis model using Scikit-learn",
                  "framework": "Scikit-learn", "license": "Apache-2.0", "name": "joblib Model",
                  "path": "./models/scikit_class_model_v2.joblib", "version": "1.0.0"},
        "datasets": [{"name": "training data",
                      "description": "Flight traits and traveller satisfaction training data (tabular)",
                      "path": "./data/train.csv"},
                     {"name": "validation data", "description": "validation data (tabular)",
                      "path": "./data/test.csv"}],
    }


def test_the_next_steps_guides_example_builds_with_every_field(mb, home, tmp_path):
    """kitops-ml/kitops docs/src/docs/next-steps.md (a model, two docs, two datasets, a
    codebase), unchanged; its model directory ``models/film_slm:champion`` holds the bundled
    tiny-llama model, packed whole as one tar layer."""
    ctx = context("filmslm", tmp_path)
    shutil.copytree(TINY, ctx / "models" / "film_slm:champion")
    manifest, config = build(mb, home, ctx, "-t", "filmslm:1.2.6")
    assert config["descriptor"] == {
        "name": "FilmSLM",
        "version": "1.2.6",  # model.version
        "description": "Small language model based on Mistral-7B fine tuned for answering film photography "
                       "questions.",
        "authors": ["Jozu"],
        "licenses": ["Apache-2.0"],
    }
    assert layers(manifest) == [
        ("README.md", DOC + ".raw"), ("USAGE.md", DOC + ".raw"),
        ("data/forum-to-2023-train.csv", DATASET + ".raw"), ("data/test.csv", DATASET + ".raw"),
        ("models/film_slm:champion", WEIGHT + ".tar"), ("notebooks", CODE + ".tar")]
    files = packed_files(home, manifest)
    assert {f"models/film_slm:champion/{p.name}" for p in TINY.iterdir()} <= files.keys()
    assert kitfile_annotations(manifest) == {
        "manifestVersion": "1.0",
        "package": {"authors": ["Jozu"], "license": "Apache-2.0", "name": "FilmSLM",
                    "description": "Small language model based on Mistral-7B fine tuned for answering film "
                                   "photography questions."},
        "model": {"name": "FilmSLM", "description": "Film photography Q&A model using Mistral-7B",
                  "framework": "Mistral-7B", "license": "Apache-2.0", "path": "./models/film_slm:champion",
                  "version": "1.2.6"},
        "docs": [{"path": "./README.md", "description": "Readme file for this ModelKit"},
                 {"path": "./USAGE.md", "description": "Information on how to use this model for inference"}],
        "datasets": [{"description": "Forum postings from sites like rangefinderforum, PhotographyTalk, and "
                                     "r/AnalogCommunity", "name": "training data",
                      "path": "./data/forum-to-2023-train.csv"},
                     {"description": "validation data", "name": "validation data", "path": "./data/test.csv"}],
        "code": [{"description": "Jupyter notebook with model training code in Python", "path": "./notebooks"}],
    }


def test_without_a_tag_the_package_name_must_be_one(mb, tmp_path):
    """As a Modelfile's NAME, package.name is the default tag: FilmSLM is not a repository
    name, and the error points at it (``kit pack`` never tags without ``-t``)."""
    ctx = context("filmslm", tmp_path)
    shutil.copytree(TINY, ctx / "models" / "film_slm:champion")
    run = mb("build", "-f", "Kitfile", "--progress", "quiet", cwd=ctx)
    assert run.rc == 2
    assert run.err.startswith("Kitfile:12:9: ") and "'FilmSLM'" in run.err and "-t" in run.err, run.err


# -- every section and field at once -----------------------------------------------------------
EVERY_FIELD = """\
manifestVersion: 1.0.0
package:
  name: tiny-kit
  version: 0.3.0
  description: every field of a Kitfile
  license: MIT
  authors: [The modelbuild authors, Jozu]
model:
  name: tiny-llama
  path: model/model.safetensors
  license: Apache-2.0
  framework: PyTorch
  format: safetensors
  version: 0.1.0
  description: a tiny llama
  parts:
    - name: config
      path: model/config.json
      type: config
    - name: tokenizer
      path: tokenizer
      license: BSD-3-Clause
      type: tokenizer.bpe
  parameters:
    temperature: 0.7
    top_k: 40
    stop: ["</s>", "###"]
    sampling: {greedy: false, seed: 0x2A, cutoff: 2024-06-01, answer: yes}
code:
  - path: src
    description: training code
    license: Apache-2.0
datasets:
  - name: train
    path: data/train.jsonl
    description: the training split
    license: CC-BY-4.0
    parameters: {rows: 2, format: jsonl}
docs:
  - path: README.md
    description: the model card
prompts:
  - name: system
    path: prompts/system.txt
    description: the system prompt
    license: CC0-1.0
"""


def test_every_section_and_field_is_carried(mb, home, tmp_path):
    """A Kitfile using every section and field (parts, parameters, prompts, ``.kitignore``),
    built on tiny-llama: the descriptor, config, layers and annotations, field by field."""
    ctx = tmp_path / "every"
    write_model_dir(ctx, {"README.md": "# tiny\n", "src/train.py": "print(1)\n", "src/notes.tmp": "scratch\n",
                          "data/train.jsonl": '{"text": "hi"}\n', "prompts/system.txt": "Be brief.\n",
                          ".kitignore": "# scratch files\n**/*.tmp\n"})
    (ctx / "model").mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(TINY / name, ctx / "model" / name)
    (ctx / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TINY / name, ctx / "tokenizer" / name)
    (ctx / "Kitfile").write_text(EVERY_FIELD)
    for path in ctx.rglob("*"):
        age(path)
    manifest, config = build(mb, home, ctx)  # package.name is a valid tag: tiny-kit:latest
    assert config["descriptor"] == {
        "name": "tiny-kit", "version": "0.3.0", "description": "every field of a Kitfile",
        "authors": ["The modelbuild authors", "Jozu"],
        "licenses": ["MIT", "Apache-2.0", "BSD-3-Clause"],  # package, model, parts: each once
    }
    assert config["config"]["format"] == "safetensors"  # model.format (the weights agree)
    assert config["config"]["precision"] == "float32"  # read from the weights, as for a Modelfile
    assert layers(manifest) == [
        ("README.md", DOC + ".raw"),
        ("data/train.jsonl", DATASET + ".raw"),
        ("model/config.json", CONFIG + ".raw"),  # a part's .json file is metadata (KitOps' generator)
        ("model/model.safetensors", WEIGHT + ".raw"),
        ("prompts/system.txt", DOC + ".raw"),  # prompts are documentation
        ("src/train.py", CODE + ".raw"),  # src split: .kitignore leaves notes.tmp out
        ("tokenizer", WEIGHT + ".tar"),  # a part's directory, whole
    ]
    assert kitfile_annotations(manifest) == {
        "manifestVersion": "1.0.0",
        "package": {"name": "tiny-kit", "version": "0.3.0", "description": "every field of a Kitfile",
                    "license": "MIT", "authors": ["The modelbuild authors", "Jozu"]},
        "model": {"name": "tiny-llama", "path": "model/model.safetensors", "license": "Apache-2.0",
                  "framework": "PyTorch", "format": "safetensors", "version": "0.1.0", "description": "a tiny llama",
                  "parts": [{"name": "config", "path": "model/config.json", "type": "config"},
                            {"name": "tokenizer", "path": "tokenizer", "license": "BSD-3-Clause",
                             "type": "tokenizer.bpe"}],
                  # YAML 1.2 as KitOps reads it: 0x2A is 42, a date and "yes" stay strings
                  "parameters": {"temperature": 0.7, "top_k": 40, "stop": ["</s>", "###"],
                                 "sampling": {"greedy": False, "seed": 42, "cutoff": "2024-06-01",
                                              "answer": "yes"}}},
        "code": [{"path": "src", "description": "training code", "license": "Apache-2.0"}],
        "datasets": [{"name": "train", "path": "data/train.jsonl", "description": "the training split",
                      "license": "CC-BY-4.0", "parameters": {"rows": 2, "format": "jsonl"}}],
        "docs": [{"path": "README.md", "description": "the model card"}],
        "prompts": [{"name": "system", "path": "prompts/system.txt", "description": "the system prompt",
                     "license": "CC0-1.0"}],
    }
    # the JSON is canonical: sorted keys, no blanks (what a digest or a diff of it wants)
    raw = manifest["annotations"][PREFIX + "model"]
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- KitOps' own tests ---------------------------------------------------------------------------
PACK_CASES = sorted((DATA / "kitops-pack").glob("*.yaml"))


@pytest.mark.parametrize("case", PACK_CASES, ids=[c.stem for c in PACK_CASES])
def test_kitops_pack_cases_pack_the_same_files(case: Path, mb, home, tmp_path):
    """kitops-ml/kitops testing/pack-unpack_test.go, run on modelbuild: with the case's
    Kitfile and .kitignore, the artifact holds exactly the case's ``files``, none of its
    ``ignored``, and neither the Kitfile nor .kitignore (checkFilesDoNotExist)."""
    spec = yaml.safe_load(case.read_text())
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Kitfile").write_text(spec["kitfile"])
    if spec.get("kitignore"):
        (ctx / ".kitignore").write_text(spec["kitignore"])
    expected = {os.path.normpath(f) for f in spec["files"]}
    ignored = {os.path.normpath(f) for f in spec.get("ignored", [])}
    write_model_dir(ctx, {f: f"content of {f}\n" for f in expected | ignored})  # as KitOps' setupFiles
    manifest, _ = build(mb, home, ctx, "-t", "kitops-case:1")
    files = set(packed_files(home, manifest))
    assert files == expected
    assert not files & (ignored | {"Kitfile", ".kitignore"})


PARAMETER_CASES = sorted((DATA / "kitops-parameters").glob("*.yaml"))


@pytest.mark.parametrize("case", PARAMETER_CASES, ids=[c.stem for c in PARAMETER_CASES])
def test_kitops_parameter_cases_give_the_same_json(case: Path, mb, home, tmp_path):
    """kitops-ml/kitops pkg/artifact/kitfile_test.go's parameters cases: the model section's
    JSON (``parameters`` included) is KitOps' ``kitfileJson``. The cases' model path is
    absolute (/tmp/path/to/model), which a build refuses, so it is made a local file."""
    spec = yaml.safe_load(case.read_text())
    kitfile = spec["kitfileYaml"].replace("/tmp/path/to/model", "model.bin")
    ctx = write_model_dir(tmp_path / "ctx", {"Kitfile": kitfile, "model.bin": "weights\n"})
    manifest, _ = build(mb, home, ctx)
    want = json.loads(spec["kitfileJson"])
    want["model"]["path"] = "model.bin"
    got = kitfile_annotations(manifest)
    assert got == want


# moby/patternmatcher's TestMatches table (patternmatcher_test.go at commit 5a6d8429a19b),
# the rules KitOps applies to .kitignore: (pattern, path, whether MatchesOrParentMatches)
MOBY_MATCHES = [
    ("**", "file", True), ("**", "file/", True), ("**/", "file", True), ("**/", "file/", True), ("**", "/", True),
    ("**/", "/", True), ("**", "dir/file", True), ("**/", "dir/file", True), ("**", "dir/file/", True),
    ("**/", "dir/file/", True), ("**/**", "dir/file", True), ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True), ("dir/**", "dir/file/", True), ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True), ("**/dir", "dir", True), ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True), ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True), ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True), ("**file", "dir/file", True), ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True), ("**/file", "dir/dir/file", True), ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True), ("**/**/*.txt", "file.txt", True), ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True), ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False), ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False), ("a[^b-d]e", "aze", True),
    (".*", ".foo", True), (".*", "foo", False), ("abc.def", "abcdef", False), ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False), ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True), ("**/foo/bar", "foo/bar", True), ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True), ("abc/**", "abc", False), ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True), ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True), ("a(b)c/def", "a(b)c/xyz", False), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]
MOBY_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    # KitOps' pkg/lib/filesystem/ignore_test.go
    (["dir1"], "dir1/subdir1/subdir2/file.txt", True),
    (["dir1/*.txt"], "dir1/testfile.txt", True),
    (["**/testfile.txt"], "dir1/subdir1/subdir2/testfile.txt", True),
    (["dir1", "!dir1/testfile.txt"], "dir1/testfile.txt", False),
]


def test_kitignore_matches_as_docker_and_kitops_do():
    from modelbuild_plugins.kitfile._ignore import KitIgnore, compile_pattern

    wrong = [(p, path) for p, path, want in MOBY_MATCHES
             if KitIgnore([compile_pattern(p)]).ignores(path) != want]
    wrong += [(p, path) for p, path, want in MOBY_MULTI
              if KitIgnore([compile_pattern(x) for x in p]).ignores(path) != want]
    assert not wrong


def test_kitignore_matching_does_not_backtrack():
    """A pattern of many ``**`` against a long path that fails at its end: a backtracking
    regular expression takes exponential time; the automaton is linear."""
    import time

    from modelbuild_plugins.kitfile._ignore import KitIgnore, compile_pattern

    pattern = KitIgnore([compile_pattern("/".join(["**"] * 30 + ["a*a*a*a*x"]))])
    start = time.monotonic()
    assert not pattern.ignores("/".join(["aaaa"] * 200) + "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert time.monotonic() - start < 2


# -- choosing the frontend -------------------------------------------------------------------
MINIMAL = "manifestVersion: 1.0.0\nmodel:\n  path: model.bin\n"


@pytest.mark.parametrize("name", ["Kitfile", "kitfile", ".kitfile", "prod.Kitfile"])
def test_a_kitfile_is_chosen_by_its_name(name, mb, home, tmp_path):
    """The names ``kit pack`` finds (KitOps' DefaultKitfileNames) and NAME.Kitfile need no
    ``# syntax=`` line; before this frontend, a Kitfile failed with ``Kitfile:1:1: expected
    a directive, found 'manifestVersion:'``."""
    ctx = write_model_dir(tmp_path / "ctx", {name: MINIMAL, "model.bin": "w\n"})
    manifest, _ = build(mb, home, ctx, "-t", "m:1", kitfile=name)
    assert layers(manifest) == [("model.bin", WEIGHT + ".raw")]


def test_a_syntax_line_chooses_the_frontend_whatever_the_name(mb, home, tmp_path):
    ctx = write_model_dir(tmp_path / "ctx", {"build.yaml": "# syntax=kitfile\n" + MINIMAL, "model.bin": "w\n",
                                             "Kitfile": "# syntax=modelfile\nMODEL model.bin\n"})
    kit, _ = build(mb, home, ctx, "-t", "m:1", kitfile="build.yaml")
    modelfile, _ = build(mb, home, ctx, "-t", "m:2", kitfile="Kitfile")  # a Modelfile named Kitfile
    assert layers(kit) == layers(modelfile) == [("model.bin", WEIGHT + ".raw")]
    assert kitfile_annotations(kit) and not kitfile_annotations(modelfile)


def test_two_frontends_claiming_one_name_is_a_usage_error(tmp_path):
    from modelbuild.api import UsageError, hookimpl
    from modelbuild.frontend import load_description
    from modelbuild.testing import plugin_host

    class Rival:
        name = "rival"
        filenames = ("Kitfile",)

        def load(self, text, **kw):  # pragma: no cover - never chosen
            raise AssertionError

    class Plugin:
        @hookimpl
        def modelbuild_register_frontends(self, registry):
            registry.add(Rival())

    kitfile = tmp_path / "Kitfile"
    kitfile.write_text(MINIMAL)
    with pytest.raises(UsageError) as caught:
        load_description(str(kitfile), host=plugin_host(Plugin()))
    assert caught.value.render() == (f"{kitfile}: the kitfile and rival frontends both claim files named 'Kitfile' "
                                     "(name one on the file's first line: # syntax=kitfile)")


# -- what a Kitfile may not do ------------------------------------------------------------------
def test_enough_error_cases():
    assert len(ERROR_CASES) >= 31
    for case in ERROR_CASES:
        assert (case / "expected.txt").is_file(), f"{case.name}: no expected.txt"


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.name for c in ERROR_CASES])
def test_kitfile_error(case: Path, mb, tmp_path: Path):
    """One located line on standard error, exit code 2, no traceback."""
    root = tmp_path / "ctx"
    root.mkdir()
    shutil.copyfile(case / "Kitfile", root / "Kitfile")
    setup = json.loads((case / "setup.json").read_text()) if (case / "setup.json").exists() else {}
    write_model_dir(root, setup.get("files", {}))
    for rel, target in setup.get("symlinks", {}).items():
        (root / rel).symlink_to(target)
    for rel in setup.get("fifos", []):
        os.mkfifo(root / rel)
    run = mb("build", "-f", "Kitfile", "--progress", "plain", cwd=root, timeout=60)
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip().replace("{context}", str(root.resolve()))
    err = run.err.strip()
    assert "Traceback" not in run.err, run.err
    assert run.rc == 2, f"exit code {run.rc}, stderr:\n{run.err}"
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{run.err}"
    assert LOCATED.match(err) or err.startswith(str(root.resolve())), err
    assert err == expected
    assert run.out == ""


def test_a_kitfile_past_the_size_limit_is_refused_unread(mb, tmp_path):
    """The core's bound on any build file (1 MiB) holds for a Kitfile."""
    ctx = write_model_dir(tmp_path / "ctx", {"Kitfile": "manifestVersion: 1.0.0\n" + "# padding\n" * 200_000})
    run = mb("build", "-f", "Kitfile", "--progress", "plain", cwd=ctx, timeout=60)
    assert run.rc == 2 and "larger than 1048576 bytes" in run.err, run.err


def test_a_kitfile_of_many_values_is_refused_quickly(mb, tmp_path):
    """A flat list of 200,000 values in one megabyte: refused at the value limit, in seconds."""
    text = "manifestVersion: 1.0.0\nmodel:\n  parameters: [" + "1," * 200_000 + "1]\n"
    ctx = write_model_dir(tmp_path / "ctx", {"Kitfile": text})
    run = mb("build", "-f", "Kitfile", "--progress", "plain", cwd=ctx, timeout=30)
    assert run.rc == 2 and "more than 50000 YAML values" in run.err, run.err


def test_kitops_left_out_paths_warn(mb, home, tmp_path):
    """An entry .kitignore leaves out entirely is packaged as nothing, with a warning (KitOps
    warns and packs an empty layer)."""
    ctx = write_model_dir(tmp_path / "ctx", {"Kitfile": MINIMAL + "docs:\n  - path: notes.md\n", "model.bin": "w\n",
                                             "notes.md": "n\n", ".kitignore": "*.md\n"})
    run = mb("build", "-f", "Kitfile", "-t", "m:1", "--progress", "plain", cwd=ctx, timeout=60)
    assert run.rc == 0, run.err
    assert "Kitfile:5:11: docs[0] path 'notes.md' is left out by .kitignore; nothing is packaged for it" in run.err


def test_a_context_with_a_kitfile_and_no_modelfile_builds_without_f(mb, home, tmp_path):
    """``modelbuild build CONTEXT`` finds ``CONTEXT/Kitfile`` as ``kit pack`` does: the same
    artifact as ``-f Kitfile``; a context with neither is a usage error naming what was
    looked for."""
    ctx = context("reference", tmp_path)
    manifest, _config = build(mb, home, ctx, "-t", "aiproject:1.2.3")
    run = mb("build", str(ctx), "-t", "aiproject:1.2.3", "--json", "--progress", "quiet")
    assert run.rc == 0, run.err
    assert read_artifact(home / "store", run.json()["digest"])[0] == manifest
    empty = tmp_path / "empty"
    empty.mkdir()
    run = mb("build", str(empty))
    assert run.rc == 2 and "looked for Modelfile, Kitfile" in run.err, run.err
