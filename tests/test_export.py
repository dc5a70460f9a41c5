"""Tests for dgc_tf.export: SavedModel and ONNX export, predictors and the command line."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import dgc_tf
from dgc_tf.export import contract, export_model, load
from dgc_tf.export.cli import main
from dgc_tf.export.onnx_conversion import convert_predict_function
from dgc_tf.export.onnx_predictor import OnnxPredictor
from dgc_tf.export.savedmodel_predictor import SavedModelPredictor

FAMILIES = ("categorical", "bernoulli", "gaussian")
BATCH_SIZES = (1, 37)
NUM_ROWS = 240
NUM_FEATURES = 6
LATENT_DIM = 3
NUM_CLUSTERS = 3
TOLERANCE = 1e-5
PYTHON = sys.executable
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
PREDICT_OUTPUTS = ("cluster", "cluster_probs", "y_pred", "z_mean")


def make_data(response, seed=0):
    """Return raw features (offset 50, scale 10, three blobs) and a response of the given family."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(NUM_CLUSTERS, NUM_FEATURES))
    groups = rng.integers(0, NUM_CLUSTERS, NUM_ROWS)
    x = (50.0 + 10.0 * (centers[groups] + rng.normal(size=(NUM_ROWS, NUM_FEATURES)))).astype(np.float32)
    if response == "categorical":
        y = np.array(["ant", "bee", "cat"])[groups]
    elif response == "bernoulli":
        y = np.where(groups == 0, 1, 2)  # integer labels that are not 0 and 1
    else:
        y = (groups - 1.0 + 0.3 * rng.normal(size=NUM_ROWS)).astype(np.float32)
    return x, y


def build_model(response):
    return dgc_tf.DGC(
        num_clusters=NUM_CLUSTERS, response=response, latent_dim=LATENT_DIM, encoder_units=(16, 16), seed=0
    )


def train_model(response, x, y):
    model = build_model(response)
    model.pretrain(x, y, epochs=1, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    return model


def in_memory_outputs(model, x):
    """Return model.predict's outputs plus the decoded labels that the exports add as `y_label`."""
    outputs = model.predict(x, verbose=0)
    if model.response in contract.CLASS_RESPONSES:
        outputs["y_label"] = model.predict_labels(x, verbose=0)
    return outputs


def assert_outputs_agree(expected, actual, context):
    assert sorted(actual) == sorted(expected), context
    for name in expected:
        want, got = np.asarray(expected[name]), np.asarray(actual[name])
        assert got.shape == want.shape, f"{context}: {name}"
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=f"{context}: {name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{context}: {name}")


def is_random_tf_op(op):
    return "Random" in op or "Multinomial" in op or "TruncatedNormal" in op or op.startswith("Rng")


def is_random_onnx_op(op_type):
    return op_type.startswith("Random") or op_type in ("Multinomial", "Bernoulli")


def read_metadata(version_dir):
    with open(os.path.join(version_dir, contract.METADATA_FILENAME), encoding="utf-8") as file:
        return json.load(file)


