"""Loading and encoding the data files of the `dgc-tf` command line.

Four formats are read into one shape, `RawData`: a pandas frame of 1-D
columns plus, for array and image data, a feature block.

* CSV (`.csv`, `.tsv`, `.txt`) and Parquet (`.parquet`, `.pq`): every column
  is a column.
* NPZ: every 1-D array is a column (for example `y`, `groups`, `id`). The
  array named `x` is the feature block, flattened to one row per sample.
* NPY: a 2-D numeric array whose columns are named `0`, `1`, ...
* An image folder: one subfolder per class. The block holds the pixels
  (grayscale, resized to one size, scaled to [0, 1]); the columns are `label`
  (the subfolder name) and `path` (relative to the folder). Images directly in
  the folder get no label, which is how unlabeled images are predicted.

Numeric columns are used as they are; string, categorical and boolean
columns are one-hot encoded with the categories seen at training time. The
encoding is a JSON-serializable list (`FeatureSpec`) stored in the run
directory and reapplied for evaluation and prediction. This module imports
no TensorFlow, so bad input is rejected before TensorFlow loads.
"""

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TABLE_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".txt": ","}
PARQUET_EXTENSIONS = (".parquet", ".pq")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
IMAGE_LABEL_COLUMN = "label"
IMAGE_PATH_COLUMN = "path"

# A string column with more distinct values than this is free text or an id,
# not a category, and is rejected instead of one-hot encoded.
MAX_CATEGORIES = 50


class DataError(ValueError):
    """Invalid input data or options; the command line prints it and exits with code 2."""


