"""`tf.data` input pipelines for training a DGC model under a `tf.distribute` strategy.

The datasets yield what `DGC.train_step` takes: raw features (the model
scales them inside its graph) and the response encoded by
`DGC.encode_response`, or features alone for a model without a response.
"""

import numpy as np
import tensorflow as tf

from dgc_tf import preprocessing


def encode_arrays(model, x, y=None):
    """Return `x` as a float32 feature matrix and `y` encoded for `model`.

    Args:
        model: an adapted `dgc_tf.DGC` (its class vocabulary or response
            type decides the encoding of `y`).
        x: array of shape `(num_samples, num_features)`.
        y: array of shape `(num_samples,)`, or None.
    """
    x = preprocessing.as_feature_matrix(x)
    if y is None:
        return x, None
    if len(y) != len(x):
        raise ValueError(
            f"`x` and `y` must have the same number of rows. Received {len(x)} rows in x and {len(y)} in y."
        )
    return x, np.asarray(model.encode_response(y))


def make_dataset(
    model,
    x,
    y=None,
    batch_size=256,
    shuffle=True,
    seed=0,
    drop_remainder=False,
    shard_policy=tf.data.experimental.AutoShardPolicy.DATA,
    prefetch=True,
):
    """Build a batched dataset of `(features, encoded_y)` from arrays.

    Args:
        model: an adapted `dgc_tf.DGC`, used to encode `y`.
        x: raw features of shape `(num_samples, num_features)`.
        y: raw responses of shape `(num_samples,)`, or None (VaDE).
        batch_size: global batch size. `Model.fit` splits each batch
            across the replicas of the strategy it was compiled under.
        shuffle: reshuffle the rows every epoch.
        seed: seed of the shuffle. With the same seed every worker of a
            multi-worker job reads the same order before sharding.
        drop_remainder: drop the last partial batch, so every step has the
            full global batch.
        shard_policy: `tf.data.experimental.AutoShardPolicy` applied when a
            multi-worker strategy distributes the dataset. `DATA` (the
            default) makes each worker read the whole dataset and keep its
            own share of every global batch, which suits in-memory arrays
            that are not split into files.
        prefetch: prefetch batches with `tf.data.AUTOTUNE`.

    Returns:
        A `tf.data.Dataset` with element `(x_batch, y_batch)`, or `x_batch`
        alone when `y` is None.
    """
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    x, y = encode_arrays(model, x, y)
    elements = x if y is None else (x, y)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = shard_policy
    options.deterministic = True
    dataset = dataset.with_options(options)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
