"""Model loading and prediction, shared by `--check` and the HTTP server."""

from typing import Any

import numpy as np
import onnxruntime as ort

N_FEATURES = 4  # Must match the input shape [None, 4] built by make_model.


def load_session(model_path: str) -> ort.InferenceSession:
    # CPU provider only: the example image has no GPU runtime.
    return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def predict(session: ort.InferenceSession, x: Any) -> list[list[float]]:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
        raise ValueError(f"x must have shape [n, {N_FEATURES}], got {list(arr.shape)}")
    (y,) = session.run(["y"], {"x": arr})
    return [[round(float(v), 4) for v in row] for row in y]
