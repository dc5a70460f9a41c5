"""The demo job: DGC, VaDE and k-means on noisy MNIST and Pacman.

Run with `python -m dgc_tf.training.demo` (or `make demo`). Each data set is
split 80/20; the models never see the true groups, and every figure is
measured on the held-out rows. One line per data set and model:

    RESULT <dataset> model=<dgc|vade|kmeans> clustering_accuracy=<x>
        labeled_clustering_accuracy=<x> nmi=<x> ari=<x> entropy_clipped=<x>
        seconds=<x> seed=<n>

`clustering_accuracy` uses no `y` (the prediction-time weights);
`labeled_clustering_accuracy` uses `y` (the training-time weights, DGC only).
`entropy_clipped` is the share of held-out (row, cluster) pairs where the
entropy clip `max(H, 0)` is active (DGC only).
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from dgc_tf.callbacks import PriorRefit  # noqa: E402
from dgc_tf.data import load_noisy_mnist, make_pacman, train_test_split  # noqa: E402
from dgc_tf.metrics import clustering_accuracy, clustering_scores  # noqa: E402
from dgc_tf.model import DGC  # noqa: E402
from dgc_tf.restarts import fit_with_restarts  # noqa: E402
from dgc_tf.training.experiments import EXPERIMENTS  # noqa: E402

# The demo trains with the settings of the experiment recipes of the same
# name, so the two never drift apart.
_TRAINING_KEYS = (
    "num_clusters",
    "model",
    "prior_init",
    "refit_start_epoch",
    "pretrain_epochs",
    "epochs",
    "batch_size",
    "learning_rate",
    "n_init",
)
RECIPES = {
    "pacman": {
        "load": lambda seed: make_pacman(10000, seed=seed),
        **{key: EXPERIMENTS["pacman"][key] for key in _TRAINING_KEYS},
    },
    "noisy_mnist": {
        "load": lambda seed: load_noisy_mnist(seed=seed),
        **{key: EXPERIMENTS["noisy_mnist"][key] for key in _TRAINING_KEYS},
    },
}


def build_model(recipe, seed, response_weight=None):
    """Build and compile a DGC model from a recipe's `num_clusters`, `model` and `learning_rate`."""
    settings = dict(recipe["model"])
    if response_weight is not None:
        settings["response_weight"] = response_weight
    model = DGC(recipe["num_clusters"], seed=seed, **settings)
    model.compile(optimizer=keras.optimizers.Adam(recipe["learning_rate"]))
    return model


def train_model(recipe, train, seed, vade):
    """Train DGC, or VaDE (the same model without its response term), with restarts.

    Both refit the prior by its M-step from `refit_start_epoch` on; VaDE
    starts from a Gaussian mixture on the codes, as VaDE does.
    """
    prior_init = "mixture" if vade else recipe["prior_init"]
    refit = PriorRefit(train.x, None if vade else train.y, start_epoch=recipe["refit_start_epoch"])
    return fit_with_restarts(
        lambda restart_seed: build_model(recipe, restart_seed, 0.0 if vade else None),
        train.x,
        # VaDE's objective has no response term and ignores y; passing it
        # lets the model learn the label vocabulary like DGC does.
        train.y,
        n_init=recipe["n_init"],
        seed=seed,
        pretrain_kwargs=dict(
            epochs=recipe["pretrain_epochs"],
            batch_size=recipe["batch_size"],
            prior_init=prior_init,
            verbose=0,
        ),
        fit_kwargs=dict(epochs=recipe["epochs"], batch_size=recipe["batch_size"], callbacks=[refit], verbose=0),
    )[0]


def entropy_clip_fraction(model, x):
    """Return the share of (row, cluster) pairs whose response entropy is negative at z_mean.

    There the clip `max(H, 0)` is active, so the prediction-time weights
    fall back towards p(k|z).
    """
    z_mean = model.predict(x, verbose=0)["z_mean"]
    entropy = model.heads.distribution(model.head_params(z_mean)).entropy().numpy()
    return float(np.mean(entropy < 0.0))


def _print_result(dataset, model_name, seed, seconds, test_groups, clusters, labeled_clusters=None, clipped=None):
    scores = clustering_scores(test_groups, clusters)
    labeled = "n/a"
    if labeled_clusters is not None:
        labeled = f"{clustering_accuracy(test_groups, labeled_clusters):.4f}"
    clipped = "n/a" if clipped is None else f"{clipped:.4f}"
    print(
        f"RESULT {dataset} model={model_name} clustering_accuracy={scores['accuracy']:.4f} "
        f"labeled_clustering_accuracy={labeled} nmi={scores['nmi']:.4f} ari={scores['ari']:.4f} "
        f"entropy_clipped={clipped} seconds={seconds:.1f} seed={seed}",
        flush=True,
    )


def run(dataset, seed, save_dir=None):
    """Train and score DGC, VaDE and k-means on one data set with one seed.

    With `save_dir`, the trained DGC model is saved there as `<dataset>.keras`.
    """
    recipe = RECIPES[dataset]
    train, test = train_test_split(recipe["load"](seed), test_fraction=0.2, seed=seed)

    start = time.time()
    dgc = train_model(recipe, train, seed, vade=False)
    _print_result(
        dataset,
        "dgc",
        seed,
        time.time() - start,
        test.groups,
        dgc.predict(test.x, verbose=0)["cluster"],
        dgc.predict_labeled(test.x, test.y)["cluster"],
        entropy_clip_fraction(dgc, test.x),
    )

    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        dgc.save(os.path.join(save_dir, f"{dataset}.keras"))

    start = time.time()
    vade = train_model(recipe, train, seed, vade=True)
    _print_result(dataset, "vade", seed, time.time() - start, test.groups, vade.predict(test.x, verbose=0)["cluster"])

    start = time.time()
    kmeans = KMeans(recipe["num_clusters"], n_init=10, random_state=seed).fit(train.x)
    _print_result(dataset, "kmeans", seed, time.time() - start, test.groups, kmeans.predict(test.x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(RECIPES), default=["noisy_mnist", "pacman"], help="data sets to run"
    )
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, starting at --first-seed")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first run")
    parser.add_argument(
        "--save-dir",
        default=os.path.join("runs", "demo"),
        help="folder for the trained DGC models (<dataset>.keras, last seed wins); '' to skip saving",
    )
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    for dataset in args.datasets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run(dataset, seed, args.save_dir)


if __name__ == "__main__":
    main()
