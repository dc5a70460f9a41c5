"""Write the experiments' results page (Markdown tables and PNG plots).

    python -m dgc_tf.training.results_report --runs runs/experiments --out docs/results.md

Reads `<runs>/<experiment>/results.jsonl` and the .npz arrays written by
`dgc_tf.training.experiments`. The page gives, per experiment and model,
each accuracy as mean ± standard deviation and worst over seeds, with the
figure of Shi et al., "Deep Goal-Oriented Clustering" (arXiv:2006.04259)
beside it, and whether the project's bars are met. The plots
go to a folder beside the page (`docs/results/` for `docs/results.md`). A
hand-written `results_notes.md` beside the page, when present, is copied
into the page under "Notes". Every file is written under a temporary name and
renamed into place.
"""

import argparse
import datetime
import glob
import io
import os
import re
import sys

import numpy as np

from dgc_tf.training.experiments import EXPERIMENTS, InvalidRecords, arrays_filename, read_records

# The figures of Shi et al., "Deep Goal-Oriented Clustering" (arXiv:2006.04259).
PAPER_FIGURES = {
    ("noisy_mnist", "dgc"): "99.6%",
    ("noisy_mnist", "vade"): "95.6%",
    ("noisy_mnist", "no_decoder"): "about 50%",
    ("pacman", "dgc"): "100% train and test (later version: 93.1 ± 2.6%, 100 runs)",
    ("pacman", "vade"): "fails (no figure)",
    ("pacman", "kmeans"): "fails (no figure)",
    ("pacman", "agglomerative"): "fails (no figure)",
    ("svhn", "dgc"): "94.7% classification, 92.6% clustering",
    ("fashion_mnist", "dgc"): "no figure (SVHN: 94.7% classification, 92.6% clustering)",
}
# Accuracy columns: record key and heading.
ACCURACY_COLUMNS = (
    ("test_accuracy", "test, unlabeled"),
    ("labeled_test_accuracy", "test, labeled"),
    ("train_accuracy", "train, unlabeled"),
    ("labeled_train_accuracy", "train, labeled"),
    ("classification_accuracy", "classification (test)"),
)
FIGURE_DPI = 80


# ---------------------------------------------------------------- statistics


def summarize(values):
    """Return `(mean, standard deviation, worst, count)` of accuracies; the deviation uses n - 1."""
    values = np.asarray(values, np.float64)
    deviation = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), deviation, float(values.min()), len(values)


def format_summary(values):
    """Format accuracies as percentages: `mean ± sd (worst w)`, or a dash when there are none."""
    if not values:
        return "–"
    mean, deviation, worst, count = summarize(values)
    if count == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * deviation:.1f} (worst {100 * worst:.1f})"


def select_records(records):
    """Return the usable records: the full runs when there are any, else the smoke runs, and whether smoke."""
    full = [record for record in records if not record.get("smoke")]
    chosen = full if full else records
    return chosen, bool(chosen) and not full


def by_model(records, status="ok"):
    """Group the records of one status by model, keeping the models in first-seen order."""
    groups = {}
    for record in records:
        if record.get("status") == status:
            groups.setdefault(record["model"], []).append(record)
    return groups


def metric_values(records, key):
    return [record[key] for record in records if record.get(key) is not None]


# ---------------------------------------------------------------- bars


def _shortfall(bar, measured):
    # The status names the bar's value, because for the classifier bar it is not a number in the bar's text.
    return "met" if measured >= bar else f"short by {100 * (bar - measured):.1f} points of {100 * bar:.1f}%"


