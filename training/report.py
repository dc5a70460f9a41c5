"""The HTML report of a run directory: `dgc-tf report RUN_DIR`.

The plots are drawn from the training sample that `dgc-tf fit` saves
(`sample.npz`, up to 2,000 training rows) and from `history.csv`:

* cluster sizes;
* the latent means in 2-D (PCA), coloured by cluster;
* the response per cluster: box plots for a continuous `y`, stacked bars of
  the class shares for classes;
* for a continuous `y`, each cluster's head mean along the first principal
  axis of the latent space, over the rows of that cluster;
* training curves;
* for image data, images decoded from draws of each cluster's prior component.

Matplotlib runs with the Agg backend, so no display is needed.
"""

import csv
import html
import json
import os

import numpy as np

REPORT_FILE = "report.html"
IMAGE_FOLDER = "report_files"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _save(figure, folder, name):
    path = os.path.join(folder, name)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return name


def _cluster_colors(num_clusters):
    colormap = _pyplot().get_cmap("tab10" if num_clusters <= 10 else "tab20")
    return [colormap(k % colormap.N) for k in range(num_clusters)]


def plot_cluster_sizes(folder, clusters, num_clusters):
    pyplot = _pyplot()
    sizes = np.bincount(clusters, minlength=num_clusters)
    figure, axes = pyplot.subplots(figsize=(5, 3.2))
    axes.bar(range(num_clusters), sizes, color=_cluster_colors(num_clusters))
    axes.set_xticks(range(num_clusters))
    axes.set_xlabel("cluster")
    axes.set_ylabel("rows in the sample")
    axes.set_title("Cluster sizes")
    return _save(figure, folder, "cluster_sizes.png")


def latent_projection(z_mean):
    """Project latent means to 2-D with PCA, returning the points and the fitted PCA."""
    from sklearn.decomposition import PCA

    components = min(2, z_mean.shape[1], len(z_mean))
    pca = PCA(n_components=components).fit(z_mean)
    points = pca.transform(z_mean)
    if components == 1:
        points = np.column_stack([points[:, 0], np.zeros(len(points))])
    return points, pca


def plot_latent_space(folder, points, clusters, num_clusters):
    pyplot = _pyplot()
    colors = _cluster_colors(num_clusters)
    figure, axes = pyplot.subplots(figsize=(5, 4.2))
    for k in range(num_clusters):
        rows = clusters == k
        axes.scatter(points[rows, 0], points[rows, 1], s=8, alpha=0.7, color=colors[k], label=f"cluster {k}")
    axes.set_xlabel("principal component 1")
    axes.set_ylabel("principal component 2")
    axes.set_title("Latent means (PCA)")
    axes.legend(fontsize=8, markerscale=2)
    return _save(figure, folder, "latent_space.png")


def plot_response_by_cluster(folder, y, clusters, num_clusters, response, classes):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5.5, 3.6))
    present = [k for k in range(num_clusters) if (clusters == k).any()]
    if response == "gaussian":
        axes.boxplot([y[clusters == k].astype(float) for k in present], positions=present)
        axes.set_ylabel("y")
        axes.set_title("Response per cluster")
    else:
        labels = np.asarray(y).astype(str)
        shares = np.array([[np.mean(labels[clusters == k] == str(label)) for k in present] for label in classes])
        bottom = np.zeros(len(present))
        class_colors = _pyplot().get_cmap("Set2")
        for index, label in enumerate(classes):
            axes.bar(present, shares[index], bottom=bottom, color=class_colors(index % class_colors.N), label=str(label))
            bottom += shares[index]
        axes.set_ylabel("share of rows")
        axes.set_title("Classes of y per cluster")
        axes.legend(fontsize=8, title="y", bbox_to_anchor=(1.02, 1), loc="upper left")
    axes.set_xticks(present)
    axes.set_xlabel("cluster")
    return _save(figure, folder, "response_by_cluster.png")


