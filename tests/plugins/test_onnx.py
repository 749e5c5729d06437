"""The onnx format plugin: real silero-vad models, external data, bad input, quantization."""

from __future__ import annotations

import builtins
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelbuild_plugins import onnx_format
from modelbuild_plugins.onnx_format import OnnxFormat
from onnx import TensorProto, helper, numpy_helper

from modelbuild.testing import plugin_host
from modelbuild.weights import FormatError

FMT = OnnxFormat()
OPSET = [helper.make_opsetid("", 21)]


# -- helpers -------------------------------------------------------------------------------

def silero_data() -> Path:
    """silero-vad's data directory, found without importing the package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("silero-vad test data is not installed: run scripts/fetch-test-data")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data / "silero_vad.onnx").is_file():
        pytest.fail(f"{data} lacks silero_vad.onnx: run scripts/fetch-test-data")
    return data


def independent_count(model: onnx.ModelProto) -> tuple[int, dict[str, int], int]:
    """(all parameters, per numpy dtype, initializer parameters) from the decoded arrays.

    Walks the graphs its own way and sizes tensors by decoding them (not by their dims):
    initializers and tensor attributes (Constant values) of every graph and subgraph.
    """
    per_dtype: dict[str, int] = {}
    init = 0

    def add(array: np.ndarray) -> None:
        per_dtype[str(array.dtype)] = per_dtype.get(str(array.dtype), 0) + array.size

    def graph(g: onnx.GraphProto) -> None:
        nonlocal init
        for t in g.initializer:
            a = numpy_helper.to_array(t)
            add(a)
            init += a.size
        for node in g.node:
            for attr in node.attribute:
                value = helper.get_attribute_value(attr)
                if isinstance(value, onnx.TensorProto):
                    add(numpy_helper.to_array(value))
                elif isinstance(value, onnx.GraphProto):
                    graph(value)
                elif isinstance(value, list) and value and isinstance(value[0], onnx.GraphProto):
                    for sub in value:
                        graph(sub)

    graph(model.graph)
    return sum(per_dtype.values()), per_dtype, init


def save_with_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def small_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = x @ W + b with W float32 [4, 8] and b float16 [8] (cast): 40 parameters."""
    rng = np.random.default_rng(0)
    arrays = {"W": rng.standard_normal((4, 8)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float16)}
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["xw", "b32"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="tests", producer_version="1.0")
    return model, arrays