def evaluate_bars(experiment, models):
    """Return rows `(bar, measured, status)` for the bars that apply to `experiment`."""
    rows = []
    dgc = models.get("dgc")
    if not dgc:
        return rows
    if experiment == "pacman":
        for key, bar, label in (("labeled_test_accuracy", 0.99, "labeled"), ("test_accuracy", 0.95, "unlabeled")):
            worst = min(metric_values(dgc, key))
            rows.append((f"DGC {label} test ≥ {100 * bar:.0f}% in every seed", f"worst {100 * worst:.1f}%",
                         _shortfall(bar, worst)))
    elif experiment == "noisy_mnist":
        for key, label in (("test_accuracy", "unlabeled"), ("labeled_test_accuracy", "labeled")):
            worst = min(metric_values(dgc, key))
            rows.append((f"DGC {label} test ≥ 97% in every seed", f"worst {100 * worst:.1f}%", _shortfall(0.97, worst)))
    elif experiment in ("fashion_mnist", "svhn"):
        classifier = models.get("classifier")
        dgc_classification = metric_values(dgc, "classification_accuracy")
        if classifier and dgc_classification:
            reference = float(np.mean(metric_values(classifier, "classification_accuracy")))
            measured = float(np.mean(dgc_classification))
            rows.append((
                "DGC classification within 1 point of the plain classifier (means)",
                f"{100 * measured:.1f}% vs {100 * reference:.1f}%",
                _shortfall(reference - 0.01, measured),
            ))
        worst = min(metric_values(dgc, "test_accuracy"))
        rows.append(("DGC unlabeled test clustering ≥ 85% in every seed", f"worst {100 * worst:.1f}%",
                     _shortfall(0.85, worst)))
    return rows


# ---------------------------------------------------------------- plots


