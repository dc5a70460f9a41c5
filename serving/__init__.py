"""Servers and clients for exported DGC models.

- `dgc_tf.serving.server`: `ModelServer` and `serve`, a REST and gRPC server
  with the wire formats of TF Serving, for every model under a base directory.
- `dgc_tf.serving.client`: `RestClient` and `GrpcClient`, which cast inputs to
  the dtypes of the served signature.
- `dgc_tf.serving.onnx`: `OnnxPredictor`, which runs `model.onnx` with ONNX
  Runtime and imports only NumPy and onnxruntime.

Names load their modules on first use, so importing `dgc_tf.serving.onnx`
does not import TensorFlow.
"""

import importlib

_LAZY_NAMES = {
    "ModelServer": "dgc_tf.serving.server",
    "serve": "dgc_tf.serving.server",
    "RestClient": "dgc_tf.serving.client",
    "GrpcClient": "dgc_tf.serving.client",
    "ServingError": "dgc_tf.serving.errors",
    "OnnxPredictor": "dgc_tf.serving.onnx",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name):
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dgc_tf.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