@pytest.fixture
def external(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    model, arrays = small_model()
    save_with_external(model, tmp_path / "model.onnx")
    return tmp_path / "model.onnx", tmp_path / "weights.bin", arrays


def write_proto(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# -- registration --------------------------------------------------------------------------

def test_registered_under_the_onnx_plugin():
    host = plugin_host()
    assert "onnx" in host.formats
    assert host.formats.owner("onnx") == "onnx"
    handler = host.formats.get("onnx")
    assert (handler.name, handler.version, handler.extensions) == ("onnx", "1", (".onnx",))
    assert host.format_for_path("sub/model.onnx") is handler


def test_cli_lists_format_onnx(mb):
    run = mb("plugins")
    assert run.rc == 0, run.err
    (line,) = [l for l in run.out.splitlines() if l.split()[:1] == ["onnx"]]
    assert "format:onnx" in line


def test_module_does_not_import_onnx_or_numpy():
    import subprocess
    import sys

    code = ("import sys, modelbuild_plugins.onnx_format; "
            "print(sorted(m for m in ('onnx', 'numpy', 'google.protobuf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- real models ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_half.onnx"])
def test_silero_counts_match_an_independent_count(name, weight_file):
    path = silero_data() / name
    assert FMT.detect(str(path))
    info = FMT.read_info([weight_file(path)], None)
    model = onnx.load(str(path))
    total, per_dtype, init = independent_count(model)
    assert info.format == "onnx"
    assert info.param_count == total
    assert info.dtype_params == per_dtype  # numpy's names equal ModelPack's for float32/int64/float16
    assert info.extra["param_sources"]["initializer"] == init
    assert info.extra["param_sources"]["sparse_initializer"] == 0
    assert info.extra["opsets"] == {"ai.onnx": 16}
    assert info.extra["ir_version"] == model.ir_version == 8
    assert info.extra["external_data"] == []
    assert info.quantization is None
    assert (info.architecture, info.family) == (None, None)
    assert info.precision.split(",")[0] == "float32"


def test_silero_vad_onnx_keeps_its_weights_in_constant_nodes(weight_file):
    """No initializer at all: the weights are Constant nodes inside If branches (8k and 16k)."""
    path = silero_data() / "silero_vad.onnx"
    info = FMT.read_info([weight_file(path, "silero_vad.onnx")], None)
    assert info.extra["param_sources"]["initializer"] == 0
    assert info.param_count == info.extra["param_sources"]["constant"] > 500_000
    assert info.param_size == "545.6K"
    assert info.extra["producer"] == {"name": "spox", "version": ""}
    assert [i["name"] for i in info.extra["inputs"]] == ["input", "state", "sr"]
    assert [o["name"] for o in info.extra["outputs"]] == ["output", "stateN"]
    assert info.extra["inputs"][1] == {"name": "state", "dtype": "float32", "shape": [2, None, 128]}
    assert info.extra["inputs"][2] == {"name": "sr", "dtype": "int64", "shape": []}


def test_silero_half_inputs_outputs_and_producer(weight_file):
    path = silero_data() / "silero_vad_half.onnx"
    info = FMT.read_info([weight_file(path, "silero_vad_half.onnx")], {"model_type": "silero_vad"})
    assert info.extra["producer"] == {"name": "pytorch", "version": "2.3.1"}
    assert info.extra["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": ["batch", "sequence"]},
        {"name": "state", "dtype": "float32", "shape": [2, "batch", 128]},
    ]
    assert [o["name"] for o in info.extra["outputs"]] == ["output", "stateN"]
    assert info.family == "silero_vad" and info.architecture is None


@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_half.onnx"])
def test_silero_iter_tensors_adds_up_to_param_count(name, weight_file):
    path = silero_data() / name
    info = FMT.read_info([weight_file(path)], None)
    total = 0
    for tname, dtype, shape, load in FMT.iter_tensors(str(path)):
        array = load()
        assert array.shape == shape, tname
        assert dtype == str(array.dtype), tname
        total += array.size
    assert total == info.param_count


# -- external data -------------------------------------------------------------------------

