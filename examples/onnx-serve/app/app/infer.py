"""Model loading and prediction, shared by `--check` and the HTTP server."""

import contextlib
import ctypes
import os
import sys
from typing import Any

import numpy as np
import onnxruntime as ort

N_FEATURES = 4  # Must match the input shape [None, 4] built by make_model.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# What the CUDA provider loads, the driver's libcuda last (the host's, injected at run time).
CUDA_LIBRARIES = ["libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12", "libcudnn.so.9",
                  "libcufft.so.11", "libcurand.so.10", "libcuda.so.1"]  # fmt: skip
# The GPU image's one switch for "no GPU here, run anyway" (the start-up guard reads it too).
ALLOW_CPU_ENV = "IMAGEBUILD_ALLOW_NO_GPU"


class ProviderError(RuntimeError):
    pass


def _missing_library() -> str:
    for name in CUDA_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            return f"cannot load {name}: {exc}"
    return "its libraries load, but no usable CUDA device was found"


def load_session(model_path: str, provider: str = "cpu") -> ort.InferenceSession:
    """A session on `provider`; a GPU one never falls back to the CPU silently: without the
    override it fails, naming the provider and what it lacks."""
    want = PROVIDERS[provider]
    if want == PROVIDERS["cpu"]:
        return ort.InferenceSession(model_path, providers=[want])
    available = ort.get_available_providers()
    if want not in available:
        problem = f"this onnxruntime build has no {want} ({', '.join(available)})"
    else:
        # onnxruntime prints its provider error and CPU retry on stdout: keep stdout the app's.
        with contextlib.redirect_stdout(sys.stderr):
            session = ort.InferenceSession(model_path, providers=[want])
        if session.get_providers()[0] == want:
            return session
        problem = f"{want} could not start: {_missing_library()}"
    if os.environ.get(ALLOW_CPU_ENV) != "1":
        raise ProviderError(f"{problem}; refusing to run on the CPU (set {ALLOW_CPU_ENV}=1 to)")
    print(f"onnx-serve: warning: {problem}; {ALLOW_CPU_ENV}=1: running on the CPU",
          file=sys.stderr)  # fmt: skip
    return ort.InferenceSession(model_path, providers=[PROVIDERS["cpu"]])


def predict(session: ort.InferenceSession, x: Any) -> list[list[float]]:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
        raise ValueError(f"x must have shape [n, {N_FEATURES}], got {list(arr.shape)}")
    (y,) = session.run(["y"], {"x": arr})
    return [[round(float(v), 4) for v in row] for row in y]
