"""OCI layouts (and store entries) written by someone else: ``inspect DIR``, ``inspect DIR:TAG``
and ``ls`` read them as untrusted input. Whatever a layout holds, the answer is one error line
naming the file or digest at fault, exit 1 (2 for a directory that is no layout), never a bug
report (70); nothing in the user's layout is removed; and names from it reach the terminal
escaped, never as raw newlines or escape sequences."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from support import error_line


REF = "org.opencontainers.image.ref.name"
EVIL = "evil\nname\x1b[31m"
CONFIG = {"descriptor": {"name": "tiny"}, "config": {"format": "safetensors"},
          "modelfs": {"type": "layers", "diffIds": []}}


# -- helpers ------------------------------------------------------------------------------






def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(layout: Path, data: bytes | dict | list | str) -> dict:
    """Write a blob into *layout*; its descriptor."""
    if not isinstance(data, bytes):
        data = (json.dumps(data) if not isinstance(data, str) else data).encode()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / _sha(data)[7:]).write_bytes(data)
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(data), "size": len(data)}


def make_layout(root: Path, manifest: dict | bytes | None = None, *, tag: str = "v1",
                config: dict | bytes | str = CONFIG) -> tuple[Path, dict]:
    """A layout with one tagged manifest (by default a sound one); its descriptor."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if manifest is None:
        cdesc = put(root, config)
        layer = put(root, b"weights")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                    "config": {**cdesc, "mediaType": "application/vnd.cncf.model.config.v1+json"},
                    "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": layer["digest"],
                                "size": layer["size"], "annotations": {"org.cncf.model.filepath": "model.bin"}}]}
    desc = put(root, manifest)
    index = {"schemaVersion": 2, "manifests": [{**desc, "annotations": {REF: tag}}]}
    (root / "index.json").write_text(json.dumps(index))
    return root, desc


def blob_files(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


# -- index.json ---------------------------------------------------------------------------
BAD_INDEXES = {
    "a list": b"[]",
    "manifests not a list": b'{"manifests": "nope"}',
    "a null entry": b'{"manifests": [null]}',
    "no digest": b'{"manifests": [{"size": 3}]}',
    "a bad digest": b'{"manifests": [{"digest": "sha256:xyz", "size": 3}]}',
    "a negative size": ('{"manifests": [{"digest": "sha256:' + "a" * 64 + '", "size": -1}]}').encode(),
    "a size that is a string": ('{"manifests": [{"digest": "sha256:' + "a" * 64 + '", "size": "3"}]}').encode(),
    "a tag that is a number": ('{"manifests": [{"digest": "sha256:' + "a" * 64 + '", "size": 3, '
                               '"annotations": {"' + REF + '": 5}}]}').encode(),
    "not JSON": b"{not json",
    "empty": b"",
    "not UTF-8": b"\xff\xfe{}",
    "no manifests": b"{}",
}


@pytest.mark.parametrize("content", BAD_INDEXES.values(), ids=BAD_INDEXES.keys())
@pytest.mark.parametrize("with_tag", [False, True], ids=["DIR", "DIR:TAG"])
def test_damaged_layout_index_is_one_error_naming_it(mb, tmp_path, content, with_tag):
    layout, _ = make_layout(tmp_path / "layout")
    (layout / "index.json").write_bytes(content)
    line = error_line(mb("inspect", f"{layout}:v1" if with_tag else str(layout)), 1)
    assert str(layout / "index.json") in line


# -- oci-layout ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"nope", b"[]", b"{}", b'{"imageLayoutVersion": 1}'],
                         ids=["not JSON", "a list", "no version", "a number"])
def test_garbage_oci_layout_file_is_one_error_naming_it(mb, tmp_path, content):
    layout, _ = make_layout(tmp_path / "layout")
    (layout / "oci-layout").write_bytes(content)
    assert str(layout / "oci-layout") in error_line(mb("inspect", str(layout)), 1)


def test_directory_without_oci_layout_is_a_usage_error_naming_it(mb, tmp_path):
    layout, _ = make_layout(tmp_path / "layout")
    (layout / "oci-layout").unlink()
    line = error_line(mb("inspect", str(layout)), 2)
    assert str(layout) in line and "no oci-layout file" in line


# -- manifests and configs ----------------------------------------------------------------
def _manifest(**overrides) -> dict:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}
    return {**doc, **overrides}


BAD_MANIFESTS = {
    "not JSON": b"this is not json",
    "a list": b"[1, 2]",
    "layers not a list": _manifest(layers="nope"),
    "a null layer": _manifest(layers=[None]),
    "a layer with a bad digest": _manifest(layers=[{"mediaType": "x", "digest": "md5:00", "size": 1}]),
    "a layer without a size": _manifest(layers=[{"mediaType": "x", "digest": "sha256:" + "b" * 64}]),
    "a layer with a float size": _manifest(layers=[{"mediaType": "x", "digest": "sha256:" + "b" * 64, "size": 1.5}]),
    "a config that is a string": _manifest(config="nope"),
    "annotations that are a list": _manifest(annotations=["a"]),
    "layer annotations that are numbers": _manifest(
        layers=[{"mediaType": "x", "digest": "sha256:" + "b" * 64, "size": 1, "annotations": {"a": 1}}]),
}