@dataclass
class RawData:
    """A data file as loaded: 1-D columns and an optional feature block."""

    kind: str  # "table", "arrays" or "images"
    frame: pd.DataFrame
    block: np.ndarray | None = None
    block_name: str | None = None
    image_size: tuple | None = None
    source: str = ""

    @property
    def num_rows(self):
        return len(self.block) if self.block is not None else len(self.frame)

    @property
    def column_names(self):
        names = list(self.frame.columns)
        return names + [self.block_name] if self.block is not None else names

    def take(self, rows):
        """Return the data restricted to the rows of the boolean mask or index array `rows`."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        block = self.block[rows] if self.block is not None else None
        return RawData(
            self.kind, self.frame.iloc[rows].reset_index(drop=True), block, self.block_name, self.image_size, self.source
        )


@dataclass
class Selection:
    """The columns that play each role in a command."""

    target: str | None = None
    features: list | None = None
    id_column: str | None = None
    groups: str | None = None
    ignore: list = field(default_factory=list)


# ---------------------------------------------------------------------- loading


def load(path, image_size=None):
    """Read a CSV, Parquet, NPZ or NPY file or an image folder into `RawData`.

    Args:
        path: the file or folder.
        image_size: `(width, height)` of the images; by default the size of
            the first image.

    Raises:
        DataError: for a missing, empty, unreadable or unsupported input.
    """
    if not os.path.exists(path):
        raise DataError(f"Data file {path!r} not found.")
    if os.path.isdir(path):
        return _load_images(path, image_size)
    extension = os.path.splitext(path)[1].lower()
    if os.path.getsize(path) == 0:
        raise DataError(f"Data file {path!r} is empty.")
    if extension in TABLE_EXTENSIONS:
        data = _load_csv(path, TABLE_EXTENSIONS[extension])
    elif extension in PARQUET_EXTENSIONS:
        data = _load_parquet(path)
    elif extension == ".npz":
        data = _load_npz(path)
    elif extension == ".npy":
        data = _load_npy(path)
    else:
        raise DataError(
            f"Unsupported data format {extension or '(no extension)'!r} of {path!r}. Use .csv, .tsv, "
            ".parquet, .npz, .npy or a folder of images with one subfolder per class."
        )
    if data.num_rows == 0:
        raise DataError(f"Data file {path!r} has no rows.")
    return data


def _load_csv(path, separator):
    try:
        frame = pd.read_csv(path, sep=separator)
    except pd.errors.EmptyDataError:
        raise DataError(f"Data file {path!r} is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"Failed to parse {path!r} as CSV: {error}") from None
    return RawData("table", frame, source=path)


def _load_parquet(path):
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as error:
        raise DataError(f"Failed to read {path!r} as Parquet: {error}") from None
    return RawData("table", frame, source=path)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"Failed to read {path!r} as NPZ (object arrays are not supported): {error}") from None
    if not arrays:
        raise DataError(f"Data file {path!r} contains no arrays.")
    if "x" not in arrays:
        raise DataError(f"{path!r} has no array named 'x' (the features). Arrays: {sorted(arrays)}.")
    block = arrays.pop("x")
    if block.ndim < 2:
        raise DataError(f"Array 'x' of {path!r} must have one row per sample and at least 2 dimensions; shape {block.shape}.")
    columns = {}
    for name, array in arrays.items():
        if array.ndim != 1 or len(array) != len(block):
            raise DataError(
                f"Array {name!r} of {path!r} has shape {array.shape}; every array besides 'x' must be 1-D "
                f"with one value per row of 'x' ({len(block)} rows)."
            )
        columns[name] = array
    block = block.reshape(len(block), -1)
    if block.dtype.kind not in "biuf":
        raise DataError(f"Array 'x' of {path!r} has dtype {block.dtype}; it must be numeric.")
    return RawData("arrays", pd.DataFrame(columns), block, "x", source=path)


def _load_npy(path):
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"Failed to read {path!r} as NPY (object arrays are not supported): {error}") from None
    if array.ndim != 2:
        raise DataError(
            f"{path!r} has shape {array.shape}; an NPY file must be a 2-D table whose columns are "
            "named 0, 1, ... Use NPZ with arrays 'x' and 'y' for images or other arrays."
        )
    frame = pd.DataFrame(array, columns=[str(index) for index in range(array.shape[1])])
    return RawData("table", frame, source=path)


def _image_files(folder):
    """Return `(relative path, label)` pairs: images in subfolders get the subfolder name as label."""
    entries = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(full):
            for root, directories, files in os.walk(full):
                directories[:] = sorted(d for d in directories if not d.startswith("."))
                for file_name in sorted(files):
                    if file_name.lower().endswith(IMAGE_EXTENSIONS) and not file_name.startswith("."):
                        entries.append((os.path.relpath(os.path.join(root, file_name), folder), name))
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            entries.append((name, None))
    return entries


def _load_images(folder, image_size):
    from PIL import Image, UnidentifiedImageError

    entries = _image_files(folder)
    if not entries:
        raise DataError(
            f"Image folder {folder!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "put one subfolder per class with the images inside."
        )
    pixels, unreadable = [], []
    for relative_path, _ in entries:
        try:
            with Image.open(os.path.join(folder, relative_path)) as image:
                image = image.convert("L")
                if image_size is None:
                    image_size = image.size
                image = image.resize(tuple(image_size), Image.Resampling.BILINEAR)
                pixels.append(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)
        except (OSError, UnidentifiedImageError, ValueError):
            unreadable.append(relative_path)
    if unreadable:
        raise DataError(
            f"{len(unreadable)} image file(s) in {folder!r} cannot be read: {unreadable[:5]}. "
            "Remove or replace them."
        )
    labels = [label for _, label in entries]
    columns = {IMAGE_PATH_COLUMN: [path for path, _ in entries]}
    if any(label is not None for label in labels):
        columns[IMAGE_LABEL_COLUMN] = pd.Series(labels, dtype=object)
    return RawData("images", pd.DataFrame(columns), np.stack(pixels), "pixels", tuple(image_size), folder)


# ---------------------------------------------------------------------- selection


def check_columns(data, names, allow_block=False):
    """Raise DataError naming the first of `names` that `data` lacks."""
    available = data.column_names if allow_block else list(data.frame.columns)
    for name in names:
        if name is not None and name not in available:
            listed_columns = ", ".join(map(str, available[:30])) + (" ..." if len(available) > 30 else "")
            raise DataError(f"Column {name!r} not found in {data.source!r}. Available columns: {listed_columns}.")


def feature_columns(data, selection):
    """Return the names of the feature columns: the chosen ones, or all the others."""
    if selection.features:
        check_columns(data, selection.features, allow_block=True)
        roles = {selection.target: "target", selection.id_column: "id column", selection.groups: "groups column"}
        for name in selection.features:
            if name in roles and name is not None:
                raise DataError(f"Column {name!r} is the {roles[name]} and cannot also be a feature.")
        return list(selection.features)
    check_columns(data, selection.ignore, allow_block=True)
    excluded = {selection.target, selection.id_column, selection.groups, *selection.ignore}
    if data.kind == "images":
        excluded |= {IMAGE_LABEL_COLUMN, IMAGE_PATH_COLUMN}
    names = [name for name in data.column_names if name not in excluded]
    if not names:
        raise DataError(f"No feature columns are left in {data.source!r} after removing the target and id columns.")
    return names


def _is_numeric(series):
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _is_encodable_text(series):
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series):
        return True
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        values = series.dropna()
        return all(isinstance(value, (str, bool, np.bool_)) for value in values)
    return False


def build_feature_spec(data, columns):
    """Decide how each feature column is encoded, from the training data.

    Returns:
        A JSON-serializable list with one entry per column: `numeric`,
        `onehot` (with its sorted categories) or `block` (with its width).

    Raises:
        DataError: for non-numeric columns that cannot be one-hot encoded.
    """
    spec, rejected = [], []
    for name in columns:
        if name == data.block_name:
            spec.append({"column": name, "kind": "block", "width": int(data.block.shape[1])})
            continue
        series = data.frame[name]
        if _is_numeric(series):
            spec.append({"column": name, "kind": "numeric"})
        elif _is_encodable_text(series):
            categories = sorted({str(value) for value in series.dropna()})
            if len(categories) > MAX_CATEGORIES:
                rejected.append(f"{name!r} ({len(categories)} distinct text values, more than {MAX_CATEGORIES})")
            else:
                spec.append({"column": name, "kind": "onehot", "categories": categories})
        else:
            rejected.append(f"{name!r} (dtype {series.dtype})")
    if rejected:
        raise DataError(
            "Non-numeric feature column(s) cannot be encoded: " + ", ".join(rejected) + ". Leave them out with "
            "--features or --ignore, or pass an id column as --id-column."
        )
    return spec


def feature_names(spec):
    """Return the name of each encoded feature: the column, `column=category`, or `x[i]`."""
    names = []
    for entry in spec:
        if entry["kind"] == "numeric":
            names.append(entry["column"])
        elif entry["kind"] == "onehot":
            names += [f"{entry['column']}={category}" for category in entry["categories"]]
        else:
            names += [f"{entry['column']}[{index}]" for index in range(entry["width"])]
    return names


def encode_features(data, spec):
    """Apply a feature spec to data, returning a float32 matrix and the count of unseen categories.

    Categories not seen at training time encode as all zeros in that column's
    one-hot block.
    """
    parts, unseen = [], {}
    for entry in spec:
        name = entry["column"]
        if entry["kind"] == "block":
            if data.block is None or data.block_name != name:
                raise DataError(f"Feature block {name!r} not found in {data.source!r}.")
            if data.block.shape[1] != entry["width"]:
                raise DataError(
                    f"Feature block {name!r} of {data.source!r} has {data.block.shape[1]} values per row; "
                    f"the model was trained on {entry['width']}."
                )
            parts.append(data.block.astype(np.float32))
            continue
        series = data.frame[name]
        if entry["kind"] == "numeric":
            if not _is_numeric(series):
                raise DataError(f"Column {name!r} of {data.source!r} must be numeric, as at training time; dtype {series.dtype}.")
            parts.append(series.to_numpy(dtype=np.float32).reshape(-1, 1))
        else:
            text = series.astype(str).to_numpy()
            categories = np.asarray(entry["categories"], dtype=object)
            one_hot = (text[:, None] == categories[None, :]).astype(np.float32)
            missing_category = int((one_hot.sum(axis=1) == 0).sum())
            if missing_category:
                unseen[name] = missing_category
            parts.append(one_hot)
    return np.concatenate(parts, axis=1), unseen


def missing_rows(data, columns):
    """Return a boolean mask of rows with a missing value and the per-column counts."""
    mask = np.zeros(data.num_rows, dtype=bool)
    counts = {}
    for name in columns:
        if name is None:
            continue
        if name == data.block_name:
            column_mask = ~np.isfinite(data.block.astype(np.float64)).all(axis=1)
        else:
            series = data.frame[name]
            column_mask = series.isna().to_numpy()
            if _is_numeric(series):
                column_mask = column_mask | ~np.isfinite(series.to_numpy(dtype=np.float64, na_value=np.nan))
        if column_mask.any():
            counts[name] = int(column_mask.sum())
            mask |= column_mask
    return mask, counts


def drop_or_reject_missing(data, columns, drop):
    """Drop the rows with missing values in `columns` when `drop`, else raise DataError naming them."""
    mask, counts = missing_rows(data, columns)
    if not mask.any():
        return data, 0
    if not drop:
        listed = ", ".join(f"{name!r} ({count})" for name, count in counts.items())
        raise DataError(
            f"{int(mask.sum())} row(s) of {data.source!r} have missing values, in column(s) {listed}. "
            "Pass --drop-missing to drop those rows, or fill the values in."
        )
    remaining = data.take(~mask)
    if remaining.num_rows == 0:
        raise DataError(f"Every row of {data.source!r} has a missing value, so nothing is left after --drop-missing.")
    return remaining, int(mask.sum())


def column_values(data, name):
    """Return a 1-D NumPy array of a column, with pandas string columns as str objects."""
    series = data.frame[name]
    if _is_numeric(series) or pd.api.types.is_bool_dtype(series):
        return series.to_numpy()
    return series.astype(str).to_numpy(dtype=object)


def check_target(values, response, name):
    """Raise DataError unless `values` suit the response family."""
    distinct = pd.unique(pd.Series(values))
    if len(distinct) < 2:
        raise DataError(
            f"Target column {name!r} has a single value ({distinct[0] if len(distinct) else 'none'!r}); "
            "it must take at least two values."
        )
    if response == "gaussian":
        if not np.issubdtype(np.asarray(values).dtype, np.number):
            raise DataError(
                f"Target column {name!r} is not numeric, so --response gaussian cannot model it. "
                "Use --response categorical for class labels."
            )
    elif response == "bernoulli" and len(distinct) != 2:
        raise DataError(
            f"--response bernoulli needs a target with exactly 2 values; {name!r} has {len(distinct)}. "
            "Use --response categorical."
        )
    elif response == "categorical" and np.asarray(values).dtype.kind == "f" and np.any(values != np.round(values)):
        raise DataError(
            f"Target column {name!r} contains non-integer numbers, which are not class labels. "
            "Use --response gaussian for a continuous target."
        )
