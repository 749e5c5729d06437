"""What llama.cpp's convert_hf_to_gguf.py writes for a checkpoint directory, computed with
llama.cpp's own gguf-py: the tests' oracle (tests/test_gguf_metadata.py).

llama.cpp's converter writes with the gguf-py of its own tree, which is newer than PyPI's
``gguf`` (both say 0.19.0). That package cannot share a process with the installed ``gguf``
(its modules import ``gguf.constants`` absolutely), so this runs as its own program, with
``PYTHONPATH`` pointing at the tree's ``gguf-py`` (scripts/fetch-test-data puts the one of
the pinned llama.cpp in tests/data/external/llama.cpp-gguf-py):

    PYTHONPATH=tests/data/external/llama.cpp-gguf-py python tests/llama_cpp_oracle.py general DIR GGUF [--name N]
    PYTHONPATH=tests/data/external/llama.cpp-gguf-py python tests/llama_cpp_oracle.py special DIR \
        [--load-merges] [--n-vocab N]

``general``: the ``general.*`` keys after ``general.architecture``, as the converter's
``prepare_metadata`` writes them (``Metadata.load``, the directory's name as the fallback
name, the size label from the parameter count of the tensors in GGUF, a file hf-to-gguf
wrote, then ``set_gguf_meta_model``). ``special``: the keys ``SpecialVocab`` adds (merges,
special token ids, ``add_*`` flags, chat template, normalizer flags).

Prints JSON: ``{"gguf": the gguf package's file, "keys": [[key, type, sub_type, value], …]}``
with the GGUF value types as integers (sub_type: the element type of an array, else null).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def general(directory: Path, path: Path, name: str | None) -> list[tuple[str, Any]]:
    import gguf

    total = sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)
    meta = gguf.Metadata.load(None, directory, name, total)
    if meta.name is None:
        meta.name = directory.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, total, 0, 0)  # no experts in the tests' models
    writer = gguf.GGUFWriter(path=None, arch="llama")
    meta.set_gguf_meta_model(writer)
    return list(writer.kv_data[0].items())[1:]  # after general.architecture


def special(directory: Path, load_merges: bool, n_vocab: int | None) -> list[tuple[str, Any]]:
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="llama")
    gguf.SpecialVocab(directory, load_merges=load_merges, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return list(writer.kv_data[0].items())[1:]


def plain(value: Any) -> Any:
    """*value* as JSON can hold it (numpy scalars and arrays as numbers and lists)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    import gguf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("general")
    g.add_argument("directory", type=Path)
    g.add_argument("gguf", type=Path, help="a GGUF file with the model's tensors")
    g.add_argument("--name")
    s = sub.add_parser("special")
    s.add_argument("directory", type=Path)
    s.add_argument("--load-merges", action="store_true")
    s.add_argument("--n-vocab", type=int)
    args = parser.parse_args(argv)
    if args.what == "general":
        kv = general(args.directory, args.gguf, args.name)
    else:
        kv = special(args.directory, args.load_merges, args.n_vocab)
    keys = []
    for key, field in kv:
        sub_type = None
        if field.type == gguf.GGUFValueType.ARRAY:
            sub_type = field.sub_type or gguf.GGUFValueType.get_type(field.value[0])
        keys.append([key, int(field.type), None if sub_type is None else int(sub_type), plain(field.value)])
    json.dump({"gguf": gguf.__file__, "keys": keys}, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
