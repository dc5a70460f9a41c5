"""Run an exported `model.onnx` with ONNX Runtime, without TensorFlow.

This module imports only NumPy, ONNX Runtime and the NumPy-only
`dgc_tf.export.contract`, so edge devices and servers can use it without
installing TensorFlow.
"""

import json
import os

import numpy as np
import onnxruntime

from dgc_tf.export import contract


class OnnxPredictor:
    """The predict function of an exported DGC model, run by ONNX Runtime.

    Args:
        path: a `model.onnx` file, or the version directory that contains it.
        providers: ONNX Runtime execution providers; the CPU provider by default.
        session_options: an `onnxruntime.SessionOptions`, or None.

    Attributes:
        metadata: the export metadata stored in the file's `metadata_props`
            (the content of `dgc_model.json`).
        input_name, output_names: the graph's input and output names.
        num_features: the number of input columns.
    """

    def __init__(self, path, providers=None, session_options=None):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, contract.ONNX_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No ONNX model at {path!r}. Pass a model.onnx file or a version directory "
                "written by dgc_tf.export.export_model with include_onnx=True."
            )
        self.path = path
        self.session = onnxruntime.InferenceSession(
            path, sess_options=session_options, providers=providers or ["CPUExecutionProvider"]
        )
        self.metadata = _parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.num_features = graph_input.shape[1] if isinstance(graph_input.shape[1], int) else None
        self.output_names = [output.name for output in self.session.get_outputs()]

    def predict(self, x):
        """Return the predict outputs for raw features `x` as a dict of NumPy arrays.

        Args:
            x: array-like of shape `(num_rows, num_features)`; float64 and
                integer input is cast to float32.

        Returns:
            `cluster_probs` `(N, K)`, `cluster` int64 `(N,)`, `y_pred`,
            `z_mean` `(N, D)` and, for a class response, `y_label` `(N,)`
            (an object array of str for string labels).
        """
        rows = contract.as_input_matrix(x, self.num_features)
        values = self.session.run(self.output_names, {self.input_name: rows})
        return {name: np.asarray(value) for name, value in zip(self.output_names, values)}


def _parse_metadata(properties):
    metadata = {}
    for key, text in properties.items():
        try:
            metadata[key] = json.loads(text)
        except json.JSONDecodeError:
            metadata[key] = text  # Properties written by other tools may be plain text.
    return metadata
