"""dgc-tf: Deep Goal-Oriented Clustering with TensorFlow and Keras.

Importing the package is cheap: the TensorFlow-backed names (`DGC`, the
layers) load their modules on first use, so `dgc_tf.metrics`, `dgc_tf.data`
and the ONNX predictor work without importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY_NAMES = {
    "DGC": "dgc_tf.model",
    "Autoencoder": "dgc_tf.model",
    "Encoder": "dgc_tf.encoder",
    "Decoder": "dgc_tf.decoder",
    "MixturePrior": "dgc_tf.prior",
    "ResponseHeads": "dgc_tf.heads",
    "fit_with_restarts": "dgc_tf.restarts",
    "PriorRefit": "dgc_tf.callbacks",
    "clustering_accuracy": "dgc_tf.metrics",
    "clustering_scores": "dgc_tf.metrics",
}

__all__ = sorted(_LAZY_NAMES) + ["__version__"]


def __getattr__(name):
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dgc_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