def saved_model_ops(version_dir):
    """Return the op types of every graph and function in saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, contract.SAVED_MODEL_FILENAME), "rb") as file:
        saved_model.ParseFromString(file.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


@dataclass
class Exported:
    response: str
    model: object
    x: np.ndarray
    y: np.ndarray
    path: str


@dataclass
class CliRun:
    process: subprocess.Popen
    outdir: str
    stdout_path: str
    stderr_path: str


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def exports(base_dir):
    """One trained and exported model per response family, as `<base>/<family>/1`."""
    result = {}
    for response in FAMILIES:
        x, y = make_data(response)
        model = train_model(response, x, y)
        result[response] = Exported(response, model, x, y, export_model(model, base_dir, response))
    return result


@pytest.fixture(scope="module")
def predictors(exports):
    """A SavedModel and an ONNX predictor per family, loaded once for the module."""
    return {
        response: (SavedModelPredictor(exported.path), OnnxPredictor(exported.path))
        for response, exported in exports.items()
    }


@pytest.fixture(scope="module")
def saved_model_cli_runs(exports, tmp_path_factory):
    """Start `saved_model_cli show` and `run` for every export at once; each start costs seconds."""
    work = tmp_path_factory.mktemp("saved_model_cli")
    runs = {}

    def start(key, arguments):
        # Output goes to files, so a full pipe can never block a process.
        stem = str(work / "_".join(map(str, key)))
        command = [SAVED_MODEL_CLI] + arguments
        if arguments[0] == "run":
            command += ["--outdir", stem]
        with open(stem + ".stdout", "w") as stdout, open(stem + ".stderr", "w") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        runs[key] = CliRun(process, stem, stem + ".stdout", stem + ".stderr")

    for response, exported in exports.items():
        start((response, "show"), ["show", "--all", "--dir", exported.path])
        for batch_size in BATCH_SIZES:
            inputs = str(work / f"{response}_x_{batch_size}.npy")
            np.save(inputs, exported.x[:batch_size])
            start(
                (response, "run", batch_size),
                ["run", "--dir", exported.path, "--tag_set", "serve", "--signature_def",
                 contract.PREDICT_SIGNATURE, "--inputs", f"x={inputs}"],
            )
    categorical = exports["categorical"]
    labeled_x, labeled_y = str(work / "labeled_x.npy"), str(work / "labeled_y.npy")
    np.save(labeled_x, categorical.x[:5])
    np.save(labeled_y, categorical.y[:5])
    start(
        ("categorical", "labeled"),
        ["run", "--dir", categorical.path, "--tag_set", "serve", "--signature_def",
         contract.LABELED_SIGNATURE, "--inputs", f"x={labeled_x};y={labeled_y}"],
    )
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()


def finish(run):
    """Wait for a saved_model_cli process and return its standard output."""
    run.process.wait(timeout=300)
    with open(run.stderr_path) as stderr:
        assert run.process.returncode == 0, stderr.read()[-3000:]
    with open(run.stdout_path) as stdout:
        return stdout.read()


def read_cli_outputs(run):
    finish(run)
    outputs = {}
    for filename in os.listdir(run.outdir):
        value = np.load(os.path.join(run.outdir, filename), allow_pickle=True)
        if value.dtype == object:
            value = np.array([item.decode("utf-8") for item in value], dtype=object)
        outputs[filename[: -len(".npy")]] = value
    return outputs


@pytest.fixture(scope="module")
def keras_file(exports, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keras") / "model.keras")
    exports["categorical"].model.save(path)
    return path


# ---------------------------------------------------------------- layout and metadata


@pytest.mark.parametrize("response", FAMILIES)
def test_version_directory_layout(exports, base_dir, saved_model_cli_runs, response):
    # Requesting saved_model_cli_runs here starts those processes early, so
    # they run while the tests below do.
    path = exports[response].path

    assert path == os.path.join(base_dir, response, "1")
    files = set(os.listdir(path))
    assert {contract.SAVED_MODEL_FILENAME, "variables", contract.ONNX_FILENAME, contract.METADATA_FILENAME} <= files
    # No temporary directory is left next to the version.
    assert os.listdir(os.path.join(base_dir, response)) == ["1"]


def test_version_directory_readable_by_others(exports):
    # The staging directory comes from mkdtemp (mode 0700); a model server
    # running as another user must still be able to read the version.
    umask = os.umask(0)
    os.umask(umask)

    mode = os.stat(exports["gaussian"].path).st_mode & 0o777

    assert mode == 0o777 & ~umask


@pytest.mark.parametrize("response", FAMILIES)
def test_metadata_json(exports, response):
    exported = exports[response]
    metadata = read_metadata(exported.path)

    assert metadata["num_clusters"] == NUM_CLUSTERS
    assert metadata["num_features"] == NUM_FEATURES
    assert metadata["latent_dim"] == LATENT_DIM
    assert metadata["response"] == response
    assert metadata["version"] == 1
    assert metadata["classes"] == exported.model.classes
    assert metadata["onnx"]["opset"] == contract.ONNX_OPSET
    assert metadata["onnx"]["inputs"] == ["x"]
    assert set(metadata["versions"]) >= {"dgc_tf", "tensorflow", "tf2onnx"}
    assert metadata["versions"]["tensorflow"] == tf.__version__
    assert metadata["versions"]["dgc_tf"] == dgc_tf.__version__
    np.testing.assert_allclose(metadata["preprocessing"]["feature_offset"], exported.model.feature_offset.numpy())
    np.testing.assert_allclose(metadata["preprocessing"]["feature_scale"], exported.model.feature_scale.numpy())
    assert sorted(metadata["signatures"]) == sorted(contract.SIGNATURES)
    predict = metadata["signatures"][contract.PREDICT_SIGNATURE]
    assert predict["inputs"] == {"x": {"dtype": "float32", "shape": [None, NUM_FEATURES]}}
    assert predict["outputs"]["cluster"] == {"dtype": "int64", "shape": [None]}
    assert predict["outputs"]["cluster_probs"] == {"dtype": "float32", "shape": [None, NUM_CLUSTERS]}
    assert predict["outputs"]["z_mean"] == {"dtype": "float32", "shape": [None, LATENT_DIM]}


def test_metadata_labels_and_response_scaling(exports):
    categorical = read_metadata(exports["categorical"].path)
    bernoulli = read_metadata(exports["bernoulli"].path)
    gaussian = read_metadata(exports["gaussian"].path)

    assert categorical["classes"] == ["ant", "bee", "cat"]
    assert categorical["label_dtype"] == "string"
    assert bernoulli["classes"] == [1, 2]
    assert bernoulli["label_dtype"] == "int64"
    assert gaussian["classes"] is None
    assert gaussian["preprocessing"]["response_scale"] == pytest.approx(
        float(exports["gaussian"].model.response_scale.numpy())
    )


@pytest.mark.parametrize("response", FAMILIES)
def test_onnx_metadata_props_match_json(exports, response):
    path = exports[response].path
    metadata = read_metadata(path)
    onnx_model = onnx.load(os.path.join(path, contract.ONNX_FILENAME))
    properties = {entry.key: json.loads(entry.value) for entry in onnx_model.metadata_props}

    assert properties == metadata
    assert [opset.version for opset in onnx_model.opset_import if opset.domain in ("", "ai.onnx")] == [
        contract.ONNX_OPSET
    ]
    assert onnx_model.model_version == 1


# ---------------------------------------------------------------- agreement across runtimes


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("response", FAMILIES)
def test_savedmodel_and_onnx_match_model(exports, predictors, response, batch_size):
    exported = exports[response]
    saved_model, onnx_runtime = predictors[response]
    rows = exported.x[:batch_size]
    expected = in_memory_outputs(exported.model, rows)

    # saved_model.loaded is the object returned by tf.saved_model.load.
    raw = saved_model.loaded.signatures[contract.PREDICT_SIGNATURE](x=tf.constant(rows))
    from_signature = {name: tensor.numpy() for name, tensor in raw.items()}
    if "y_label" in from_signature and from_signature["y_label"].dtype == object:
        from_signature["y_label"] = np.array([label.decode() for label in from_signature["y_label"]], dtype=object)

    assert_outputs_agree(expected, from_signature, "tf.saved_model.load")
    assert_outputs_agree(expected, saved_model.predict(rows), "SavedModelPredictor")
    assert_outputs_agree(expected, onnx_runtime.predict(rows), "ONNX Runtime")


def test_conv_encoder_model_exports_and_onnx_matches(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((96, 8 * 8 * 1)).astype(np.float32)
    y = np.where(x[:, :32].mean(axis=1) > x[:, 32:].mean(axis=1), "top", "bottom")
    model = dgc_tf.DGC(
        num_clusters=2,
        response="categorical",
        latent_dim=LATENT_DIM,
        encoder_units=(8,),
        likelihood="bernoulli",
        encoder="conv",
        image_shape=(8, 8, 1),
        seed=0,
    )
    model.pretrain(x, y, epochs=1, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)

    path = export_model(model, str(tmp_path), "conv")
    onnx_runtime = OnnxPredictor(path)

    for batch_size in BATCH_SIZES:
        rows = x[:batch_size]
        assert_outputs_agree(in_memory_outputs(model, rows), onnx_runtime.predict(rows), f"conv, batch {batch_size}")


@pytest.mark.parametrize("response", FAMILIES)
def test_onnx_outputs_have_signature_names_and_order(predictors, response):
    saved_model, onnx_runtime = predictors[response]
    predict = saved_model.signatures[contract.PREDICT_SIGNATURE]
    session = onnx_runtime.session

    signature_outputs = list(predict.structured_outputs)
    assert [graph_input.name for graph_input in session.get_inputs()] == ["x"]
    assert [output.name for output in session.get_outputs()] == sorted(signature_outputs)
    assert sorted(signature_outputs) == sorted(
        PREDICT_OUTPUTS + (("y_label",) if response in contract.CLASS_RESPONSES else ())
    )


def test_labels_decoded_in_graph(exports, predictors):
    categorical = exports["categorical"]
    bernoulli = exports["bernoulli"]

    labels = predictors["categorical"][1].predict(categorical.x)["y_label"]
    assert set(labels) <= {"ant", "bee", "cat"}
    np.testing.assert_array_equal(labels, categorical.model.predict_labels(categorical.x, verbose=0))
    integer_labels = predictors["bernoulli"][0].predict(bernoulli.x)["y_label"]
    assert integer_labels.dtype == np.int64
    assert set(integer_labels.tolist()) <= {1, 2}


def test_boolean_labels_round_trip(base_dir):
    x, _ = make_data("bernoulli")
    y = x[:, 0] > np.median(x[:, 0])
    model = train_model("bernoulli", x, y)

    path = export_model(model, base_dir, "boolean")

    expected_labels = model.predict_labels(x[:37], verbose=0)
    for predictor in (SavedModelPredictor(path), OnnxPredictor(path)):
        labels = predictor.predict(x[:37])["y_label"]
        assert labels.dtype == np.bool_
        np.testing.assert_array_equal(labels, expected_labels)
    labeled = SavedModelPredictor(path).predict_labeled(x[:37], y[:37])
    np.testing.assert_allclose(
        labeled["cluster_probs"], model.predict_labeled(x[:37], y[:37])["cluster_probs"], rtol=0, atol=TOLERANCE
    )


# ---------------------------------------------------------------- the other signatures


@pytest.mark.parametrize("response", FAMILIES)
def test_cluster_labeled_matches_model(exports, predictors, response):
    exported = exports[response]
    expected = exported.model.predict_labeled(exported.x[:37], exported.y[:37])

    actual = predictors[response][0].predict_labeled(exported.x[:37], exported.y[:37])

    np.testing.assert_allclose(actual["cluster_probs"], expected["cluster_probs"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(actual["cluster"], expected["cluster"])


def test_cluster_labeled_rejects_unknown_label(exports, predictors):
    exported = exports["categorical"]
    predictor = predictors["categorical"][0]

    with pytest.raises(tf.errors.InvalidArgumentError, match="not trained on.*zebra"):
        predictor.predict_labeled(exported.x[:2], ["ant", "zebra"])


@pytest.mark.parametrize("response", FAMILIES)
def test_prior_signature(exports, predictors, response):
    exported = exports[response]
    prior = predictors[response][0].prior()
    model_prior = exported.model.prior

    assert prior["pi"].shape == (NUM_CLUSTERS,)
    assert np.all(prior["pi"] > 0)
    assert prior["pi"].sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(prior["pi"], np.exp(model_prior.log_mixture_weights().numpy()), atol=1e-7)
    np.testing.assert_allclose(prior["mu"], model_prior.component_means.numpy(), atol=1e-7)
    np.testing.assert_allclose(prior["sigma2"], model_prior.variances().numpy(), atol=1e-7)


@pytest.mark.parametrize("response", FAMILIES)
def test_decode_signature(exports, predictors, response):
    exported = exports[response]
    model = exported.model
    z = np.random.default_rng(1).normal(size=(4, LATENT_DIM)).astype(np.float32)
    expected_x = model.decoder.mean(model.decoder(z)).numpy() * model.feature_scale.numpy()
    expected_x += model.feature_offset.numpy()
    head_means = model.heads.mean(model.heads(z)).numpy()

    decoded = predictors[response][0].decode(z)

    np.testing.assert_allclose(decoded["x_mean"], expected_x, rtol=1e-5, atol=1e-4)
    if response == "gaussian":
        scale, offset = model.response_scale.numpy(), model.response_offset.numpy()
        np.testing.assert_allclose(decoded["y_mean"], head_means * scale + offset, rtol=1e-5, atol=TOLERANCE)
        assert decoded["y_variance"].shape == (4, NUM_CLUSTERS)
        assert np.all(decoded["y_variance"] > 0)
    else:
        np.testing.assert_allclose(decoded["y_probs"], head_means, atol=TOLERANCE)
        expected_shape = (4, NUM_CLUSTERS, 3) if response == "categorical" else (4, NUM_CLUSTERS)
        assert decoded["y_probs"].shape == expected_shape


# ---------------------------------------------------------------- hard inputs


@pytest.mark.parametrize("response", FAMILIES)
def test_float64_input_matches_float32(exports, predictors, response):
    exported = exports[response]
    rows32 = exported.x[:37]
    rows64 = rows32.astype(np.float64)

    for predictor in predictors[response]:
        from_float32 = predictor.predict(rows32)
        from_float64 = predictor.predict(rows64)
        for name in from_float32:
            np.testing.assert_array_equal(from_float64[name], from_float32[name], err_msg=name)
    model_outputs = exported.model.predict(rows64, verbose=0)
    np.testing.assert_array_equal(model_outputs["cluster_probs"], exported.model.predict(rows32, verbose=0)["cluster_probs"])


@pytest.mark.parametrize("response", FAMILIES)
def test_row_far_from_data(exports, predictors, response):
    exported = exports[response]
    model = exported.model
    far_row = model.feature_offset.numpy() + 1000.0 * model.feature_scale.numpy()
    rows = np.vstack([exported.x[:4], far_row[np.newaxis]]).astype(np.float32)

    weights = {
        "model.predict": model.predict(rows, verbose=0)["cluster_probs"],
        "SavedModel": predictors[response][0].predict(rows)["cluster_probs"],
        "ONNX Runtime": predictors[response][1].predict(rows)["cluster_probs"],
    }

    for runtime, probs in weights.items():
        assert np.all(np.isfinite(probs)), runtime
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=TOLERANCE, err_msg=runtime)
        np.testing.assert_array_equal(probs.argmax(axis=1), weights["model.predict"].argmax(axis=1), err_msg=runtime)
        np.testing.assert_allclose(probs, weights["model.predict"], rtol=0, atol=TOLERANCE, err_msg=runtime)


def test_assignments_follow_training(base_dir):
    x, y = make_data("categorical", seed=3)
    model = build_model("categorical")
    model.pretrain(x, y, epochs=1, verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2))
    snapshots = {}
    for epochs_so_far, epochs_now in ((0, 0), (1, 1), (5, 4)):
        if epochs_now:
            model.fit(x, y, epochs=epochs_now, verbose=0)
        path = export_model(model, base_dir, "assignments")
        snapshots[epochs_so_far] = (path, model.predict(x, verbose=0), np.exp(model.prior.log_mixture_weights()))

    for epochs, (path, expected, expected_pi) in snapshots.items():
        context = f"after {epochs} epochs"
        saved_model = SavedModelPredictor(path)
        np.testing.assert_array_equal(saved_model.predict(x)["cluster"], expected["cluster"], err_msg=context)
        np.testing.assert_array_equal(OnnxPredictor(path).predict(x)["cluster"], expected["cluster"], err_msg=context)
        np.testing.assert_allclose(saved_model.prior()["pi"], expected_pi, atol=1e-7, err_msg=context)
    assert [os.path.basename(path) for path, _, _ in snapshots.values()] == ["1", "2", "3"]
    assert np.any(snapshots[0][1]["cluster"] != snapshots[5][1]["cluster"])
    assert not np.allclose(snapshots[0][2], snapshots[5][2])


def test_no_random_ops_and_repeatable(exports, predictors):
    assert is_random_tf_op("StatelessRandomNormalV2")
    assert is_random_tf_op("Multinomial")
    for response, exported in exports.items():
        random_tf_ops = sorted(op for op in saved_model_ops(exported.path) if is_random_tf_op(op))
        onnx_ops = {node.op_type for node in onnx.load(os.path.join(exported.path, contract.ONNX_FILENAME)).graph.node}

        assert random_tf_ops == [], response
        assert sorted(op for op in onnx_ops if is_random_onnx_op(op)) == [], response
        for predictor in predictors[response]:
            first, second = predictor.predict(exported.x), predictor.predict(exported.x)
            for name in first:
                np.testing.assert_array_equal(first[name], second[name], err_msg=f"{response}: {name}")


# ---------------------------------------------------------------- conversion handlers


def test_conversion_handlers_match_tensorflow():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 1, 3], tf.float32, name="a"),
            tf.TensorSpec([None], tf.float32, name="b"),
            tf.TensorSpec([None], tf.float32, name="c"),
        ]
    )
    def function(a, b, c):
        # BroadcastArgs of a rank-3 and a rank-2 shape; MulNoNan with NaN and inf in `b`.
        return {
            "shape": tf.broadcast_dynamic_shape(tf.shape(a), tf.constant([4, 3])),
            "product": tf.math.multiply_no_nan(b, c),
        }

    onnx_model = convert_predict_function(function, list(function.input_signature))
    node_types = {node.op_type for node in onnx_model.graph.node}
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        "a": np.zeros((2, 1, 3), np.float32),
        "b": np.array([np.nan, 2.0, np.inf], np.float32),
        "c": np.array([0.0, 3.0, 0.0], np.float32),
    }
    results = dict(zip([output.name for output in session.get_outputs()], session.run(None, feeds)))
    expected = function(**feeds)

    assert "BroadcastArgs" not in node_types
    assert "MulNoNan" not in node_types
    np.testing.assert_array_equal(results["shape"], expected["shape"].numpy())
    np.testing.assert_array_equal(results["shape"], [2, 4, 3])
    np.testing.assert_array_equal(results["product"], [0.0, 6.0, 0.0])


# ---------------------------------------------------------------- errors and versions


def test_untrained_and_unbuilt_models_rejected(base_dir):
    x, y = make_data("categorical")
    adapted_only = build_model("categorical").adapt(x, y)

    with pytest.raises(ValueError, match="not built"):
        export_model(build_model("categorical"), base_dir, "errors")
    with pytest.raises(ValueError, match="untrained.*pretrain"):
        export_model(adapted_only, base_dir, "errors")
    with pytest.raises(TypeError, match="dgc_tf.DGC"):
        export_model(keras.Sequential([keras.layers.Dense(1)]), base_dir, "errors")
    assert not os.path.exists(os.path.join(base_dir, "errors"))


def test_invalid_targets_rejected(exports, base_dir, tmp_path):
    model = exports["gaussian"].model
    missing_base = str(tmp_path / "missing")

    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        export_model(model, missing_base, "demo")
    with pytest.raises(ValueError, match="name="):
        export_model(model, base_dir, "../escape")
    with pytest.raises(ValueError, match="name="):
        export_model(model, base_dir, ".hidden")
    with pytest.raises(ValueError, match="version=-1"):
        export_model(model, base_dir, "demo", version=-1)
    with pytest.raises(ValueError, match="version=True"):
        export_model(model, base_dir, "demo", version=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_model(model, base_dir, "gaussian", version=1)


def test_unsupported_response_family_rejected(exports, base_dir, monkeypatch):
    monkeypatch.setitem(contract.SUPPORTED_RESPONSES, "onnx", ("categorical",))

    with pytest.raises(ValueError, match="onnx export does not support response='gaussian'.*include_onnx=False"):
        export_model(exports["gaussian"].model, base_dir, "unsupported")
    path = export_model(exports["gaussian"].model, base_dir, "unsupported", include_onnx=False)
    assert contract.ONNX_FILENAME not in os.listdir(path)
    assert read_metadata(path)["onnx"] is None


def test_versions_and_overwrite(exports, base_dir):
    model = exports["bernoulli"].model
    model_dir = os.path.join(base_dir, "versions")
    os.makedirs(os.path.join(model_dir, "7"))  # an empty version directory contains no model
    os.makedirs(os.path.join(model_dir, ".tmp-8-left-by-a-killed-export"))

    # Without ONNX, to save time: the version handling is the same.
    assert export_model(model, base_dir, "versions", version=7, include_onnx=False) == os.path.join(model_dir, "7")
    assert export_model(model, base_dir, "versions", include_onnx=False) == os.path.join(model_dir, "8")
    marker = os.path.join(model_dir, "8", "marker")
    open(marker, "w").close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_model(model, base_dir, "versions", version=8, include_onnx=False)
    replaced = export_model(model, base_dir, "versions", version=8, overwrite=True, include_onnx=False)
    assert replaced == os.path.join(model_dir, "8")
    assert not os.path.exists(marker)
    assert sorted(os.listdir(model_dir)) == [".tmp-8-left-by-a-killed-export", "7", "8"]
    np.testing.assert_array_equal(
        load(model_dir).predict(exports["bernoulli"].x)["cluster"],
        model.predict(exports["bernoulli"].x, verbose=0)["cluster"],
    )


def test_load_dispatches_by_path_and_format(exports):
    path = exports["categorical"].path

    assert isinstance(load(path), SavedModelPredictor)
    assert isinstance(load(path, format="onnx"), OnnxPredictor)
    assert isinstance(load(os.path.join(path, contract.ONNX_FILENAME)), OnnxPredictor)
    assert isinstance(load(os.path.dirname(path)), SavedModelPredictor)
    assert load(path, format="onnx").metadata["classes"] == ["ant", "bee", "cat"]
    assert load(path).metadata["classes"] == ["ant", "bee", "cat"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(os.path.join(path, "missing"))
    with pytest.raises(ValueError, match="format="):
        load(path, format="tflite")
    with pytest.raises(ValueError, match=r"shape \(num_rows, 6\)"):
        load(path, format="onnx").predict(np.zeros((2, 5)))


def test_onnx_predictor_needs_no_tensorflow(exports):
    exported = exports["gaussian"]
    script = (
        "import sys, numpy as np\n"
        "from dgc_tf.export.onnx_predictor import OnnxPredictor\n"
        f"outputs = OnnxPredictor({exported.path!r}).predict(np.ones((3, {NUM_FEATURES})))\n"
        "assert outputs['cluster_probs'].shape == (3, 3)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras')))\n"
    )

    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- command line


def test_cli_exports_reloaded_keras_model(exports, predictors, keras_file, base_dir, capsys):
    exported = exports["categorical"]
    fresh_saved_model, fresh_onnx = predictors["categorical"]

    assert main([keras_file, "--out", base_dir, "--name", "from-keras"]) == 0

    path = capsys.readouterr().out.strip()
    assert path == os.path.join(base_dir, "from-keras", "1")
    fresh = fresh_saved_model.signatures[contract.PREDICT_SIGNATURE]
    reloaded = tf.saved_model.load(path).signatures[contract.PREDICT_SIGNATURE]
    reloaded_onnx = OnnxPredictor(path)
    assert list(reloaded.structured_outputs) == list(fresh.structured_outputs)
    onnx_names = [output.name for output in reloaded_onnx.session.get_outputs()]
    assert onnx_names == [output.name for output in fresh_onnx.session.get_outputs()]
    assert onnx_names == sorted(reloaded.structured_outputs)
    assert_outputs_agree(fresh_onnx.predict(exported.x), reloaded_onnx.predict(exported.x), "reloaded")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing.keras", "--out", "BASE", "--name", "demo"], "not found"),
        (["model.h5", "--out", "BASE", "--name", "demo"], "must be a .keras file"),
        (["KERAS", "--out", "BASE", "--name", "categorical", "--version", "1"], "already exists"),
        (["KERAS", "--out", "MISSING_BASE", "--name", "demo"], "does not exist"),
        (["KERAS", "--name", "demo"], "required: --out"),
        (["KERAS", "--out", "BASE", "--name", "demo", "--version", "one"], "invalid int value"),
        (["CORRUPT", "--out", "BASE", "--name", "demo"], "not a valid .keras file"),
    ],
)
def test_cli_errors_exit_2_with_one_line(exports, keras_file, base_dir, tmp_path, capsys, arguments, message):
    corrupt_file = tmp_path / "corrupt.keras"
    corrupt_file.write_bytes(b"not a zip file")
    replacements = {
        "KERAS": keras_file,
        "BASE": base_dir,
        "MISSING_BASE": os.path.join(base_dir, "missing"),
        "CORRUPT": str(corrupt_file),
    }
    arguments = [replacements.get(argument, argument) for argument in arguments]

    assert main(arguments) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("dgc-tf export: error:")
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_killed_export_leaves_no_version(keras_file, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    model_dir = base / "killed"
    stderr_path = tmp_path / "export.stderr"

    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [PYTHON, "-m", "dgc_tf.export", keras_file, "--out", str(base), "--name", "killed"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        # Kill as soon as the staging directory has content, i.e. mid-write.
        deadline = time.monotonic() + 120
        staging_has_files = False
        while time.monotonic() < deadline and process.poll() is None and not staging_has_files:
            if model_dir.is_dir():
                staging = [entry for entry in model_dir.iterdir() if entry.name.startswith(".tmp-")]
                staging_has_files = bool(staging) and any(staging[0].iterdir())
            time.sleep(0.005)
        assert process.poll() is None, stderr_path.read_text()[-2000:]
        assert staging_has_files, "the export never wrote into its staging directory"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    entries = [entry.name for entry in model_dir.iterdir()]
    assert [name for name in entries if not name.startswith(".")] == []
    assert any(name.startswith(".tmp-") for name in entries)
    assert main([keras_file, "--out", str(base), "--name", "killed"]) == 0
    assert (model_dir / "1" / contract.ONNX_FILENAME).is_file()


# ---------------------------------------------------------------- saved_model_cli (TF Serving's loader)


@pytest.mark.parametrize("response", FAMILIES)
def test_saved_model_cli_show_lists_signatures(exports, saved_model_cli_runs, response):
    output = finish(saved_model_cli_runs[(response, "show")])
    blocks = {
        block.split("']", 1)[0]: block for block in output.split("signature_def['")[1:]
    }
    label_dtype = {"categorical": "DT_STRING", "bernoulli": "DT_INT64", "gaussian": "DT_FLOAT"}[response]
    expected = {
        contract.PREDICT_SIGNATURE: (
            {"x": "DT_FLOAT"},
            {"cluster": "DT_INT64", "cluster_probs": "DT_FLOAT", "y_pred": "DT_FLOAT", "z_mean": "DT_FLOAT"},
        ),
        contract.LABELED_SIGNATURE: ({"x": "DT_FLOAT", "y": label_dtype}, {"cluster": "DT_INT64", "cluster_probs": "DT_FLOAT"}),
        contract.PRIOR_SIGNATURE: ({}, {"pi": "DT_FLOAT", "mu": "DT_FLOAT", "sigma2": "DT_FLOAT"}),
        contract.DECODE_SIGNATURE: ({"z": "DT_FLOAT"}, {"x_mean": "DT_FLOAT"}),
    }
    if response != "gaussian":
        expected[contract.PREDICT_SIGNATURE][1]["y_label"] = label_dtype

    for signature, (inputs, outputs) in expected.items():
        assert signature in blocks, signature
        block = blocks[signature]
        for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
            for name, dtype in tensors.items():
                assert f"{kind}['{name}'] tensor_info:\n        dtype: {dtype}" in block, (signature, name)
    assert "shape: (-1, 6)" in blocks[contract.PREDICT_SIGNATURE]


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("response", FAMILIES)
def test_saved_model_cli_run_matches_model(exports, saved_model_cli_runs, response, batch_size):
    exported = exports[response]

    outputs = read_cli_outputs(saved_model_cli_runs[(response, "run", batch_size)])

    assert_outputs_agree(in_memory_outputs(exported.model, exported.x[:batch_size]), outputs, "saved_model_cli run")


def test_saved_model_cli_run_cluster_labeled(exports, saved_model_cli_runs):
    exported = exports["categorical"]

    outputs = read_cli_outputs(saved_model_cli_runs[("categorical", "labeled")])

    expected = exported.model.predict_labeled(exported.x[:5], exported.y[:5])
    np.testing.assert_allclose(outputs["cluster_probs"], expected["cluster_probs"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(outputs["cluster"], expected["cluster"])
