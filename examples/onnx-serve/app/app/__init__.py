"""onnx-serve: tiny example app serving an ONNX model with FastAPI."""

__version__ = "0.1.0"
