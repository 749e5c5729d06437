"""The converter ``hf-to-gguf``: the checkpoint's files read and checked, the plan (names,
types, order), the keys, and the streaming writer."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modelbuild.api import FormatError, OptionSpec, Output, TransformContext, UsageError, WeightFile

from .adapters import FILE_TYPE, ShapeMismatch
from .keys import gguf_value
from .metadata import model_card, parameter_counts, read_metadata, size_label
from .sentencepiece import ProtoError, read_pieces
from .tokenizer import Vocab, read_vocab

OUTTYPES = ("f16", "f32", "bf16", "q8_0")
OUTPUT_NAME = "model.gguf"
OPTIONS = ("outtype", "name", "pre")
ARCHITECTURES_HOOK = ("modelbuild_register_architectures", "architecture")
CHUNK_ELEMENTS = 4 << 20  # elements converted at a time (16 MiB of float32)

_INDEX_SUFFIX = ".safetensors.index.json"
# safetensors dtypes the converter reads (as numpy dtype names; BF16 through ml_dtypes)
_READABLE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
# the order safetensors lays them out in a file (by dtype, descending, then by name)
_LAYOUT_ORDER = ("F64", "F32", "BF16", "F16")


# -- reading the model set ---------------------------------------------------------------------


@dataclass
class _Source:
    """One checkpoint tensor: where its bytes are."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: WeightFile
    start: int
    end: int


@dataclass
class _Planned:
    order: tuple
    gguf_name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int
    source: _Source | None = None  # None for an extra tensor
    array: Any = None  # an extra tensor's values