def plot_response_curves(folder, model, z_mean, y, clusters, pca):
    """Plot y against the first principal axis of z, with each cluster's head mean along that axis.

    Head k is evaluated on the line through cluster k's mean z along the first
    principal direction, over the coordinates that cluster k's rows cover.
    """
    pyplot = _pyplot()
    num_clusters = model.num_clusters
    colors = _cluster_colors(num_clusters)
    direction = pca.components_[0]
    coordinates = (z_mean - pca.mean_) @ direction
    figure, axes = pyplot.subplots(figsize=(6, 4))
    for k in range(num_clusters):
        rows = clusters == k
        if not rows.any():
            continue
        axes.scatter(coordinates[rows], y[rows], s=6, alpha=0.35, color=colors[k])
        grid = np.linspace(coordinates[rows].min(), coordinates[rows].max(), 60)
        centre = z_mean[rows].mean(axis=0)
        centre = centre - ((centre - pca.mean_) @ direction) * direction
        z_line = (centre[None, :] + grid[:, None] * direction[None, :]).astype(np.float32)
        head_means = model.heads.mean(model.heads(z_line)).numpy()[:, k]
        head_means = head_means * float(model.response_scale.numpy()) + float(model.response_offset.numpy())
        axes.plot(grid, head_means, color=colors[k], linewidth=2, label=f"head of cluster {k}")
    axes.set_xlabel("latent principal component 1")
    axes.set_ylabel("y")
    axes.set_title("Per-cluster response curves")
    axes.legend(fontsize=8)
    return _save(figure, folder, "response_curves.png")


def read_history(path):
    """Return the rows of history.csv as dicts of floats, keyed by stage."""
    stages = {}
    if not os.path.isfile(path):
        return stages
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values = {name: float(value) for name, value in row.items() if name != "stage" and value not in ("", None)}
            stages.setdefault(row["stage"], []).append(values)
    return stages


def plot_training_curves(folder, stages):
    pyplot = _pyplot()
    names = ["loss", "reconstruction", "response", "cluster_kl", "latent_kl"]
    figure, all_axes = pyplot.subplots(1, 2, figsize=(10, 3.6))
    pretrain = stages.get("pretrain", [])
    axes = all_axes[0]
    if pretrain:
        axes.plot([row["epoch"] for row in pretrain], [row["loss"] for row in pretrain], marker="o")
    axes.set_title("Autoencoder pretraining loss")
    axes.set_xlabel("epoch")
    axes = all_axes[1]
    train = stages.get("train", [])
    for name in names:
        if train and name in train[0]:
            axes.plot([row["epoch"] for row in train], [row[name] for row in train], marker="o", label=name)
    axes.set_title("Training: loss and ELBO terms (mean per row)")
    axes.set_xlabel("epoch")
    axes.legend(fontsize=8)
    return _save(figure, folder, "training_curves.png")