def test_external_data_counted_from_dims_without_reading_the_data(external, monkeypatch, weight_file):
    model_path, data_path, _ = external
    files = [weight_file(model_path, "model.onnx"), weight_file(data_path, "weights.bin", kind="model")]
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    info = FMT.read_info(files, None)
    monkeypatch.undo()
    assert str(model_path) in opened  # the spy sees what read_info opens
    assert str(data_path) not in opened
    assert info.param_count == 40
    assert info.dtype_params == {"float32": 32, "float16": 8}
    assert info.precision == "float32,float16"
    assert info.extra["external_data"] == ["weights.bin"]
    assert info.extra["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert info.extra["opsets"] == {"ai.onnx": 21}
    assert info.quantization is None

    # The same answer when the data file holds only zeros of the same size.
    data_path.write_bytes(b"\0" * data_path.stat().st_size)
    again = FMT.read_info([weight_file(model_path, "model.onnx"),
                           weight_file(data_path, "weights.bin", kind="model")], None)
    assert (again.param_count, again.dtype_params, again.extra) == (info.param_count, info.dtype_params, info.extra)


def test_external_data_resolved_by_artifact_path_not_beside_the_blob(external, tmp_path, weight_file):
    """Store blobs have no neighbours: the data file is found through the model set."""
    model_path, data_path, _ = external
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copy(model_path, blobs / "aaaa")
    shutil.copy(data_path, blobs / "bbbb")
    files = [weight_file(blobs / "aaaa", "onnx/model.onnx"),
             weight_file(blobs / "bbbb", "onnx/weights.bin", kind="model")]
    info = FMT.read_info(files, None)
    assert info.param_count == 40
    assert info.extra["external_data"] == ["weights.bin"]  # relative to the .onnx file


def test_iter_tensors_loads_external_tensors(external, tmp_path, weight_file):
    model_path, data_path, arrays = external
    for tensors in (
        list(FMT.iter_tensors(str(model_path))),  # beside the source
        list(FMT.iter_tensors(weight_file(model_path, "model.onnx"),
                              files=[weight_file(model_path, "model.onnx"),
                                     weight_file(data_path, "weights.bin", kind="model")])),
    ):
        assert [(n, d, s) for n, d, s, _ in tensors] == [("W", "float32", (4, 8)), ("b", "float16", (8,))]
        for name, _, _, load in tensors:
            np.testing.assert_array_equal(np.asarray(load()), arrays[name])


def test_missing_external_data_file_names_the_onnx_file(external, weight_file):
    model_path, _, _ = external
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(model_path, "model.onnx")], None)
    assert err.value.file == "model.onnx"
    assert "weights.bin" in str(err.value) and "not in the model set" in str(err.value)
    assert "MODEL" in (err.value.hint or "")


def test_external_data_file_in_the_set_but_gone_from_disk(external, weight_file):
    model_path, data_path, _ = external
    files = [weight_file(model_path, "model.onnx"), weight_file(data_path, "weights.bin", kind="model")]
    data_path.unlink()
    with pytest.raises(FormatError) as err:
        FMT.read_info(files, None)
    assert err.value.file == "model.onnx" and "does not exist" in str(err.value)


def test_external_data_file_too_short(external, weight_file):
    model_path, data_path, _ = external
    data_path.write_bytes(data_path.read_bytes()[:-4])
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(model_path, "model.onnx"),
                       weight_file(data_path, "weights.bin", kind="model")], None)
    assert err.value.file == "model.onnx" and "weights.bin" in str(err.value)


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/weights.bin", "C:\\w.bin"])
def test_external_location_outside_the_model_directory(external, tmp_path, location, weight_file):
    model_path, data_path, _ = external
    model = onnx.load(str(model_path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    bad = write_proto(model, tmp_path / "bad.onnx")
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(bad, "bad.onnx"), weight_file(data_path, "weights.bin", kind="model")], None)
    assert err.value.file == "bad.onnx" and "outside the model's directory" in str(err.value)
    _, _, _, load = next(FMT.iter_tensors(str(bad)))  # lazily: the location is checked on load
    with pytest.raises(FormatError, match="outside the model's directory"):
        load()


def test_external_data_in_a_subdirectory(tmp_path, weight_file):
    model, _ = small_model()
    (tmp_path / "data").mkdir()
    save_with_external(model, tmp_path / "model.onnx", location="data/w.bin")
    files = [weight_file(tmp_path / "model.onnx", "m/model.onnx"),
             weight_file(tmp_path / "data" / "w.bin", "m/data/w.bin", kind="model")]
    assert FMT.read_info(files, None).extra["external_data"] == ["data/w.bin"]
    with pytest.raises(FormatError, match="not in the model set"):
        FMT.read_info([files[0], weight_file(tmp_path / "data" / "w.bin", "m/w.bin", kind="model")], None)


# -- bad input -----------------------------------------------------------------------------

def test_garbage_bytes(tmp_path, weight_file):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf at all\xff\xfe" * 10)
    assert not FMT.detect(str(path))
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(path, "garbage.onnx")], None)
    assert err.value.file == "garbage.onnx" and "not an ONNX model" in str(err.value)
    with pytest.raises(FormatError):
        list(FMT.iter_tensors(str(path)))


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_model(tmp_path, keep, weight_file):
    data = (silero_data() / "silero_vad_half.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    assert FMT.detect(str(path))  # the start is fine: detect is cheap, read_info is the check
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(path, "cut.onnx")], None)
    assert err.value.file == "cut.onnx"


