"""The build command as a docker buildx user expects it: --label/--annotation, -q, where the
result goes in each progress mode, --metadata-file, -o for files and layouts, usage errors
that show the subcommand's usage, and references checked against the OCI grammar."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import blob, read_artifact

HEAD = "NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"
STAGES = "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nTARGET cpu\nQUANTIZE float16\n"


@pytest.fixture
def ctx(tiny_llama: Path) -> Path:
    (tiny_llama / "Modelfile").write_text(HEAD + "LABEL team=ml source=modelfile\n")
    return tiny_llama


def doc(home: Path, digest: str) -> dict:
    return json.loads(blob(home / "store", digest))


# -- labels and annotations ------------------------------------------------------------------
def test_labels_and_annotations_land_in_the_manifest_and_rerun_only_the_manifest(mb, home, ctx):
    plain = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx).json()
    annotated = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx,
                   *("--label", "source=cli", "--label", "org.opencontainers.image.vendor=Example",
                     "--annotation", "com.example.note=a=b", "--annotation", "manifest:team=infra",
                     "--annotation", "index-descriptor:com.example.ref=1")).json()
    manifest, config = read_artifact(home / "store", annotated["digest"])
    # the Modelfile's LABEL, then --label, then --annotation: later wins; values keep their '='
    assert manifest["annotations"] == {"com.example.note": "a=b", "org.opencontainers.image.vendor": "Example",
                                       "source": "cli", "team": "infra"}
    assert "labels" not in json.dumps(config)  # the ModelPack config is closed: nothing went there
    assert annotated["digest"] != plain["digest"] and annotated["tags"] == plain["tags"] == ["tiny:latest"]
    assert annotated["layers"] == plain["layers"] and annotated["config"] == plain["config"]
    # only the manifest is written again (export always runs); no file re-hashed, nothing transformed
    assert annotated["stats"]["executed"] == ["export", "manifest"], annotated["stats"]
    assert annotated["stats"]["bytes_hashed"] == 0
    # the tag names the annotated manifest; index-descriptor annotates its entry in index.json
    entry = next(m for m in json.loads((home / "store" / "index.json").read_text())["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == "tiny:latest")
    assert entry["digest"] == annotated["digest"] and entry["annotations"]["com.example.ref"] == "1"
    # reproducible: the same flags, the same digest, nothing run; flag order within a level kept
    again = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx,
               *("--label", "source=cli", "--label", "org.opencontainers.image.vendor=Example",
                 "--annotation", "com.example.note=a=b", "--annotation", "manifest:team=infra",
                 "--annotation", "index-descriptor:com.example.ref=1")).json()
    assert again["digest"] == annotated["digest"] and again["stats"]["executed"] == []


def test_annotation_levels_of_a_multi_platform_build(mb, home, ctx):
    (ctx / "Modelfile").write_text(HEAD + STAGES)
    result = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", "-t", "tiny:1", cwd=ctx,
                *("--annotation", "index,manifest:org.opencontainers.image.description=both",
                  "--annotation", "manifest[cuda]:com.example.gpu=yes",
                  "--annotation", "manifest-descriptor[cpu]:com.example.entry=cpu",
                  "--label", "team=ml")).json()
    index = doc(home, result["digest"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert index["annotations"] == {"org.opencontainers.image.description": "both"}
    by_stage = {e["annotations"]["dev.modelbuild.platform.stage"]: e for e in index["manifests"]}
    assert by_stage["cpu"]["annotations"]["com.example.entry"] == "cpu"
    assert "com.example.entry" not in by_stage["cuda"]["annotations"]
    cpu, cuda = doc(home, by_stage["cpu"]["digest"]), doc(home, by_stage["cuda"]["digest"])
    assert cpu["annotations"] == {"org.opencontainers.image.description": "both", "team": "ml"}
    assert cuda["annotations"] == {"org.opencontainers.image.description": "both", "team": "ml",
                                   "com.example.gpu": "yes"}
    # a stage-specific annotation beats the general one for that stage only
    again = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", "-t", "tiny:1", cwd=ctx,
               *("--annotation", "team=all", "--annotation", "manifest[cuda]:team=gpu")).json()
    index = doc(home, again["digest"])
    teams = {e["annotations"]["dev.modelbuild.platform.stage"]: doc(home, e["digest"])["annotations"]["team"]
             for e in index["manifests"]}
    assert teams == {"cpu": "all", "cuda": "gpu"}
    assert not any(s.startswith(("transform", "layer", "digest", "config")) for s in again["stats"]["executed"])


@pytest.mark.parametrize("args, message", [
    (("--label", "=x"), "--label '=x': the key is empty"),
    (("--label", "novalue"), "--label 'novalue': expected KEY=VALUE"),
    (("--annotation", "a b=1"), "--annotation 'a b=1': the key contains a space"),
    (("--annotation", "manifest:=1"), "--annotation 'manifest:=1': the key is empty"),
    (("--annotation", "bogus:k=1"), "--annotation 'bogus:k=1': unknown level 'bogus'"),
    (("--annotation", "index:k=1"), "--annotation 'index:k=1': this build writes one manifest and no index"),
    (("--annotation", "manifest[gpu]:k=1"), "--annotation 'manifest[gpu]:k=1': no stage 'gpu'"),
])
def test_bad_label_or_annotation_is_one_line_and_exit_2(mb, home, ctx, args, message):
    run = mb("build", "-f", "Modelfile", *args, cwd=ctx)
    assert run.rc == 2, run.err
    assert run.err == f"modelbuild: error: {message}" + run.err.split(message, 1)[1]
    assert run.err.count("\n") == 1 and not (home / "store").exists()  # refused before any work


# -- what goes where: -q, progress modes, --metadata-file ----------------------------------------
def test_quiet_prints_the_digest_only(mb, ctx):
    run = mb("build", "-f", "Modelfile", "-q", cwd=ctx)
    assert run.rc == 0 and run.err == ""
    assert len(run.out) == 72 and run.out.startswith("sha256:") and run.out.endswith("\n")
    assert mb("build", "-f", "Modelfile", "-q", "--json", cwd=ctx).rc == 2
    assert mb("build", "-f", "Modelfile", "-q", "--progress", "plain", cwd=ctx).rc == 2


def test_progress_json_keeps_stderr_ndjson_and_puts_the_result_on_stdout(cli, ctx):
    # a real process: what a script piping stdout and stderr apart sees
    run = cli("build", "-f", "Modelfile", "--progress", "json", cwd=ctx)
    assert run.rc == 0, run.err
    events = [json.loads(line) for line in run.err.splitlines()]  # every line is JSON
    assert events[-1]["kind"] == "result" and sum(e["kind"] == "result" for e in events) == 1
    result = events[-1]["data"]
    assert run.out == f"{result['digest']}\n" and result["tags"] == ["tiny:latest"]
    assert {"start", "done"} <= {e["kind"] for e in events}
    # with --json, stdout is the same document the result event carries
    both = cli("build", "-f", "Modelfile", "--progress", "json", "--json", cwd=ctx)
    assert json.loads(both.out)["digest"] == result["digest"]
    assert json.loads(both.err.splitlines()[-1])["data"]["digest"] == result["digest"]


@pytest.mark.parametrize("modelfile, code", [
    ("NAME tiny\nMODEL missing.safetensors\n", 2),  # bad input, before any step
    ("NAME tiny\nCONFIG config.json\nMODEL model.safetensors\n", 1),  # a step fails
])
def test_progress_json_errors_are_events_too(cli, ctx, modelfile, code):
    """A failed build keeps standard error NDJSON: the final error is the last event."""
    (ctx / "Modelfile").write_text(modelfile)
    if code == 1:  # a Git LFS pointer where the weights should be
        (ctx / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    run = cli("build", "-f", "Modelfile", "--progress", "json", cwd=ctx)
    assert run.rc == code and run.out == ""
    events = [json.loads(line) for line in run.err.splitlines()]  # every line is JSON
    last = events[-1]
    assert last["kind"] == "error" and last["step"] == 0 and last["exitCode"] == code
    assert "missing.safetensors" in last["message"] if code == 2 else "Git LFS pointer" in last["message"]
    assert code == 2 or any(e["kind"] == "error" and e["step"] > 0 for e in events)  # the step's own error


def test_plain_progress_prints_digest_and_tags_on_stdout(mb, ctx):
    run = mb("build", "-f", "Modelfile", "--progress", "plain", cwd=ctx)
    digest, tag = run.out.split()
    assert digest.startswith("sha256:") and tag == "tiny:latest" and "#1 " in run.err


def test_metadata_file_is_written_as_buildx_writes_it_also_on_a_noop_rebuild(mb, home, ctx, tmp_path):
    meta = tmp_path / "meta.json"
    built = mb("build", "-f", "Modelfile", "-t", "tiny:1", "-t", "localhost:5000/team/tiny:1", "--json",
               "--progress", "quiet", "--metadata-file", str(meta), cwd=ctx).json()
    first = json.loads(meta.read_text())
    manifest = doc(home, built["digest"])
    assert first["containerimage.digest"] == built["digest"]
    assert first["containerimage.descriptor"] == {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                  "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                                                  "digest": built["digest"], "size": built["size"]}
    assert first["containerimage.config.digest"] == manifest["config"]["digest"]
    assert first["image.name"] == "tiny:1,localhost:5000/team/tiny:1"
    assert first["modelbuild.tags"] == ["tiny:1", "localhost:5000/team/tiny:1"]
    meta.write_text("stale")
    again = mb("build", "-f", "Modelfile", "-t", "tiny:1", "-t", "localhost:5000/team/tiny:1", "-q",
               "--metadata-file", str(meta), cwd=ctx)
    assert again.out.strip() == built["digest"]
    assert json.loads(meta.read_text()) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".meta.json")] == []  # no temp left
    assert mb("build", "-f", "Modelfile", "--metadata-file", str(tmp_path / "no" / "m.json"), cwd=ctx).rc == 2


# -- outputs ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_dir_writes_the_built_files(mb, home, ctx, tmp_path):
    bare, local = tmp_path / "bare", tmp_path / "local"
    built = mb("build", "-f", "Modelfile", "-o", str(bare), "-o", f"type=local,dest={local}", "--json",
               "--progress", "quiet", cwd=ctx).json()
    for out in (bare, local):
        files = {l["annotations"]["org.cncf.model.filepath"]: l["digest"] for l in built["layers"]}
        assert sorted(p.name for p in out.iterdir()) == sorted(files)
        for name, digest in files.items():
            assert _sha256(out / name) == digest
    assert not (bare / "index.json").exists()  # files, not a layout
    again = mb("build", "-f", "Modelfile", "-o", str(bare), "--json", "--progress", "quiet", cwd=ctx).json()
    assert again["stats"]["executed"] == []  # the files are there already: nothing written


def test_output_type_oci_writes_a_layout(mb, home, ctx, tmp_path):
    out = tmp_path / "layout"
    built = mb("build", "-f", "Modelfile", "-o", f"type=oci,dest={out}", "--json", "--progress", "quiet",
               cwd=ctx).json()
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == built["digest"]
    assert read_artifact(out, built["digest"])[0]["layers"] == built["layers"]


def test_multi_platform_local_output_writes_a_directory_per_stage(mb, home, ctx, tmp_path):
    (ctx / "Modelfile").write_text(HEAD + STAGES)
    out = tmp_path / "files"
    built = mb("build", "-f", "Modelfile", "-o", str(out), "--json", "--progress", "quiet", cwd=ctx).json()
    assert sorted(p.name for p in out.iterdir()) == ["cpu", "cuda"]
    for variant in built["variants"]:
        files = {l["annotations"]["org.cncf.model.filepath"]: l["digest"] for l in variant["layers"]}
        stage_dir = out / variant["stage"]
        assert sorted(p.name for p in stage_dir.iterdir()) == sorted(files)
        assert all(_sha256(stage_dir / name) == digest for name, digest in files.items())
    # the two stages quantized differently: their weights differ
    assert _sha256(out / "cpu" / "model.safetensors") != _sha256(out / "cuda" / "model.safetensors")


def test_a_failed_build_writes_no_output_and_moves_no_tag(mb, home, ctx, tmp_path):
    first = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx).json()
    # a step fails while running (weights that are not safetensors, to be quantized)
    (ctx / "Modelfile").write_text(HEAD + "QUANTIZE float16\n")
    (ctx / "model.safetensors").write_bytes(b"not safetensors at all")
    out = tmp_path / "files"
    run = mb("build", "-f", "Modelfile", "-o", str(out), "--annotation", "x=1", "--progress", "plain", cwd=ctx)
    assert run.rc == 2 and "ERROR: model.safetensors: header length" in run.err, run.err
    assert not out.exists()
    assert mb("inspect", "tiny:latest", "--json").json()["digest"] == first["digest"]
    # every step succeeds but the output cannot be written (its dest is a file): no tag moves
    (ctx / "model.safetensors").unlink()
    (ctx / "Modelfile").write_text("NAME tiny\nCONFIG *.json\nDOC README.md\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    run = mb("build", "-f", "Modelfile", "-o", str(afile), cwd=ctx)
    assert run.rc == 2 and "exists and is not a directory" in run.err, run.err
    assert afile.read_text() == "x"
    assert mb("inspect", "tiny:latest", "--json").json()["digest"] == first["digest"]


# -- usage -----------------------------------------------------------------------------------
def test_unknown_flag_shows_the_subcommands_usage(cli, tmp_path):
    run = cli("build", "--no-such-flag", cwd=tmp_path)
    assert run.rc == 2 and run.out == ""
    assert run.err.startswith("usage: modelbuild build [-h]")
    assert run.err.rstrip().endswith("modelbuild build: error: unrecognized arguments: --no-such-flag")
    shorthand = cli("-f", "Modelfile", "--bogus", cwd=tmp_path)  # `modelbuild -f …` is `modelbuild build -f …`
    assert shorthand.rc == 2 and shorthand.err.startswith("usage: modelbuild build [-h]")


def test_bad_argument_value_shows_the_subcommands_usage(mb, tmp_path):
    run = mb("ls", "--nope", cwd=tmp_path)
    assert run.rc == 2 and run.err.startswith("usage: modelbuild ls ")


# -- references ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, column, reason", [
    ("../../x", 6, "NAME '../../x' is not a valid repository name: path component '..' is not valid"),
    ("Foo", 6, "NAME 'Foo' is not a valid repository name: repository names are lower-case (use 'foo'"),
    ('"my model"', 6, "NAME 'my model' is not a valid repository name: it contains a space or a control "
                      "character (use 'my-model'; or pass -t NAME:TAG)"),
    ("team//x", 6, "NAME 'team//x' is not a valid repository name: a repository path component is empty"),
])
def test_a_name_that_is_no_reference_is_an_error_at_its_value(mb, home, ctx, name, column, reason):
    (ctx / "Modelfile").write_text(f"CONFIG *.json\nMODEL *.safetensors\nNAME {name}\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 2, run.err
    assert run.err.startswith(f"Modelfile:3:{column}: {reason}") and run.err.count("\n") == 1, run.err
    assert not (home / "store" / "index.json").exists()  # nothing tagged, nothing folded into a tag
    # with -t, NAME is only descriptor.name (a modctl display name builds unchanged)
    built = mb("build", "-f", "Modelfile", "-t", "ok:1", "--json", "--progress", "quiet", cwd=ctx).json()
    assert built["tags"] == ["ok:1"] and built["config"]["descriptor"]["name"] == name.strip('"')


@pytest.mark.parametrize("tag, reason", [
    ("a b", "it contains a space or a control character"),
    ("Team/m:1", "repository names are lower-case (use 'team/m')"),
    ("m:ñ", "tag 'ñ' is not ASCII letters"),
    ("m:" + "a" * 129, "the tag is 129 characters, more than 128"),
    ("x/" + "a" * 260, "the repository name is 262 characters, more than 255"),
    ("localhost:0/m", "port 0 is not from 1 to 65535"),
])
def test_a_bad_tag_is_a_one_line_usage_error(mb, home, ctx, tag, reason):
    run = mb("build", "-f", "Modelfile", "-t", tag, cwd=ctx)
    assert run.rc == 2, run.err
    assert run.err.startswith("modelbuild: error: invalid reference ") and reason in run.err, run.err
    assert run.err.count("\n") == 1 and not (home / "store").exists()


@pytest.mark.parametrize("name, tag", [
    ("tiny", "tiny:latest"),
    ("team/tiny.v2_x__y-z", "team/tiny.v2_x__y-z:latest"),
    ("tiny:1.0-rc_1", "tiny:1.0-rc_1"),
    ("localhost:5000/team/tiny:1", "localhost:5000/team/tiny:1"),
    ("registry.example.com/a/b/c:Latest", "registry.example.com/a/b/c:Latest"),
    ("[::1]:5000/tiny", "[::1]:5000/tiny:latest"),
])
def test_valid_names_keep_working(mb, ctx, name, tag):
    (ctx / "Modelfile").write_text(f"NAME {name}\nCONFIG *.json\nMODEL *.safetensors\n")
    built = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx).json()
    assert built["tags"] == [tag] and built["config"]["descriptor"]["name"] == name
    by_t = mb("build", "-f", "Modelfile", "-t", tag, "-t", "Reg.Example.com:443/x/y", "--json", "--progress",
              "quiet", cwd=ctx).json()
    assert by_t["tags"] == [tag, "Reg.Example.com:443/x/y:latest"]


@pytest.mark.parametrize("line, column, shown", [
    ("TARGET cuda AS gpu/hopper", 16, "gpu/hopper"),
    ("TARGET cuda AS .hidden", 16, ".hidden"),
    ("TARGET cuda AS " + "s" * 65, 16, "s" * 65),
])
def test_a_stage_name_that_cannot_end_a_tag_is_an_error_at_its_value(mb, home, ctx, line, column, shown):
    """Every variant is tagged NAME:TAG-STAGE too, so the stage name must fit a tag."""
    (ctx / "Modelfile").write_text(f"NAME tiny\nCONFIG *.json\nMODEL *.safetensors\n{line}\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 2 and run.err.count("\n") == 1, run.err
    assert run.err.startswith(f"Modelfile:4:{column}: stage name ") and "cannot end a tag" in run.err
    assert not (home / "store" / "index.json").exists()


def test_a_variant_tag_over_128_characters_is_refused_before_any_work(mb, home, ctx):
    (ctx / "Modelfile").write_text("NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nTARGET cpu\n")
    run = mb("build", "-f", "Modelfile", "-t", "tiny:" + "t" * 125, cwd=ctx)
    assert run.rc == 2 and "its variant tag" in run.err and "longer than 128 characters" in run.err
    assert not (home / "store" / "index.json").exists()
    assert mb("build", "-f", "Modelfile", "-t", "tiny:" + "t" * 124, "-q", cwd=ctx).rc == 0  # 124 + "-cpu"
