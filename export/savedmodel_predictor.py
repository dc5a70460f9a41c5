"""Run an exported SavedModel in-process with TensorFlow."""

import json
import os

import numpy as np
import tensorflow as tf

from dgc_tf.export import contract


class SavedModelPredictor:
    """The signatures of an exported DGC SavedModel, called with NumPy arrays.

    Args:
        path: the version directory (the one containing `saved_model.pb`).

    Attributes:
        metadata: the content of `dgc_model.json` next to the SavedModel, or
            None if the file is missing.
        signatures: the loaded signatures, by name.
        num_features: the number of input columns.
    """

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, contract.SAVED_MODEL_FILENAME)):
            raise FileNotFoundError(
                f"No SavedModel in {path!r}: {contract.SAVED_MODEL_FILENAME} is missing. "
                "Pass a version directory written by dgc_tf.export.export_model."
            )
        self.path = path
        self.loaded = tf.saved_model.load(path)
        self.signatures = self.loaded.signatures
        missing = [name for name in contract.SIGNATURES if name not in self.signatures]
        if missing:
            raise ValueError(
                f"The SavedModel in {path!r} lacks the signatures {missing}; it was not written "
                "by dgc_tf.export.export_model."
            )
        metadata_path = os.path.join(path, contract.METADATA_FILENAME)
        self.metadata = None
        if os.path.isfile(metadata_path):
            with open(metadata_path, encoding="utf-8") as file:
                self.metadata = json.load(file)
        self.num_features = self._input_spec(contract.PREDICT_SIGNATURE, "x").shape[1]

    def _input_spec(self, signature, name):
        return self.signatures[signature].structured_input_signature[1][name]

    def predict(self, x):
        """Return the `serving_default` outputs for raw features `x` as NumPy arrays.

        float64 and integer `x` is cast to float32. String labels in
        `y_label` come back as an object array of str.
        """
        rows = contract.as_input_matrix(x, self.num_features)
        return _to_numpy(self.signatures[contract.PREDICT_SIGNATURE](x=tf.constant(rows)))

    def predict_labeled(self, x, y):
        """Return the `cluster_labeled` outputs: cluster weights computed with the raw labels `y`."""
        rows = contract.as_input_matrix(x, self.num_features)
        spec = self._input_spec(contract.LABELED_SIGNATURE, "y")
        labels = _as_label_tensor(y, spec.dtype)
        return _to_numpy(self.signatures[contract.LABELED_SIGNATURE](x=tf.constant(rows), y=labels))

    def prior(self):
        """Return the mixture prior: `pi` `(K,)`, `mu` and `sigma2` `(K, D)`."""
        return _to_numpy(self.signatures[contract.PRIOR_SIGNATURE]())

    def decode(self, z):
        """Return the `decode` outputs for latent codes `z` of shape `(N, D)`."""
        latent_dim = self._input_spec(contract.DECODE_SIGNATURE, "z").shape[1]
        codes = contract.as_input_matrix(z, latent_dim)
        return _to_numpy(self.signatures[contract.DECODE_SIGNATURE](z=tf.constant(codes)))


def _as_label_tensor(y, dtype):
    labels = np.asarray(y).reshape(-1)
    if dtype == tf.string:
        return tf.constant(labels.astype(str))
    if dtype == tf.int64:
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise ValueError("`y` contains non-integer values, but the model's class labels are integers.")
        if labels.dtype.kind not in "iufb":
            raise ValueError(f"`y` must hold integer class labels. Received dtype {labels.dtype}.")
        return tf.constant(labels.astype(np.int64))
    if dtype == tf.bool:
        return tf.constant(labels.astype(bool))
    values = labels.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("`y` contains NaN or infinite values; drop those rows.")
    return tf.constant(values)


def _to_numpy(outputs):
    result = {}
    for name, tensor in outputs.items():
        value = tensor.numpy()
        if tensor.dtype == tf.string:
            value = np.array([item.decode("utf-8") for item in value.reshape(-1)], dtype=object).reshape(value.shape)
        result[name] = value
    return result