def test_empty_file_and_model_without_graph(tmp_path, weight_file):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    no_graph = write_proto(helper.make_model(helper.make_graph([], "g", [], []), opset_imports=OPSET),
                           tmp_path / "nograph.onnx")
    # Cut right after the opset import: a valid protobuf that lost its graph.
    model = onnx.ModelProto(ir_version=10)
    model.opset_import.extend(OPSET)
    header_only = write_proto(model, tmp_path / "header.onnx")
    assert FMT.read_info([weight_file(no_graph, "nograph.onnx")], None).param_count == 0  # an empty graph is a graph
    for path in (empty, header_only):
        with pytest.raises(FormatError) as err:
            FMT.read_info([weight_file(path)], None)
        assert err.value.file == path.name


def test_detect(tmp_path, external):
    model_path, data_path, _ = external
    assert FMT.detect(str(model_path))
    assert not FMT.detect(str(data_path))  # not .onnx
    renamed = tmp_path / "model.bin"
    shutil.copy(model_path, renamed)
    assert not FMT.detect(str(renamed))
    assert not FMT.detect(str(tmp_path / "missing.onnx"))
    assert not FMT.detect(str(tmp_path))


# -- quantization --------------------------------------------------------------------------

def qdq_weight_model() -> onnx.ModelProto:
    """A weight stored as int8 and dequantized: the QDQ form of weight-only quantization."""
    w = numpy_helper.from_array(np.arange(-16, 16, dtype=np.int8).reshape(4, 8), "w_q")
    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float32), "w_scale")
    zp = numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zp")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              initializer=[w, scale, zp])
    return helper.make_model(graph, opset_imports=OPSET)


def test_quantized_qdq_int8(tmp_path, weight_file):
    path = write_proto(qdq_weight_model(), tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    info = FMT.read_info([weight_file(path, "q.onnx")], None)
    assert info.quantization == "int8"
    assert info.dtype_params == {"int8": 33, "float32": 1}
    assert info.precision == "int8,float32"


def test_quantized_activation_qdq_uint8(tmp_path, weight_file):
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], initializer=[scale, zp])
    path = write_proto(helper.make_model(graph, opset_imports=OPSET), tmp_path / "act.onnx")
    assert FMT.read_info([weight_file(path, "act.onnx")], None).quantization == "uint8"