def plot_cluster_samples(folder, model, image_size, per_cluster=8, seed=0):
    """Draw z from each cluster's prior component and show the decoder means as images."""
    pyplot = _pyplot()
    width, height = image_size
    rng = np.random.default_rng(seed)
    means = model.prior.component_means.numpy()
    variances = model.prior.variances().numpy()
    figure, grid = pyplot.subplots(
        model.num_clusters, per_cluster, figsize=(per_cluster * 0.9, model.num_clusters * 0.95), squeeze=False
    )
    for k in range(model.num_clusters):
        z = means[k] + np.sqrt(variances[k]) * rng.standard_normal((per_cluster, model.latent_dim))
        params = model.decoder(z.astype(np.float32))
        images = (model.decoder.mean(params) * model.feature_scale + model.feature_offset).numpy()
        for column in range(per_cluster):
            axes = grid[k, column]
            axes.imshow(images[column].reshape(height, width), cmap="gray", vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(f"cluster {k}", fontsize=8)
    figure.suptitle("Images generated from each cluster")
    return _save(figure, folder, "cluster_samples.png")


def _table(rows):
    cells = "".join(
        f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows
    )
    return f"<table>{cells}</table>"


def _format(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def write_report(run_dir, config, model, out_dir=None):
    """Draw the plots and write report.html, returning its path.

    Args:
        run_dir: the run directory with sample.npz and history.csv.
        config: its parsed config.json.
        model: its loaded `dgc_tf.DGC`.
        out_dir: folder for report.html and its images (default: `run_dir`).
    """
    from dgc_tf.metrics import clustering_scores

    out_dir = out_dir or run_dir
    image_folder = os.path.join(out_dir, IMAGE_FOLDER)
    os.makedirs(image_folder, exist_ok=True)
    with np.load(os.path.join(run_dir, "sample.npz"), allow_pickle=False) as archive:
        sample = {name: archive[name] for name in archive.files}
    x, y = sample["x"], sample["y"]
    outputs = model.predict(x, batch_size=1024, verbose=0)
    clusters = outputs["cluster"]
    num_clusters = model.num_clusters
    response = config["response"]

    points, pca = latent_projection(outputs["z_mean"])
    plots = [
        ("Cluster sizes", plot_cluster_sizes(image_folder, clusters, num_clusters)),
        ("Latent space", plot_latent_space(image_folder, points, clusters, num_clusters)),
        ("Response by cluster", plot_response_by_cluster(image_folder, y, clusters, num_clusters, response, model.classes)),
    ]
    if response == "gaussian":
        plots.append(("Response curves", plot_response_curves(image_folder, model, outputs["z_mean"], y.astype(float), clusters, pca)))
    plots.append(("Training curves", plot_training_curves(image_folder, read_history(os.path.join(run_dir, "history.csv")))))
    if config["data"]["kind"] == "images" and config["data"].get("image_size"):
        plots.append(("Generated images", plot_cluster_samples(image_folder, model, config["data"]["image_size"])))

    scores = [("rows in the sample", len(x))]
    if response == "gaussian":
        scores.append(("response RMSE", float(np.sqrt(np.mean((outputs["y_pred"] - y.astype(float)) ** 2)))))
    else:
        predicted = outputs["y_pred"].argmax(axis=1) if response == "categorical" else (outputs["y_pred"] >= 0.5).astype(int)
        scores.append(("response accuracy", float(np.mean(predicted == model.encode_response(y)))))
    if "groups" in sample:
        for name, value in clustering_scores(sample["groups"], clusters).items():
            scores.append((f"clustering {name} (true groups: {config['groups']})", value))

    options = config["options"]
    settings = [
        ("data", config["data"]["path"]),
        ("rows", config["data"]["rows"]),
        ("target", f"{config['target']} ({response})"),
        ("clusters", num_clusters),
        ("features", len(config["features"]["names"])),
        ("latent size", options["latent_dim"]),
        ("encoder units", options["encoder_units"]),
        ("head", options["head"]),
        ("epochs (pretraining + training)", f"{options['pretrain_epochs']} + {options['epochs']}"),
        ("training time", f"{config['training']['seconds']} s"),
        ("created", config["created"]),
    ]
    figures = "".join(
        f'<figure><img src="{IMAGE_FOLDER}/{html.escape(name)}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, name in plots
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dgc-tf report: {html.escape(os.path.basename(os.path.abspath(run_dir)))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 620px; }}
figcaption {{ text-align: center; font-size: 0.9em; }}
</style></head><body>
<h1>dgc-tf run {html.escape(os.path.abspath(run_dir))}</h1>
<h2>Settings</h2>{_table(settings)}
<h2>Scores on the training sample</h2>{_table([(name, _format(value)) for name, value in scores])}
<h2>Plots</h2>{figures}
<h2>Configuration</h2><pre>{html.escape(json.dumps(options, indent=2))}</pre>
</body></html>
"""
    path = os.path.join(out_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path
