"""Baselines for the experiments: classic clusterings and a plain classifier.

- `kmeans_clusters`, `agglomerative_clusters`, `gaussian_mixture_clusters`:
  scikit-learn clusterings of the raw inputs (pixels or coordinates), fitted
  on the training rows and applied to the test rows.
- `EncoderClassifier`: the DGC encoder with a softmax layer on `z_mean`,
  trained with cross-entropy. It gives the classification accuracy that DGC's
  `y_pred` is compared against.
"""

import keras
import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.mixture import GaussianMixture

from dgc_tf import preprocessing
from dgc_tf.encoder import build_encoder

# Ward linkage needs memory and time quadratic in the number of rows, so it
# runs on a random subset of at most this many training rows.
AGGLOMERATIVE_MAX_ROWS = 4000


def kmeans_clusters(train_x, test_x, num_clusters, seed):
    """Fit k-means (10 initializations) on `train_x`; return the cluster ids of both parts."""
    kmeans = KMeans(num_clusters, n_init=10, random_state=seed).fit(train_x)
    return kmeans.labels_, kmeans.predict(test_x)


def gaussian_mixture_clusters(train_x, test_x, num_clusters, seed):
    """Fit a full-covariance Gaussian mixture (5 initializations); return the cluster ids of both parts."""
    mixture = GaussianMixture(num_clusters, covariance_type="full", n_init=5, random_state=seed).fit(train_x)
    return mixture.predict(train_x), mixture.predict(test_x)


def agglomerative_clusters(train_x, test_x, num_clusters, seed, max_rows=AGGLOMERATIVE_MAX_ROWS):
    """Cluster with Ward linkage; return the cluster ids of the training and test rows.

    With more than `max_rows` training rows, the linkage runs on a random
    subset of `max_rows` of them. Every row outside that subset, and every
    test row, goes to the cluster with the nearest centroid, where a
    centroid is the mean of the subset rows in that cluster.
    """
    train_x = np.asarray(train_x, np.float64)
    test_x = np.asarray(test_x, np.float64)
    subset = np.arange(len(train_x))
    if len(train_x) > max_rows:
        subset = np.sort(np.random.default_rng(seed).permutation(len(train_x))[:max_rows])

    subset_labels = AgglomerativeClustering(num_clusters, linkage="ward").fit_predict(train_x[subset])
    centroids = np.stack([train_x[subset][subset_labels == k].mean(axis=0) for k in range(num_clusters)])

    train_labels = _nearest_centroid(train_x, centroids)
    train_labels[subset] = subset_labels
    return train_labels, _nearest_centroid(test_x, centroids)


def _nearest_centroid(x, centroids):
    # Squared distances without forming a (rows, clusters, features) array.
    distances = (x**2).sum(axis=1)[:, None] - 2.0 * x @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    return distances.argmin(axis=1)


@keras.saving.register_keras_serializable(package="dgc_tf")
class EncoderClassifier(keras.Model):
    """A softmax classifier on the `z_mean` of a DGC encoder.

    The encoder has the architecture that a `dgc_tf.DGC` with the same
    arguments builds, and the inputs get the same min-max scaling that DGC's
    Bernoulli decoder uses (`"minmax"` in `dgc_tf.preprocessing`). Training
    minimizes the cross-entropy of the class index.

    Args:
        num_classes: number of classes.
        latent_dim, encoder_units, activation, encoder, image_shape: as in
            `dgc_tf.DGC`.

    Input shape: `(batch, num_features)`.
    Output shape: `(batch, num_classes)`, class probabilities.
    """

    def __init__(
        self,
        num_classes,
        latent_dim=10,
        encoder_units=(128, 256, 256),
        activation="relu",
        encoder="mlp",
        image_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}")
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        self.encoder_units = tuple(int(units) for units in encoder_units)
        self.activation = activation
        self.encoder_type = encoder
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.encoder = build_encoder(
            encoder, self.latent_dim, self.encoder_units, activation, self.image_shape, name="encoder"
        )
        # Only z_mean feeds the softmax layer, so the z_log_var layer would get no gradient.
        self.encoder.log_var_layer.trainable = False
        self.classifier = keras.layers.Dense(self.num_classes, activation="softmax", name="classifier")
        self.feature_offset = None
        self.feature_scale = None

    def build(self, input_shape):
        num_features = int(input_shape[-1])
        self.encoder.build((None, num_features))
        self.classifier.build((None, self.latent_dim))
        self.feature_offset = self.add_weight(
            name="feature_offset", shape=(num_features,), initializer="zeros", trainable=False
        )
        self.feature_scale = self.add_weight(
            name="feature_scale", shape=(num_features,), initializer="ones", trainable=False
        )
        self.built = True

    def adapt(self, x):
        """Learn the min-max scaling of `x`, of shape `(num_samples, num_features)`."""
        x = preprocessing.as_feature_matrix(x)
        if not self.built:
            self.build((None, x.shape[1]))
        offset, scale = preprocessing.feature_statistics(x, "minmax")
        self.feature_offset.assign(offset)
        self.feature_scale.assign(scale)

    def call(self, x):
        z_mean, _ = self.encoder((keras.ops.cast(x, "float32") - self.feature_offset) / self.feature_scale)
        return self.classifier(z_mean)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            latent_dim=self.latent_dim,
            encoder_units=list(self.encoder_units),
            activation=self.activation,
            encoder=self.encoder_type,
            image_shape=None if self.image_shape is None else list(self.image_shape),
        )
        return config


def train_classifier(x, labels, num_classes, model_settings, epochs, batch_size, learning_rate, seed):
    """Train an `EncoderClassifier` on class indices `labels`; return it.

    Args:
        x: features of shape `(num_samples, num_features)`.
        labels: class indices from 0 to `num_classes - 1`, shape `(num_samples,)`.
        num_classes: number of classes.
        model_settings: `dgc_tf.DGC` arguments; the encoder arguments among
            them (`latent_dim`, `encoder_units`, `activation`, `encoder`,
            `image_shape`) are used and the rest ignored.
        epochs, batch_size, learning_rate: Adam training settings.
        seed: Keras global seed of the weights and the shuffling.
    """
    keras.utils.set_random_seed(seed)
    encoder_keys = ("latent_dim", "encoder_units", "activation", "encoder", "image_shape")
    model = EncoderClassifier(num_classes, **{key: model_settings[key] for key in encoder_keys if key in model_settings})
    model.adapt(x)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    model.fit(x, np.asarray(labels), epochs=epochs, batch_size=batch_size, verbose=0)
    return model