def test_quantized_qlinear_and_matmulnbits(tmp_path, weight_file):
    a = numpy_helper.from_array(np.ones((4, 4), dtype=np.uint8), "b_q")
    inputs = [numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
              numpy_helper.from_array(np.array(0, dtype=np.uint8), "z")]
    qlinear = helper.make_node("QLinearMatMul", ["x", "s", "z", "b_q", "s", "z", "s", "z"], ["y"])
    graph = helper.make_graph([qlinear], "ql", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4])], initializer=[a, *inputs])
    path = write_proto(helper.make_model(graph, opset_imports=OPSET), tmp_path / "ql.onnx")
    assert FMT.read_info([weight_file(path, "ql.onnx")], None).quantization == "uint8"

    nbits = helper.make_node("MatMulNBits", ["x", "b_q", "s"], ["y"], domain="com.microsoft", K=8, N=4, bits=4,
                             block_size=32)
    graph = helper.make_graph([nbits], "nb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[a, inputs[0]])
    model = helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.microsoft", 1)])
    path = write_proto(model, tmp_path / "nb.onnx")
    info = FMT.read_info([weight_file(path, "nb.onnx")], None)
    assert info.quantization == "int4"
    assert info.extra["opsets"] == {"ai.onnx": 21, "com.microsoft": 1}


def test_float_models_are_not_quantized(tmp_path, weight_file):
    model, _ = small_model()
    path = write_proto(model, tmp_path / "f.onnx")
    assert FMT.read_info([weight_file(path, "f.onnx")], None).quantization is None


# -- other tensor places, several models, write --------------------------------------------

def test_sparse_initializer_and_constant_literals(tmp_path, weight_file):
    values = numpy_helper.from_array(np.array([1.5, -2.0, 3.0], dtype=np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 5, 11], dtype=np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(values, indices, [3, 4])
    nodes = [helper.make_node("Constant", [], ["shape"], value_ints=[3, 4]),
             helper.make_node("Constant", [], ["one"], value_float=1.0),
             helper.make_node("Constant", [], ["names"], value_strings=["a", "b"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              sparse_initializer=[sparse])
    path = write_proto(helper.make_model(graph, opset_imports=OPSET), tmp_path / "sparse.onnx")
    info = FMT.read_info([weight_file(path, "sparse.onnx")], None)
    # 12 dense sparse parameters, 2 ints, 1 float; strings are not parameters.
    assert info.param_count == 15
    assert info.dtype_params == {"float32": 13, "int64": 2}
    assert info.extra["param_sources"] == {"initializer": 0, "sparse_initializer": 12, "constant": 3}
    tensors = {name: (dtype, shape, load()) for name, dtype, shape, load in FMT.iter_tensors(str(path))}
    assert set(tensors) == {"sp", "shape", "one"}
    dense = np.zeros(12, dtype=np.float32)
    dense[[0, 5, 11]] = [1.5, -2.0, 3.0]
    np.testing.assert_array_equal(tensors["sp"][2], dense.reshape(3, 4))
    np.testing.assert_array_equal(tensors["shape"][2], [3, 4])
    assert tensors["one"][:2] == ("float32", ())


def test_several_models_are_summed(tmp_path, external, weight_file):
    model_path, data_path, _ = external
    half = silero_data() / "silero_vad_half.onnx"
    files = [weight_file(model_path, "decoder.onnx"), weight_file(data_path, "weights.bin", kind="model"),
             weight_file(half, "encoder.onnx")]
    info = FMT.read_info(files, None)
    alone = FMT.read_info([weight_file(half, "encoder.onnx")], None)
    assert info.param_count == alone.param_count + 40
    assert set(info.extra) == {"models"}
    assert list(info.extra["models"]) == ["decoder.onnx", "encoder.onnx"]
    assert info.extra["models"]["decoder.onnx"]["external_data"] == ["weights.bin"]


def test_no_onnx_file_in_the_set(tmp_path, external, weight_file):
    _, data_path, _ = external
    with pytest.raises(FormatError) as err:
        FMT.read_info([weight_file(data_path, "weights.bin", kind="model")], None)
    assert err.value.file == "weights.bin"
    assert FMT.read_info([], None).param_count == 0


def test_write_is_not_supported(tmp_path):
    assert OnnxFormat.writable is False
    with pytest.raises(NotImplementedError, match="cannot write"):
        FMT.write(str(tmp_path / "out.onnx"), iter([("w", np.zeros(2, np.float32))]), {})


def test_dtype_names_follow_modelpack():
    names = {code: onnx_format._dtype_name(getattr(TensorProto, code)) for code in (
        "FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "UINT8", "INT32", "INT64", "FLOAT8E4M3FN",
        "FLOAT8E5M2", "BOOL", "INT4", "UINT4", "FLOAT4E2M1")}
    assert names == {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64",
                     "INT8": "int8", "UINT8": "uint8", "INT32": "int32", "INT64": "int64",
                     "FLOAT8E4M3FN": "float8_e4m3", "FLOAT8E5M2": "float8_e5m2", "BOOL": "bool",
                     "INT4": "int4", "UINT4": "uint4", "FLOAT4E2M1": "float4_e2m1"}
    assert onnx_format._dtype_name(999) == "onnx_type_999"
