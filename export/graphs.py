"""The inference graphs of an exported DGC model, as `tf.function`s on a `tf.Module`.

Every function reads `z = z_mean` or a given `z` and contains no random ops.
Feature scaling, the label vocabulary and the response scaling are part of
the graphs, so clients send raw features and raw labels.
"""

import tensorflow as tf

from dgc_tf.export import contract

_TF_LABEL_DTYPES = {"string": tf.string, "bool": tf.bool, "int64": tf.int64}


def class_vocabulary(model):
    """Return the labels of a class response in index order, or None for a Gaussian one.

    A model given `num_classes` without `classes` has no vocabulary; its
    labels are the class indices 0 .. C-1.
    """
    if model.response not in contract.CLASS_RESPONSES:
        return None
    if model.classes is not None:
        return list(model.classes)
    return list(range(model.num_classes))


def _as_float32(tensor):
    return tf.cast(tensor, tf.float32)


class ServingModule(tf.Module):
    """The four exported functions of a trained `dgc_tf.DGC` model.

    Attributes `predict`, `cluster_labeled`, `prior` and `decode` are
    `tf.function`s with fixed input signatures; `signatures()` maps the
    SavedModel signature names to them. The module tracks only the model's
    variables and the label lookup table, so the optimizer state and the
    metrics are not saved.
    """

    def __init__(self, model):
        super().__init__(name="dgc_serving")
        graphs = InferenceGraphs(model)
        # Track the tf.Variables that the traced functions capture, not their
        # keras.Variable wrappers. With the wrappers, tf.saved_model.load
        # still works, but the session-based loader of TF Serving and
        # saved_model_cli fails with "Could not find variable ...".
        self.model_variables = [variable.value for variable in model.variables]
        if graphs.label_table is not None:
            self.label_table = graphs.label_table

        features = tf.TensorSpec([None, model.num_features], tf.float32, name="x")
        latent = tf.TensorSpec([None, model.latent_dim], tf.float32, name="z")
        if graphs.classes is None:
            response = tf.TensorSpec([None], tf.float32, name="y")
        else:
            response = tf.TensorSpec([None], _TF_LABEL_DTYPES[graphs.label_dtype], name="y")

        # autograph=False: the bodies are straight-line code, so tracing them
        # as written keeps the graphs free of control-flow rewrites.
        self.predict = tf.function(graphs.predict, input_signature=[features], autograph=False)
        self.cluster_labeled = tf.function(
            graphs.cluster_labeled, input_signature=[features, response], autograph=False
        )
        self.prior = tf.function(graphs.prior, input_signature=[], autograph=False)
        self.decode = tf.function(graphs.decode, input_signature=[latent], autograph=False)

    def signatures(self):
        """Return the SavedModel signatures: name -> concrete function."""
        return {
            contract.PREDICT_SIGNATURE: self.predict.get_concrete_function(),
            contract.LABELED_SIGNATURE: self.cluster_labeled.get_concrete_function(),
            contract.PRIOR_SIGNATURE: self.prior.get_concrete_function(),
            contract.DECODE_SIGNATURE: self.decode.get_concrete_function(),
        }


class InferenceGraphs:
    """The bodies of the exported functions, traced by `ServingModule`.

    A plain Python object, so that holding the Keras model here does not make
    `tf.saved_model.save` save the whole model object.
    """

    def __init__(self, model):
        self._model = model
        self.classes = class_vocabulary(model)
        self.label_dtype = contract.label_dtype(self.classes) if self.classes is not None else None
        self.label_table = self._build_label_table() if self.classes is not None else None

    def _build_label_table(self):
        # Boolean labels are looked up as 0 and 1, because hash tables take
        # no bool keys.
        if self.label_dtype == "string":
            keys = tf.constant(self.classes, tf.string)
        else:
            keys = tf.constant([int(label) for label in self.classes], tf.int64)
        initializer = tf.lookup.KeyValueTensorInitializer(
            keys, tf.range(len(self.classes), dtype=tf.int64)
        )
        # Even in eager mode, the initializer adds its (empty) result to the
        # global TABLE_INITIALIZERS collection. Traced graphs inherit it, and
        # tf2onnx's meta-graph export then warns that it cannot serialize it.
        # TF2 never reads the collection, so the entry is removed again.
        collection = tf.compat.v1.get_collection_ref(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)
        size_before = len(collection)
        table = tf.lookup.StaticHashTable(initializer, default_value=-1)
        del collection[size_before:]
        return table

    def _label_constant(self):
        # Built inside the traced function, so the labels become a graph
        # constant. A constant created outside would be a captured input,
        # which tf2onnx turns into an extra ONNX graph input.
        return tf.constant(self.classes, _TF_LABEL_DTYPES[self.label_dtype])

    def predict(self, x):
        outputs = self._model(x, training=False)
        result = {
            "cluster_probs": _as_float32(outputs["cluster_probs"]),
            "cluster": tf.cast(outputs["cluster"], tf.int64),
            "y_pred": _as_float32(outputs["y_pred"]),
            "z_mean": _as_float32(outputs["z_mean"]),
        }
        if self.classes is not None:
            if self._model.response == "categorical":
                index = tf.argmax(outputs["y_pred"], axis=-1)
            else:  # Bernoulli: y_pred is the probability of the second class.
                index = tf.cast(outputs["y_pred"] >= 0.5, tf.int64)
            result["y_label"] = tf.gather(self._label_constant(), index)
        return result

    def _encode_labels(self, x, y):
        """Map raw labels to class indices; an unknown label fails the call."""
        tf.debugging.assert_equal(
            tf.shape(x)[0], tf.shape(y)[0], message="`x` and `y` must have the same number of rows."
        )
        if self.classes is None:
            return y
        keys = tf.cast(y, tf.int64) if self.label_dtype == "bool" else y
        codes = self.label_table.lookup(keys)
        unknown = codes < 0
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(unknown)),
            [
                f"`y` contains labels the model was not trained on. Known classes: {self.classes[:20]}. "
                "Unknown labels:",
                tf.boolean_mask(y, unknown)[:10],
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(codes)

    def cluster_labeled(self, x, y):
        codes = self._encode_labels(x, y)
        probs = _as_float32(self._model.labeled_cluster_probs(x, codes))
        return {"cluster_probs": probs, "cluster": tf.argmax(probs, axis=-1)}

    def prior(self):
        prior = self._model.prior
        return {
            "pi": _as_float32(tf.exp(prior.log_mixture_weights())),
            "mu": _as_float32(tf.convert_to_tensor(prior.component_means)),
            "sigma2": _as_float32(prior.variances()),
        }

    def decode(self, z):
        model = self._model
        x_mean = model.decoder.mean(model.decoder(z)) * model.feature_scale + model.feature_offset
        params = model.heads(z)  # (N, K, P)
        result = {"x_mean": _as_float32(x_mean)}
        if model.response in contract.CLASS_RESPONSES:
            # Categorical: (N, K, C) class probabilities; Bernoulli: (N, K),
            # the probability of the second class.
            result["y_probs"] = _as_float32(model.heads.mean(params))
        else:
            distribution = model.heads.distribution(params)
            scale = model.response_scale
            result["y_mean"] = _as_float32(distribution.mean() * scale + model.response_offset)
            result["y_variance"] = _as_float32(distribution.variance() * tf.square(scale))
        return result