def _save_figure(figure, path):
    """Save a matplotlib figure as a palette PNG under a temporary name, then rename it to `path`.

    Reducing the image to 64 colours keeps a plot at a few tens of kilobytes,
    so the PNGs can be checked into the repository.
    """
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=FIGURE_DPI, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=64)
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name[:-4]}.tmp-{os.getpid()}.png")
    try:
        image.save(temporary, format="PNG", optimize=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _first_arrays(run_dir, model, records):
    """Load the plot arrays of the lowest seed in `records` that has them, or return None."""
    for seed, smoke in sorted((record["seed"], bool(record.get("smoke"))) for record in records):
        path = os.path.join(run_dir, arrays_filename(model, seed, smoke))
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as arrays:
                return seed, dict(arrays)
    return None


def plot_confusions(plt, run_dir, models, path):
    """Plot the test confusion matrices of every clustering model at its lowest seed; return True if any."""
    panels = []
    for model, records in models.items():
        found = _first_arrays(run_dir, model, records)
        if found is None:
            continue
        seed, arrays = found
        for key, suffix in (("confusion", ""), ("labeled_confusion", ", labeled")):
            if key in arrays:
                panels.append((f"{model}{suffix}, seed {seed}", arrays[key]))
    if not panels:
        return False
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (title, counts) in zip(axes.flat, panels):
        axis.imshow(counts, cmap="Blues", aspect="auto")
        if counts.size <= 40:
            for (row, column), count in np.ndenumerate(counts):
                colour = "white" if count > counts.max() / 2 else "black"
                axis.text(column, row, str(count), ha="center", va="center", fontsize=6, color=colour)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title, fontsize=7)
        axis.set_xlabel("true group", fontsize=6)
        axis.set_ylabel("predicted cluster", fontsize=6)
        axis.tick_params(labelsize=5)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def label_colours(labels):
    """Return scatter arguments that give each integer label the same distinct colour in every plot.

    A colour map normalized to the labels present would give two labels the
    two ends of tab20, which are both blue, and one label alone no reference.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or int(labels.max()) < 10:
        return {"c": labels, "cmap": "tab10", "vmin": -0.5, "vmax": 9.5}
    return {"c": labels % 20, "cmap": "tab20", "vmin": -0.5, "vmax": 19.5}


def plot_latent(plt, arrays, seed, path):
    """Scatter the 2-D projection of the test codes, coloured by cluster and by true group."""
    figure, axes = plt.subplots(1, 2, figsize=(6.0, 2.8))
    for axis, key, title in ((axes[0], "latent_cluster", "coloured by cluster"), (axes[1], "latent_group", "coloured by true group")):
        axis.scatter(arrays["latent_2d"][:, 0], arrays["latent_2d"][:, 1], s=3, **label_colours(arrays[key]))
        num_labels = len(np.unique(arrays[key]))
        axis.set_title(f"DGC z_mean, seed {seed}\n{title} ({num_labels} present)", fontsize=7)
        axis.set_xlabel("principal component 1", fontsize=6)
        axis.set_ylabel("principal component 2", fontsize=6)
        axis.tick_params(labelsize=5)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)


def _angle_fraction(x):
    # The Pacman's angle scaled to [0, 1] over its range 0.25 pi .. 1.75 pi.
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    return (angle - 0.25 * np.pi) / (1.5 * np.pi)


def plot_pacman_samples(plt, arrays, seed, path):
    """Plot test rows next to draws of the trained DGC: inputs, and responses against the angle."""
    figure, axes = plt.subplots(2, 2, figsize=(5.6, 5.0))
    panels = (
        (axes[0, 0], arrays["data_x"], None, arrays["data_group"], "data: x, by true ring"),
        (axes[0, 1], arrays["sample_x"], None, arrays["sample_cluster"], "DGC.sample: x, by cluster"),
        (axes[1, 0], arrays["data_x"], arrays["data_y"], arrays["data_group"], "data: y against angle"),
        (axes[1, 1], arrays["sample_x"], arrays["sample_y"], arrays["sample_cluster"], "DGC.sample: y against angle"),
    )
    for axis, x, y, colour, title in panels:
        if y is None:
            axis.scatter(x[:, 0], x[:, 1], c=colour, cmap="coolwarm", s=2)
            axis.set_aspect("equal", adjustable="datalim")
        else:
            axis.scatter(_angle_fraction(x), y, c=colour, cmap="coolwarm", s=2)
            axis.set_xlabel("angle, as a fraction of the range", fontsize=6)
        axis.set_title(f"{title} (seed {seed})", fontsize=7)
        axis.tick_params(labelsize=5)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)


def plot_k_sweep(plt, models, path):
    """Plot mean accuracies against K for the `dgc_k<K>` models; return True if there were any."""
    points = []
    for model, records in models.items():
        match = re.fullmatch(r"dgc_k(\d+)", model)
        if match:
            points.append((int(match.group(1)), records))
    if not points:
        return False
    points.sort()
    figure, axis = plt.subplots(figsize=(4.2, 3.0))
    for key, label in (
        ("test_accuracy", "clustering, unlabeled"),
        ("labeled_test_accuracy", "clustering, labeled"),
        ("classification_accuracy", "classification"),
    ):
        curve = [(k, np.mean(metric_values(records, key))) for k, records in points if metric_values(records, key)]
        if curve:
            axis.plot([k for k, _ in curve], [100 * value for _, value in curve], marker="o", label=label)
    axis.set_xlabel("number of clusters K", fontsize=7)
    axis.set_ylabel("test accuracy (%)", fontsize=7)
    axis.tick_params(labelsize=6)
    axis.legend(fontsize=6)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


# ---------------------------------------------------------------- page


def _epochs(record):
    if record.get("pretrain_epochs") is not None:
        return f"{record['pretrain_epochs']} + {record['epochs']}"
    return "–" if record.get("epochs") is None else str(record["epochs"])


def _seed_list(records):
    """Return the number of seeds and the seeds themselves, e.g. `3 (10, 11, 12)`."""
    seeds = sorted({record["seed"] for record in records})
    return f"{len(seeds)} ({', '.join(str(seed) for seed in seeds)})"


def experiment_section(experiment, records, run_dir, figure_dir, figure_link, plt):
    """Return the Markdown lines of one experiment and write its plots."""
    title = EXPERIMENTS[experiment]["title"] if experiment in EXPERIMENTS else experiment
    lines = [f"## {title}", ""]
    records, smoke = select_records(records)
    if smoke:
        lines += ["**Smoke run** (tiny data, one epoch): these figures test the machinery, not the method.", ""]
    skipped = [record for record in records if record.get("status") == "skipped"]
    failed = [record for record in records if record.get("status") == "failed"]
    models = by_model(records)
    for record in skipped[:1]:
        lines += [f"Skipped: {record['reason']}", ""]
    for record in failed:
        lines += [f"Failed: {record['model']} seed {record['seed']}: {record.get('reason', 'unknown error')}", ""]
    if not models:
        return lines

    columns = [(key, heading) for key, heading in ACCURACY_COLUMNS if any(
        metric_values(model_records, key) for model_records in models.values())]
    header = ["model"] + [heading for _, heading in columns] + [
        "seeds", "epochs (pretrain + fit)", "restarts", "seconds per seed", "peak memory (MB)", "paper"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, model_records in models.items():
        first = model_records[0]
        seconds = np.mean([record["seconds"] for record in model_records])
        memory = max(record["peak_rss_mb"] for record in model_records)
        cells = [model] + [format_summary(metric_values(model_records, key)) for key, _ in columns] + [
            _seed_list(model_records),
            _epochs(first),
            "–" if first.get("n_init") is None else str(first["n_init"]),
            f"{seconds:.0f}",
            f"{memory:.0f}",
            PAPER_FIGURES.get((experiment, model), "–"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total_seconds = sum(record["seconds"] for record in records if record.get("seconds") is not None)
    peak_memory = max(record["peak_rss_mb"] for model_records in models.values() for record in model_records)
    lines += [
        "",
        f"Accuracies in percent on the rows named in the heading; mean ± standard deviation and worst over "
        f"seeds. Run time of all jobs: {total_seconds / 60:.1f} minutes. Peak memory of any job: "
        f"{peak_memory:.0f} MB, measured as {records[0].get('memory_method', 'ru_maxrss')}.",
        "",
    ]

    bars = evaluate_bars(experiment, models)
    if bars:
        lines += ["| bar | measured | status |", "|---|---|---|"]
        lines += [f"| {bar} | {measured} | {status} |" for bar, measured, status in bars]
        lines.append("")

    images = []
    confusion_path = os.path.join(figure_dir, f"{experiment}_confusion.png")
    if experiment != "fashion_k_sweep" and plot_confusions(plt, run_dir, models, confusion_path):
        images.append(("Test confusion matrices (rows: predicted cluster, columns: true group)", confusion_path))
    dgc_records = models.get("dgc")
    found = dgc_records and _first_arrays(run_dir, "dgc", dgc_records)
    if found:
        seed, arrays = found
        latent_path = os.path.join(figure_dir, f"{experiment}_latent.png")
        plot_latent(plt, arrays, seed, latent_path)
        images.append(("DGC latent codes of test rows, first two principal components", latent_path))
        if "sample_x" in arrays:
            samples_path = os.path.join(figure_dir, f"{experiment}_samples.png")
            plot_pacman_samples(plt, arrays, seed, samples_path)
            images.append(("Test rows next to draws from the trained DGC (`DGC.sample`)", samples_path))
    sweep_path = os.path.join(figure_dir, f"{experiment}.png")
    if experiment == "fashion_k_sweep" and plot_k_sweep(plt, models, sweep_path):
        images.append(("Test accuracy against K (mean over seeds)", sweep_path))
    for caption, path in images:
        lines += [f"![{caption}]({figure_link}/{os.path.basename(path)})", "", f"*{caption}.*", ""]
    return lines


def load_runs(runs_dir):
    """Return `{experiment: records}` for every `<runs_dir>/<experiment>/results.jsonl`, known recipes first.

    Raises:
        InvalidRecords: a line of a results file is not a record, or a record
            names another experiment than the folder it is in.
    """
    found = sorted(os.path.basename(os.path.dirname(path)) for path in glob.glob(os.path.join(runs_dir, "*", "results.jsonl")))
    order = [name for name in EXPERIMENTS if name in found] + [name for name in found if name not in EXPERIMENTS]
    runs = {}
    for experiment in order:
        path = os.path.join(runs_dir, experiment, "results.jsonl")
        records = read_records(path)
        for record in records:
            if record.get("experiment", experiment) != experiment:
                raise InvalidRecords(
                    f"{path} contains a record of experiment {record['experiment']!r}, but its folder is named "
                    f"{experiment!r}. Move the file to {os.path.join(runs_dir, record['experiment'])}/."
                )
        runs[experiment] = records
    return runs


def build_page(runs_dir, runs, figure_dir, figure_link, notes_path, plt):
    """Return the Markdown text of the results page for `runs` (from `load_runs`); write the plots to `figure_dir`."""
    lines = [
        "# Experiment results",
        "",
        "Written by `python -m dgc_tf.training.results_report` from the runs in "
        f"`{runs_dir}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; edit the notes in "
        f"`{os.path.basename(notes_path)}`, not this page.",
        "",
        "Clustering accuracy is the best one-to-one matching of clusters to true groups (Hungarian "
        "algorithm); clusters left unmatched count as errors. \"Unlabeled\" uses no `y` "
        "(`model.predict(x)[\"cluster\"]`); \"labeled\" uses `y` (`model.predict_labeled(x, y)[\"cluster\"]`), "
        "which for VaDE equals the unlabeled rule. Classification accuracy compares the predicted class "
        "with `y`. Agglomerative clustering uses Ward linkage on at most 4,000 training rows and assigns "
        "the other rows to the nearest cluster centroid.",
        "",
    ]
    for experiment, records in runs.items():
        run_dir = os.path.join(runs_dir, experiment)
        lines += experiment_section(experiment, records, run_dir, figure_dir, figure_link, plt)

    lines += ["## Notes", ""]
    if os.path.exists(notes_path):
        with open(notes_path, encoding="utf-8") as file:
            lines += [file.read().rstrip(), ""]
    else:
        lines += [f"No notes yet. Write what was tried in `{os.path.basename(notes_path)}` beside this page; "
                  "the generator copies it here.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.join("runs", "experiments"), help="folder of the experiment runs")
    parser.add_argument("--out", default=os.path.join("docs", "results.md"), help="Markdown page to write")
    parser.add_argument("--notes", help="hand-written notes to include (default: results_notes.md beside --out)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs):
        parser.error(f"--runs {args.runs!r} is not a folder. Run `python -m dgc_tf.training.experiments` first.")
    if not args.out.endswith(".md"):
        parser.error(f"--out {args.out!r} must name a Markdown file ending in .md, for example docs/results.md.")
    if args.notes and not os.path.isfile(args.notes):
        parser.error(f"--notes {args.notes!r} is not a file. Pass an existing Markdown file, or leave --notes out.")
    if os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a folder. Name the page to write, for example {args.out}/results.md.")
    try:
        runs = load_runs(args.runs)
    except (InvalidRecords, OSError) as error:
        parser.error(str(error))
    if not any(runs.values()):
        # Checked before writing, so that a wrong --runs never replaces a page of real results with an empty one.
        parser.error(
            f"--runs {args.runs!r} has no records: expected <experiment>/results.jsonl files in it. "
            "Pass the --out folder of `python -m dgc_tf.training.experiments`, or run that first."
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = os.path.dirname(os.path.abspath(args.out))
    stem = os.path.splitext(os.path.basename(args.out))[0]
    figure_dir = os.path.join(out_dir, stem)
    try:
        os.makedirs(figure_dir, exist_ok=True)
    except OSError as error:
        parser.error(
            f"--out {args.out!r}: cannot create the plot folder {figure_dir!r} ({error.strerror}). "
            "Name a page in a folder that exists or can be created."
        )
    notes = args.notes or os.path.join(out_dir, f"{stem}_notes.md")
    page = build_page(args.runs, runs, figure_dir, stem, notes, plt)

    temporary = os.path.join(out_dir, f".{stem}.tmp-{os.getpid()}.md")
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(page)
        os.replace(temporary, args.out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"wrote {args.out} and the plots in {figure_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
