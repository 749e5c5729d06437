#!/usr/bin/env python3
"""Generate the tiny ONNX model bundled as modelbuild's ONNX example.

Why this exists
---------------
The ``onnx`` example (``Modelfile.examples/onnx``) and its test need a real ONNX model that
the repository ships, with no network: one that ``onnx.checker`` accepts and that runs. The
smallest published ONNX models are still far too big to commit, so this script *builds*
one with the ``onnx`` package's helper API: a two-layer perceptron classifying a vector of
16 features into 4 classes,

    features [batch, 16] → Gemm (16×64) → Relu → Gemm (64×4) → Softmax → probabilities [batch, 4]

1,348 float32 parameters (``paramSize`` 1.3K), about 6 KB. It is useless as a classifier,
but structurally it is the real thing: initializers, a symbolic batch dimension, a pinned
opset.

Everything is deterministic, so running the script twice, or with another ``onnx`` or
``numpy`` release, yields byte-identical files: the weights come from an integer hash of
their index (no random generator whose stream could change), the IR version, opset and
producer are pinned, and ``config.json`` is written with ``indent=2, sort_keys=True`` and a
trailing newline. Regenerate with::

    python scripts/make_tiny_onnx.py            # -> Modelfile.examples/onnx/model
    python scripts/make_tiny_onnx.py OUT_DIR
    python scripts/make_tiny_onnx.py --check    # exit 1 if the committed files differ

Requires ``onnx`` and ``numpy`` (both modelbuild dependencies).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "Modelfile.examples" / "onnx" / "model"

FEATURES, HIDDEN, CLASSES = 16, 64, 4
IR_VERSION = 8  # ONNX 1.10+; pinned so a newer onnx package writes the same bytes
OPSET = 17
PRODUCER = ("modelbuild make_tiny_onnx.py", "1")

CONFIG = {
    "architecture": "mlp",
    "family": "tiny-mlp",
    "model_type": "tiny-mlp",
    "num_features": FEATURES,
    "hidden_size": HIDDEN,
    "num_labels": CLASSES,
    "id2label": {"0": "red", "1": "green", "2": "blue", "3": "other"},
}


def weights(name: str, shape: tuple[int, ...], scale: float) -> "object":
    """A float32 array in [-scale, scale), from Knuth's multiplicative hash of each index
    (salted by *name*): the same values on every machine and every numpy release."""
    import numpy as np

    count = 1
    for d in shape:
        count *= d
    salt = sum(name.encode()) * 7919
    values = [(((i + salt) * 2654435761) % 2**32) / 2**32 - 0.5 for i in range(count)]
    return (np.array(values, dtype=np.float64) * 2 * scale).astype(np.float32).reshape(shape)


def build_model() -> "object":
    """The ModelProto, checked by onnx.checker."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    init = [
        numpy_helper.from_array(weights("fc1.weight", (FEATURES, HIDDEN), 0.25), "fc1.weight"),
        numpy_helper.from_array(weights("fc1.bias", (HIDDEN,), 0.05), "fc1.bias"),
        numpy_helper.from_array(weights("fc2.weight", (HIDDEN, CLASSES), 0.125), "fc2.weight"),
        numpy_helper.from_array(weights("fc2.bias", (CLASSES,), 0.05), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["relu"], name="relu"),
        helper.make_node("Gemm", ["relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=init,
        doc_string="A 16-feature, 4-class perceptron with fixed pseudo-random weights, for testing model tooling.",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER[0], producer_version=PRODUCER[1], model_version=1)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"license": "Apache-2.0", "labels": "red,green,blue,other"})
    onnx.checker.check_model(model, full_check=True)
    return model


def contents() -> dict[str, bytes]:
    """File name → bytes, exactly as written."""
    model = build_model()
    config = json.dumps(CONFIG, indent=2, sort_keys=True) + "\n"
    return {"model.onnx": model.SerializeToString(deterministic=True), "config.json": config.encode()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT.relative_to(REPO_ROOT)} in the repository)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files in OUT_DIR differ from what would be written")
    args = parser.parse_args(argv)
    files = contents()
    if args.check:
        stale = [name for name, data in files.items()
                 if not (args.out_dir / name).is_file() or (args.out_dir / name).read_bytes() != data]
        for name in stale:
            print(f"{args.out_dir / name}: differs from what {Path(__file__).name} writes", file=sys.stderr)
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = args.out_dir / name
        path.write_bytes(data)
        print(f"{len(data):>10}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