@pytest.mark.parametrize("manifest", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_malformed_manifest_is_one_error_naming_its_digest(mb, tmp_path, manifest):
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    layout, desc = make_layout(tmp_path / "layout", data)
    before = blob_files(layout)
    for ref in (str(layout), f"{layout}:v1"):
        assert desc["digest"] in error_line(mb("inspect", ref), 1)
    assert blob_files(layout) == before  # the user's layout: nothing removed


@pytest.mark.parametrize("config", [b"not json", b"[]", b'"a string"', b"\xff"],
                         ids=["not JSON", "a list", "a string", "not UTF-8"])
def test_malformed_config_is_one_error_naming_its_digest(mb, tmp_path, config):
    layout, _ = make_layout(tmp_path / "layout", config=config)
    assert _sha(config) in error_line(mb("inspect", str(layout)), 1)


def test_manifest_whose_bytes_do_not_match_is_refused_and_kept(mb, tmp_path):
    layout, desc = make_layout(tmp_path / "layout")
    path = layout / "blobs" / "sha256" / desc["digest"][7:]
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # same size, other bytes
    path.write_bytes(bytes(data))
    line = error_line(mb("inspect", str(layout)), 1)
    assert desc["digest"] in line and "does not match" in line
    assert path.read_bytes() == bytes(data)  # a layout is not ours to repair


def test_descriptor_that_lies_about_the_size_is_refused(mb, tmp_path):
    layout, desc = make_layout(tmp_path / "layout")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["size"] = desc["size"] - 1
    (layout / "index.json").write_text(json.dumps(index))
    assert desc["digest"] in error_line(mb("inspect", str(layout)), 1)


def test_huge_blob_named_as_a_manifest_is_not_read(mb, tmp_path):
    layout, _ = make_layout(tmp_path / "layout")
    big = put(layout, b"\0" * (5 << 20))
    index = {"schemaVersion": 2, "manifests": [{**big, "annotations": {REF: "v1"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    line = error_line(mb("inspect", f"{layout}:v1"), 1)
    assert big["digest"] in line and "bytes" in line


def test_a_sound_layout_is_inspected(mb, tmp_path):
    layout, desc = make_layout(tmp_path / "layout")
    run = mb("inspect", f"{layout}:v1")
    assert run.rc == 0, run.err
    assert desc["digest"] in run.out and "model.bin" in run.out


# -- names are printed escaped --------------------------------------------------------------
def _evil_layout(root: Path) -> Path:
    config = {"descriptor": {"name": EVIL}, "config": {"format": EVIL}, "modelfs": {"type": "layers", "diffIds": []}}
    cdesc = put(root, config)
    manifest = _manifest(config={**cdesc, "mediaType": "application/vnd.cncf.model.config.v1+json"},
                         annotations={EVIL: EVIL},
                         layers=[{"mediaType": "application/vnd.cncf.model.weight.v1.raw\n\x1b[2J",
                                  "digest": "sha256:" + "c" * 64, "size": 1,
                                  "annotations": {"org.cncf.model.filepath": EVIL}}])
    layout, _ = make_layout(root, json.dumps(manifest).encode(), tag=EVIL)
    return layout


def test_inspect_prints_untrusted_names_escaped(mb, tmp_path):
    layout = _evil_layout(tmp_path / "layout")
    run = mb("inspect", str(layout))
    assert run.rc == 0, run.err
    assert "\x1b" not in run.out
    assert not any(line.startswith("name") and line.strip().endswith("evil") for line in run.out.splitlines())
    assert run.out.count("evil\\nname\\x1b[31m") >= 4  # name, format, label (key and value), layer path
    # the table keeps one line per layer
    table = run.out.split("\n\n", 1)[1].strip().splitlines()
    assert len(table) == 2, run.out


def test_errors_print_untrusted_names_escaped(mb, tmp_path):
    layout = _evil_layout(tmp_path / "layout")
    line = error_line(mb("inspect", f"{layout}:no\x1b[2Jsuch\nthing"), 2)
    assert "no\\x1b[2Jsuch\\nthing" in line
    (layout / "index.json").write_text(json.dumps({"manifests": [
        {"digest": "sha256:" + "d" * 64, "size": 1, "annotations": {REF: EVIL}},
        {"digest": "sha256:" + "e" * 64, "size": 1, "annotations": {REF: "b"}}]}))
    line = error_line(mb("inspect", str(layout)), 2)  # two manifests: name one; the names listed, escaped
    assert "evil\\nname\\x1b[31m" in line


def test_ls_prints_untrusted_tags_and_names_escaped(mb, home, tmp_path):
    from modelbuild.store import Store

    store = Store(home / "store").ensure()
    config = {"descriptor": {"name": EVIL}, "modelfs": {"type": "layers", "diffIds": []}}
    cdata = json.dumps(config).encode()
    manifest = json.dumps(_manifest(config={"mediaType": "application/vnd.cncf.model.config.v1+json",
                                            "digest": store.put_bytes(cdata), "size": len(cdata)})).encode()
    store.tag(EVIL, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": store.put_bytes(manifest),
                     "size": len(manifest)})
    for args in (["ls"], ["ls", "-q"]):
        run = mb(*args)
        assert run.rc == 0, run.err
        assert "\x1b" not in run.out and "evil\\nname\\x1b[31m" in run.out
        assert len(run.out.strip().splitlines()) == (2 if args == ["ls"] else 1)
    run = mb("ls", "--json")
    assert json.loads(run.out)[0]["reference"] == EVIL  # JSON escapes by itself


def test_ls_lists_an_entry_whose_manifest_is_damaged_and_names_the_blob(mb, home):
    from modelbuild.store import Store

    store = Store(home / "store").ensure()
    data = json.dumps(_manifest()).encode()
    digest = store.put_bytes(data)
    store.tag("broken:1", {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                           "size": len(data)})
    path = store.blob_path(digest)
    path.chmod(0o644)
    path.write_bytes(data.replace(b"2", b"3", 1))
    path.chmod(0o444)
    run = mb("ls")
    assert run.rc == 0, run.err
    assert re.search(r"broken:1 .*\(damaged\)", run.out)
    assert digest in run.err and len(run.err.strip().splitlines()) == 1
    assert not path.exists()  # removed from the store: the next build or pull puts it back
