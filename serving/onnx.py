"""The ONNX Runtime predictor for edge devices, without TensorFlow.

`OnnxPredictor(path).predict(x)` loads `model.onnx` from a version directory
and returns the outputs of the `serving_default` signature as NumPy arrays.
This module, `dgc_tf.serving`, `dgc_tf.export` and the predictor's module
import only NumPy and onnxruntime, so the predictor runs where TensorFlow is
not installed.
"""

from dgc_tf.export.onnx_predictor import OnnxPredictor

__all__ = ["OnnxPredictor"]
