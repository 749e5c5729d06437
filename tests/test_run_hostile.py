"""``modelbuild run`` of a hostile artifact (an OCI layout written by an attacker): the
variant's files are materialised by the one materialisation, so each of these is refused
with one error line before any engine starts, nothing is written outside the run directory,
and no half-made run directory is left for the next run to trust."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from run_engines import use_probe
from test_materialize import Artifact, sha, tar_of
from test_run import error_of, free_port


class OnnxArtifact(Artifact):
    """An artifact whose config says onnx, so the probe engine accepts it and only the
    materialisation stands between the attacker and the disk."""

    def config_bytes(self) -> bytes:
        return json.dumps({"descriptor": {"name": "hostile"}, "config": {"format": "onnx"},
                           "modelfs": {"type": "layers", "diffIds": self.diff_ids}}).encode()


def hard_link_tar(name: str, target: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.LNKTYPE, target
        tf.addfile(info)
    return buf.getvalue()


def _cases(tmp: Path) -> dict[str, OnnxArtifact]:
    weights = b"onnx weights" * 10
    return {
        "dotdot": OnnxArtifact().raw("../escaped.onnx", weights),
        "absolute": OnnxArtifact().raw(str(tmp / "absolute.onnx"), weights),
        "tar-symlink-out": OnnxArtifact().raw("model.onnx", weights).tar(
            "data", tar_of(("data/link", "->", "../../../../outside"), ("data/link/x.txt", b"through the link"))),
        "tar-hardlink-out": OnnxArtifact().raw("model.onnx", weights).tar(
            "data", hard_link_tar("data/passwd", "/etc/passwd")),
        "digest-mismatch": OnnxArtifact().raw("model.onnx", weights, digest=sha(b"other bytes")),
        "size-lies-short": OnnxArtifact().raw("model.onnx", weights, size=len(weights) - 1),
        "size-lies-long": OnnxArtifact().raw("model.onnx", weights, size=len(weights) + 100),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "tar-symlink-out", "tar-hardlink-out", "digest-mismatch",
                                  "size-lies-short", "size-lies-long"])
def test_a_hostile_artifact_is_refused_before_the_engine_starts(case, mb, home, tmp_path, monkeypatch):
    use_probe(monkeypatch)
    art = _cases(tmp_path)[case]
    if case == "digest-mismatch":  # the layout holds the lying bytes under the claimed digest
        art.blobs[sha(b"other bytes")] = art.blobs.pop(sha(b"onnx weights" * 10))
    layout = tmp_path / "layout"
    ref = art.to_layout(layout)
    before = _snapshot(tmp_path)
    run = mb("run", ref, "--engine", "probe", "--port", str(free_port()))
    line = error_of(run, run.rc)
    assert run.rc in (1, 2), run.err
    assert "probe|" not in run.err, "the engine never started"
    assert len(line) < 400 and "\n" not in line
    run_root = home / "run"
    leftovers = [p for p in run_root.rglob("*")] if run_root.exists() else []
    assert not [p for p in leftovers if p.name != "work" and not p.name.endswith(".lock")], leftovers
    assert _snapshot(tmp_path) - before <= {str(home)}, "nothing written outside the run directory"
    assert not (tmp_path / "escaped.onnx").exists() and not (tmp_path / "absolute.onnx").exists()


def _snapshot(root: Path) -> set[str]:
    """Every path under *root* except the store/home tree and the layout itself."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if "mbhome" in Path(dirpath).parts or "layout" in Path(dirpath).parts:
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if name in ("mbhome",):
                out.add(path)
                continue
            if name != "layout":
                out.add(path)
    return out


def test_the_refusals_name_what_is_wrong(mb, tmp_path, monkeypatch):
    """One line each, naming the path or digest at fault (the same words as ``pull -o``)."""
    use_probe(monkeypatch)
    lines = {}
    for case, art in _cases(tmp_path).items():
        if case == "digest-mismatch":
            art.blobs[sha(b"other bytes")] = art.blobs.pop(sha(b"onnx weights" * 10))
        run = mb("run", art.to_layout(tmp_path / f"layout-{case}"), "--engine", "probe", "--port", str(free_port()))
        lines[case] = error_of(run, run.rc)
    assert "'../escaped.onnx'" in lines["dotdot"] or "../escaped.onnx" in lines["dotdot"]
    assert "absolute" in lines["absolute"]
    assert "link" in lines["tar-symlink-out"]
    assert "passwd" in lines["tar-hardlink-out"] or "link" in lines["tar-hardlink-out"]
    assert sha(b"other bytes") in lines["digest-mismatch"]
    for case in ("size-lies-short", "size-lies-long"):
        assert "bytes" in lines[case] or "size" in lines[case], lines[case]
