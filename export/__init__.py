"""SavedModel and ONNX export of DGC models, and predictors for the exported files.

`export_model(model, base_dir, name)` writes `<base_dir>/<name>/<version>/`
with the SavedModel, `model.onnx` and `dgc_model.json`; `load(path)` opens
either format as a predictor. Names load their modules on first use, so
`dgc_tf.export.onnx_predictor` can be imported without TensorFlow.
"""

import importlib

_LAZY_NAMES = {
    "export_model": "dgc_tf.export.exporter",
    "check_exportable": "dgc_tf.export.exporter",
    "load": "dgc_tf.export.loading",
    "OnnxPredictor": "dgc_tf.export.onnx_predictor",
    "SavedModelPredictor": "dgc_tf.export.savedmodel_predictor",
    "main": "dgc_tf.export.cli",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name):
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dgc_tf.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