def _load_json(f: WeightFile) -> Any:
    try:
        with open(f.source, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise FormatError(f.path, f"not valid JSON ({exc})") from None


def _read_text(f: WeightFile) -> str:
    try:
        with open(f.source, encoding="utf-8") as fh:  # text mode, as gguf-py reads it: \r\n → \n
            return fh.read()
    except UnicodeDecodeError as exc:
        raise FormatError(f.path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FormatError(f.path, f"cannot read: {exc.strerror or exc}") from None


def _json_object(f: WeightFile) -> dict[str, Any]:
    doc = _load_json(f)
    if not isinstance(doc, dict):
        raise FormatError(f.path, "not a JSON object")
    return doc


class HfToGguf:
    """The converter. See the package docstring (:mod:`modelbuild_plugins.hf_to_gguf`)."""

    name = "hf-to-gguf"
    version = "3"
    summary = "Hugging Face safetensors checkpoint → one GGUF file llama.cpp loads (llama, mistral, qwen2, …)"
    source_format = "safetensors"
    target_format = "gguf"
    outtypes = OUTTYPES
    options = (
        OptionSpec("outtype", str, choices=OUTTYPES, default=OUTTYPES[0],
                   help="the type of the weight tensors (1-D and norm tensors stay f32)"),
        OptionSpec("name", str, help="general.name; default: from README.md's front matter, config.json's "
                                     "_name_or_path or the checkpoint's directory, as llama.cpp's converter"),
        OptionSpec("pre", str, help="llama.cpp's pre-tokenizer name, for a byte-level tokenizer whose "
                                    "structure is not recognised"),
    )

    @staticmethod
    def _architectures(plugins: Any) -> Any:
        """The adapters plugins registered through this plugin's own hook."""
        if plugins is None:
            raise UsageError("hf-to-gguf needs the plugin lookup (ctx.plugins) to find its architecture adapters; "
                             "this modelbuild does not pass it")
        return plugins.extension(*ARCHITECTURES_HOOK)

    def key_extras(self, files: list[WeightFile], plugins: Any) -> dict[str, Any]:
        """The architecture adapter this conversion uses, its version and its plugin's: the
        output depends on that adapter alone, so installing another architecture plugin
        re-converts nothing, and upgrading this one re-converts only its models."""
        registry = self._architectures(plugins)
        try:
            directory, _, _ = self._weights(files)
            path = posixpath.join(directory, "config.json") if directory else "config.json"
            cfg = next(f for f in files if f.path == path)
            adapter = self._adapter(_json_object(cfg), registry, cfg.path)
        except (FormatError, StopIteration):
            return {"architecture": None}  # the conversion fails, and nothing is cached
        owner = registry.owner(adapter.name)
        return {"architecture": {"name": adapter.name, "version": str(adapter.version), "plugin": owner,
                                 "plugin_version": plugins.plugin_version(owner)}}

    def convert(self, files: list[WeightFile], options: dict[str, Any],
                ctx: TransformContext) -> list[WeightFile | Output]:
        # options arrive checked and typed from the frontend (the ``options`` declarations)
        outtype = options.get("outtype") or OUTTYPES[0]
        registry = self._architectures(getattr(ctx, "plugins", None))

        directory, weights, index = self._weights(files)
        ignored = [f for f in files if f.path.endswith(".safetensors") and f not in weights]
        for f in ignored:
            ctx.log(f"hf-to-gguf: {f.path} is not part of the checkpoint "
                    f"({'not named by ' + index.path if index else 'not model.safetensors'}); left out")
        by_path = {f.path: f for f in files}

        def beside(name: str) -> WeightFile | None:
            return by_path.get(posixpath.join(directory, name) if directory else name)

        def label(name: str) -> str:
            return posixpath.join(directory, name) if directory else name

        cfg_file = beside("config.json")
        if cfg_file is None:
            raise FormatError(label("config.json"), "missing: hf-to-gguf needs the checkpoint's config.json",
                              hint="add it with CONFIG, beside the weights")
        config = _json_object(cfg_file)
        adapter = self._adapter(config, registry, cfg_file.path)
        tok_file = beside("tokenizer.json")
        if tok_file is None:
            raise FormatError(label("tokenizer.json"), "missing: hf-to-gguf needs the tokenizer (tokenizer.json) "
                                                       "to write a GGUF file llama.cpp can run",
                              hint="add tokenizer.json (and tokenizer_config.json) beside the weights with CONFIG")

        try:
            sources = self._tensors(weights, index)
            try:
                adapter.check(config, {s.name: s.shape for s in sources.values()})
            except ShapeMismatch as exc:
                where = sources[exc.tensor].file.path if exc.tensor in sources else (
                    index.path if index else weights[0].path)
                raise FormatError(where, exc.describe()) from None
            n_blocks = adapter.block_count(config)
            hparams = adapter.hparams(config)
            extras = adapter.extra_tensors(config)
            vocab = self._vocab(tok_file, config, beside, files, options, ctx)
        except FormatError as exc:
            if exc.file == "config.json":  # adapters name config.json by its bare name
                raise FormatError(cfg_file.path, exc.message.split(": ", 1)[1], hint=exc.hint) from None
            raise

        consumed = {f.path for f in weights + ignored} | ({index.path} if index else set())
        result: list[WeightFile | Output] = [f for f in files if f.path not in consumed]
        out_path = label(OUTPUT_NAME)
        if out_path in by_path:
            raise FormatError(out_path, "the model set already holds a file of this name: hf-to-gguf writes "
                                        "the converted model there")
        plan = self._plan(sources, extras, adapter, n_blocks, outtype, ctx)
        general = self._metadata(plan, config, options, beside, directory, ctx)
        kvs = self._keys(adapter, general, hparams, vocab, outtype)
        out = ctx.output_path(out_path)
        self._write(out, kvs, plan, adapter, config, ctx)
        result.append(Output(out_path, out, "model"))
        return result

    # -- inputs

    @staticmethod
    def _weights(files: list[WeightFile]) -> tuple[str, list[WeightFile], WeightFile | None]:
        """The checkpoint's directory, its weight files (in shard order) and its index."""
        st = [f for f in files if f.path.endswith(".safetensors")]
        indexes = [f for f in files if f.path.endswith(_INDEX_SUFFIX)]
        if not st and not indexes:
            raise FormatError("model set", "no .safetensors weights to convert")
        dirs = sorted({posixpath.dirname(f.path) for f in st + indexes})
        if len(dirs) > 1:
            raise FormatError(st[0].path if st else indexes[0].path,
                              f"the model set holds checkpoints in several directories ({', '.join(dirs)}): "
                              f"hf-to-gguf converts one")
        directory = dirs[0]
        if len(indexes) > 1:
            names = [f.path for f in indexes]
            pick = [f for f in indexes if posixpath.basename(f.path) == "model" + _INDEX_SUFFIX]
            if len(pick) != 1:
                raise FormatError(names[0], f"several indexes ({', '.join(names)}): hf-to-gguf converts one model")
            indexes = pick
        if indexes:
            index = indexes[0]
            doc = _json_object(index)
            wm = doc.get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise FormatError(index.path, "weight_map must map tensor names to shard file names")
            by_name = {posixpath.basename(f.path): f for f in st}
            shards = []
            for shard in sorted(set(wm.values())):
                if shard not in by_name:
                    raise FormatError(index.path, f"names shard {shard!r}, which is not in the model set",
                                      hint="every shard the index names must be selected by MODEL")
                shards.append(by_name[shard])
            return directory, shards, index
        if len(st) == 1:
            return directory, st, None
        plain = [f for f in st if posixpath.basename(f.path) == "model.safetensors"]
        if plain:
            return directory, plain, None
        raise FormatError(st[0].path, f"{len(st)} .safetensors files and no *.safetensors.index.json saying which "
                                      f"form the model", hint="add the index with CONFIG")

    @staticmethod
    def _tensors(weights: list[WeightFile], index: WeightFile | None) -> dict[str, _Source]:
        from modelbuild_plugins.safetensors_format import read_header

        sources: dict[str, _Source] = {}
        for f in weights:
            h = read_header(f.source, f.path)
            for t in h.tensors:
                if t.name in sources:
                    raise FormatError(f.path, f"tensor {t.name!r} is also in {sources[t.name].file.path}")
                if t.dtype not in _READABLE:
                    raise FormatError(f.path, f"tensor {t.name!r} is {t.dtype}: hf-to-gguf reads F32, F16, BF16 "
                                              f"and F64 checkpoints", hint="convert a float checkpoint")
                sources[t.name] = _Source(t.name, t.dtype, tuple(t.shape), f, t.start, t.end)
        if index is not None:
            wm = _json_object(index)["weight_map"]
            for tensor, shard in wm.items():
                s = sources.get(tensor)
                if s is None or posixpath.basename(s.file.path) != shard:
                    raise FormatError(index.path, f"says tensor {tensor!r} is in {shard}, but "
                                                  + ("no shard holds it" if s is None else f"{s.file.path} does"))
        return sources

    @staticmethod
    def _adapter(config: dict[str, Any], registry: Any, path: str) -> Any:
        archs = config.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
        supported = sorted(f"{hf} ({a.name})" for a in registry for hf in getattr(a, "hf_architectures", ()))
        hint = f"supported: {', '.join(supported) or 'none installed'}"
        if arch is None:
            raise FormatError(path, "no \"architectures\" entry: cannot tell which architecture to convert",
                              hint=hint)
        found = [a for a in registry if arch in getattr(a, "hf_architectures", ())]
        if not found:
            raise FormatError(path, f"architecture {arch} is not supported by hf-to-gguf", hint=hint)
        if len(found) > 1:
            raise FormatError(path, f"architecture {arch} is claimed by several adapters: "
                                    f"{', '.join(a.name for a in found)}")
        return found[0]

    def _vocab(self, tok_file: WeightFile, config: dict[str, Any], beside: Any, files: list[WeightFile],
               options: dict[str, Any], ctx: TransformContext) -> Vocab:
        tok = _json_object(tok_file)
        tc_file = beside("tokenizer_config.json")
        gen_file = beside("generation_config.json")
        alt: Any = None
        jinja, cjson = beside("chat_template.jinja"), beside("chat_template.json")
        if jinja is not None:
            alt = _read_text(jinja)
            prefix = posixpath.join(posixpath.dirname(jinja.path), "additional_chat_templates", "")
            extra = sorted((f for f in files if f.path.startswith(prefix) and f.path.endswith(".jinja")
                            and "/" not in f.path[len(prefix):]), key=lambda f: f.path)
            if extra:  # as gguf-py: the default template and the named ones
                alt = [{"name": "default", "template": alt}] + [
                    {"name": posixpath.basename(f.path)[:-len(".jinja")], "template": _read_text(f)} for f in extra]
        elif cjson is not None:
            doc = _load_json(cjson)
            alt = doc.get("chat_template") if isinstance(doc, dict) else None
        sp_file, added_file = beside("tokenizer.model"), beside("added_tokens.json")
        pieces = None
        if sp_file is not None:
            with open(sp_file.source, "rb") as fh:
                data = fh.read()
            try:
                pieces = read_pieces(data)
            except ProtoError as exc:
                raise FormatError(sp_file.path, f"not a SentencePiece model ({exc})") from None
        added_json = _json_object(added_file) if added_file is not None else None
        n_vocab = config.get("vocab_size")
        pre = options.get("pre")
        return read_vocab(tok, n_vocab if isinstance(n_vocab, int) else None, label=tok_file.path,
                          tok_config=_json_object(tc_file) if tc_file else None, config=config,
                          gen_config=_json_object(gen_file) if gen_file else None, chat_template_alt=alt,
                          pre_override=str(pre) if pre else None, log=ctx.log, sp_pieces=pieces,
                          sp_label=sp_file.path if sp_file else "", added_tokens_json=added_json)

    @staticmethod
    def _metadata(plan: list[_Planned], config: dict[str, Any], options: dict[str, Any], beside: Any,
                  directory: str, ctx: TransformContext) -> list[tuple[str, Any]]:
        """The ``general.*`` keys after the architecture and type (:mod:`.metadata`)."""
        card: dict[str, Any] = {}
        readme = beside("README.md")
        if readme is not None:
            try:
                card = model_card(_read_text(readme), ctx.log, readme.path)
            except FormatError as exc:
                ctx.log(f"warning: hf-to-gguf: {exc.message}; its front matter is not used")
        gen_file = beside("generation_config.json")
        counts = parameter_counts([(p.gguf_name, p.shape) for p in plan])
        meta = read_metadata(card=card, config=config, gen_config=_json_object(gen_file) if gen_file else None,
                             directory_name=posixpath.basename(directory) or None, total_params=counts[0],
                             size_label_fallback=size_label(*counts) if counts[0] > 0 else None,
                             name_option=options.get("name") or None, log=ctx.log)
        return meta.keys(ctx.log)

    # -- planning

    @staticmethod
    def _plan(sources: dict[str, _Source], extras: list[tuple[str, Any]], adapter: Any, n_blocks: int,
              outtype: str, ctx: TransformContext) -> list[_Planned]:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        target = GGMLQuantizationType[outtype.upper()]
        plans: list[_Planned] = []
        names: dict[str, str] = {}

        def type_for(gguf_name: str, shape: tuple[int, ...]) -> Any:
            if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
                return GGMLQuantizationType.F32
            block = GGML_QUANT_SIZES[target][0]
            if shape[-1] % block:
                ctx.log(f"hf-to-gguf: {gguf_name}: rows of {shape[-1]} are not a multiple of {block}: F16 "
                        f"instead of {target.name}")
                return GGMLQuantizationType.F16
            return target

        def size(gtype: Any, shape: tuple[int, ...]) -> int:
            block, tsize = GGML_QUANT_SIZES[gtype]
            n = 1
            for d in shape:
                n *= d
            return n // block * tsize

        for i, (gname, array) in enumerate(extras):
            shape = tuple(int(d) for d in array.shape)
            gtype = type_for(gname, shape)
            plans.append(_Planned((0, i, gname), gname, shape, int(gtype), size(gtype, shape), array=array))
            names[gname] = "(generated)"
        for s in sources.values():
            try:
                gname = adapter.tensor_name(s.name, n_blocks)
            except KeyError:
                raise FormatError(s.file.path, f"tensor {s.name!r} has no GGUF name in architecture "
                                               f"{adapter.arch} (adapter {adapter.name})") from None
            if gname is None:
                continue
            if gname in names:
                raise FormatError(s.file.path, f"tensors {names[gname]!r} and {s.name!r} both map to {gname!r}")
            names[gname] = s.name
            gtype = type_for(gname, s.shape)
            order = (1, _LAYOUT_ORDER.index(s.dtype), s.name)  # as one safetensors file lays them out
            plans.append(_Planned(order, gname, s.shape, int(gtype), size(gtype, s.shape), source=s))
        plans.sort(key=lambda p: p.order)
        return plans

    @staticmethod
    def _keys(adapter: Any, general: list[tuple[str, Any]], hparams: list[tuple[str, Any]], vocab: Vocab,
              outtype: str) -> list[tuple[str, int, bytes]]:
        """Every key, in llama.cpp's order: architecture, type, the metadata, the adapter's
        keys with ``general.file_type`` where the adapter puts :data:`FILE_TYPE` (else
        after them), the quantization version, the tokenizer."""
        from gguf.constants import GGML_QUANT_VERSION, LlamaFileType

        ftype = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                 "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]
        items: list[tuple[str, Any]] = [("general.architecture", adapter.arch), ("general.type", "model")]
        items += general
        placed = False
        for key, value in hparams:
            if key == FILE_TYPE[0] and value is None and not placed:
                items.append(("general.file_type", int(ftype)))
                placed = True
                continue
            key = key.replace("{arch}", adapter.arch)
            if key.startswith(("general.", "tokenizer.")):
                raise ValueError(f"adapter {adapter.name} set {key}: general.* and tokenizer.* keys are the "
                                 f"converter's")
            items.append((key, value))
        if not placed:
            items.append(("general.file_type", int(ftype)))
        items.append(("general.quantization_version", GGML_QUANT_VERSION))
        items += vocab.keys()
        out: list[tuple[str, int, bytes]] = []
        seen: set[str] = set()
        for key, value in items:
            if key in seen:
                raise ValueError(f"GGUF key {key} set twice (adapter {adapter.name})")
            seen.add(key)
            vtype, raw = gguf_value(value, key)
            out.append((key, vtype, raw))
        return out

    # -- writing

    def _write(self, out: str, kvs: list[tuple[str, int, bytes]], plan: list[_Planned], adapter: Any,
               config: dict[str, Any], ctx: TransformContext) -> None:
        from modelbuild_plugins.gguf_format import DEFAULT_ALIGNMENT, write_header

        layout = write_header(out, kvs, [(p.gguf_name, p.shape, p.ggml_type, p.nbytes) for p in plan],
                              DEFAULT_ALIGNMENT)
        total = sum(_numel(p.shape) for p in plan)
        ctx.set_total(total, unit="params")
        fd = os.open(out, os.O_WRONLY)
        maps = _Maps()
        try:
            def one(item: tuple[_Planned, int]) -> int:
                # each chunk is reported as it is written (a big embedding is many chunks):
                # the bar moves during a tensor, not after it
                p, offset = item
                for chunk, n in _converted(p, adapter, config, maps):
                    _pwrite_all(fd, chunk, offset)
                    offset += len(chunk)
                    ctx.advance(n)
                return 0

            ctx.run_threads(one, list(zip(plan, layout.offsets)))
        finally:
            os.close(fd)
            maps.close()


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Maps:
    """Memory maps of the input files, opened once and shared by the writer threads."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._maps: dict[str, Any] = {}

    def get(self, path: str) -> Any:
        import mmap

        with self._lock:
            m = self._maps.get(path)
            if m is None:
                with open(path, "rb") as fh:
                    m = self._maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return m

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # a view is still alive somewhere: the GC closes it
                pass
        self._maps.clear()


def _array(s: _Source, maps: _Maps) -> Any:
    """The tensor's values as a read-only float32-compatible numpy array over a memory map."""
    import numpy as np

    name = _READABLE[s.dtype]
    if name == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(name).newbyteorder("<")
    if s.end == s.start:
        return np.zeros(s.shape, dtype)
    m = maps.get(s.file.source)
    return np.frombuffer(m, dtype=dtype, count=_numel(s.shape), offset=s.start).reshape(s.shape)


def _converted(p: _Planned, adapter: Any, config: dict[str, Any], maps: _Maps) -> Iterator[tuple[bytes, int]]:
    """The tensor's GGUF bytes, in chunks of rows: (bytes, elements)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if p.source is not None:
        values = _array(p.source, maps)
        transformed = adapter.transform(p.source.name, values, config)
        if transformed is not values:
            values = np.asarray(transformed)
            if tuple(values.shape) != p.shape:
                raise ValueError(f"adapter {adapter.name} changed the shape of {p.source.name} "
                                 f"from {list(p.shape)} to {list(values.shape)}")
    else:
        values = np.asarray(p.array)
    gtype = GGMLQuantizationType(p.ggml_type)
    cols = p.shape[-1] if p.shape else 1
    rows = _numel(p.shape) // cols if cols else 0
    flat = values.reshape(rows, cols) if p.shape else values.reshape(1, 1)
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for r in range(0, rows, step):
        block = np.asarray(flat[r:r + step], dtype=np.float32)
        if gtype == GGMLQuantizationType.F32:
            data = block.astype("<f4", copy=False)
        elif gtype == GGMLQuantizationType.F16:
            data = block.astype("<f2")
        else:
            data = quantize(block, gtype)
        yield np.ascontiguousarray(data).reshape(-1).view(np.uint8).data, block.size
