"""Build a tiny deterministic ONNX model: y = x @ W + b.

Usage: python -m app.make_model OUT.onnx
Runs at image build time, so it must be offline and byte-for-byte reproducible.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__

# Pinned explicitly (not onnx's latest defaults) so any recent onnxruntime loads it.
OPSET = 13
IR_VERSION = 8

W = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], dtype=np.float32)
B = np.array([0.5, -1.0], dtype=np.float32)


def build_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        name="linear",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnx-serve",
        producer_version=__version__,
    )
    onnx.checker.check_model(model)
    return model


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m app.make_model OUT.onnx", file=sys.stderr)
        return 2
    # Deterministic serialization: no map fields/timestamps in this model.
    data = build_model().SerializeToString(deterministic=True)
    with open(argv[0], "wb") as f:
        f.write(data)
    print(f"wrote {argv[0]} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
