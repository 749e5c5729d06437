"""An MLServer runtime that serves one ONNX file with ONNX Runtime (the ``onnxruntime``
engine's server side).

MLServer has no ONNX runtime of its own, so the engine names this class as the model's
``implementation`` in ``model-settings.json``. It is loaded in two ways:

* by ``modelbuild run``, as ``modelbuild_plugins.engines.mlserver_onnx.OnnxRuntimeModel``
  from the installed package;
* in a container, as ``mlserver_onnx.OnnxRuntimeModel`` from a copy of this file mounted
  beside ``model-settings.json``: MLServer puts that folder on ``sys.path`` while it imports
  the implementation (mlserver/settings.py, ``ModelSettings.implementation``).

So this module imports nothing from modelbuild, and keeps to Python 3.10 (the
``seldonio/mlserver`` images' interpreter). What it needs is MLServer, ONNX Runtime and
numpy.

What it does: ``load()`` opens an ``InferenceSession`` on the file named by
``parameters.uri`` with the providers and options in ``parameters.extra``, and reports the
session's inputs and outputs as the model's metadata (names, V2 datatypes, shapes with -1
for a dimension the graph leaves open), so ``GET /v2/models/{name}`` tells a client what to
send. ``predict()`` decodes each V2 input with MLServer's ``NumpyCodec``, checks it against
the graph (name, datatype: nothing is converted silently), runs the session off the event
loop, and returns every output (or those the request names) with its own datatype and
shape.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, ResponseOutput

#: ONNX Runtime's tensor type names → Open Inference Protocol datatypes. Types the protocol
#: cannot carry as numbers (strings, bfloat16, float8, sequences, maps) are refused at load.
ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}

#: ``parameters.extra.optimization`` → ONNX Runtime's graph optimisation levels.
OPTIMIZATION = {
    "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeModel(MLModel):
    """One ONNX graph behind MLServer's V2 endpoints: see the module docstring."""

    async def load(self) -> bool:
        path = self._model_path()
        extra = self._extra()
        providers = list(extra.get("providers") or ["CPUExecutionProvider"])
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise MLServerError(f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                                "a cuda variant needs the onnxruntime-gpu package")
        self._session = ort.InferenceSession(path, sess_options=_session_options(extra), providers=providers)
        self._input_types = {arg.name: _v2_type(arg, "input") for arg in self._session.get_inputs()}
        self._output_types = {arg.name: _v2_type(arg, "output") for arg in self._session.get_outputs()}
        self.inputs = [_metadata(arg, self._input_types[arg.name]) for arg in self._session.get_inputs()]
        self.outputs = [_metadata(arg, self._output_types[arg.name]) for arg in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = self._feeds(payload)
        names = [o.name for o in payload.outputs] if payload.outputs else list(self._output_types)
        unknown = [n for n in names if n not in self._output_types]
        if unknown:
            raise InferenceError(f"model {self.name} has no output {', '.join(unknown)} "
                                 f"(its outputs: {', '.join(self._output_types)})")
        try:
            results = await asyncio.to_thread(self._session.run, names, feeds)
        except Exception as exc:  # ONNX Runtime's own errors (a wrong shape): the client's to fix
            raise InferenceError(f"ONNX Runtime could not run model {self.name}: {exc}") from exc
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[_encode(name, np.asarray(array)) for name, array in zip(names, results)])

    # -- helpers -----------------------------------------------------------------------------

    def _model_path(self) -> str:
        """``parameters.uri`` as a path (no URL parsing: a path may hold ``#`` or ``?``),
        relative to the folder of ``model-settings.json`` when it is relative."""
        uri = self._settings.parameters.uri if self._settings.parameters else None
        if not uri:
            raise MLServerError(f"model {self.name}: model-settings.json names no parameters.uri")
        source = getattr(self._settings, "_source", None)
        if not os.path.isabs(uri) and source:
            uri = os.path.join(os.path.dirname(source), uri)
        if not os.path.isfile(uri):
            raise MLServerError(f"model {self.name}: {uri} is not a file")
        return uri

    def _extra(self) -> Dict[str, Any]:
        params = self._settings.parameters
        return dict((params.extra if params is not None else None) or {})

    def _feeds(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        feeds: Dict[str, np.ndarray] = {}
        for request_input in payload.inputs:
            wanted = self._input_types.get(request_input.name)
            if wanted is None:
                raise InferenceError(f"model {self.name} has no input {request_input.name} "
                                     f"(its inputs: {', '.join(self._input_types)})")
            if request_input.datatype != wanted:
                raise InferenceError(f"input {request_input.name} is {request_input.datatype}; "
                                     f"model {self.name} takes {wanted}")
            try:
                feeds[request_input.name] = NumpyCodec.decode_input(request_input)
            except ValueError as exc:  # data that does not fill its shape
                raise InferenceError(f"input {request_input.name}: {exc}") from exc
        absent = [n for n in self._input_types if n not in feeds]
        if absent:
            raise InferenceError(f"model {self.name} needs input {', '.join(absent)}")
        return feeds


def _session_options(extra: Dict[str, Any]) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if extra.get("threads") is not None:
        options.intra_op_num_threads = int(extra["threads"])
    if extra.get("optimization") is not None:
        level = OPTIMIZATION.get(str(extra["optimization"]))
        if level is None:
            raise MLServerError(f"optimization {extra['optimization']}: one of {', '.join(OPTIMIZATION)}")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return options


def _v2_type(arg: Any, role: str) -> str:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        raise MLServerError(f"{role} {arg.name} is {arg.type}, which this runtime does not carry over the "
                            f"Open Inference Protocol (numbers and booleans only)")
    return datatype


def _metadata(arg: Any, datatype: str) -> MetadataTensor:
    """A graph input or output as V2 metadata: a dimension the graph names (``batch``) or
    leaves unknown is -1, as KServe's protocol writes a variable dimension."""
    shape: List[int] = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return MetadataTensor(name=arg.name, datatype=datatype, shape=shape)


def _encode(name: str, array: np.ndarray) -> ResponseOutput:
    """*array* as a V2 output of its own shape (NumpyCodec would make a 1-D ``[N]`` into
    ``[N, 1]``: mlserver/codecs/utils.py ``inject_batch_dimension``)."""
    output = NumpyCodec.encode_output(name, array)
    output.shape = list(array.shape)
    output.parameters = None
    return output
