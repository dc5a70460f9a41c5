"""Tests for dgc_tf.serving: the REST and gRPC servers, the clients and `dgc-tf serve`.

Every test talks to a real server on 127.0.0.1 with ports picked at run
time, through `requests` for REST and TF Serving's own `PredictionServiceStub`
for gRPC.
"""

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

import dgc_tf
from dgc_tf.export import export_model
from dgc_tf.serving.client import GrpcClient, RestClient
from dgc_tf.serving import repository as repository_module
from dgc_tf.serving.errors import RejectionLog
from dgc_tf.serving.servable import Servable
from dgc_tf.serving.server import ModelServer

NUM_ROWS = 240
NUM_FEATURES = 6
NUM_CLUSTERS = 3
LATENT_DIM = 3
CLASSES = np.array(["ant", "bee", "cat"])
TOLERANCE = 1e-5
MODEL = "dgc"
MAX_REQUEST_BYTES = 100_000
DGC_TF = os.path.join(os.path.dirname(sys.executable), "dgc-tf")


def make_data(seed=0):
    """Return raw features (offset 50, scale 10, three blobs) and string labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(NUM_CLUSTERS, NUM_FEATURES))
    groups = rng.integers(0, NUM_CLUSTERS, NUM_ROWS)
    x = (50.0 + 10.0 * (centers[groups] + rng.normal(size=(NUM_ROWS, NUM_FEATURES)))).astype(np.float32)
    return x, CLASSES[groups]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny categorical model with string labels, exported once as `<base>/dgc/1`."""
    x, y = make_data()
    model = dgc_tf.DGC(
        num_clusters=NUM_CLUSTERS, response="categorical", latent_dim=LATENT_DIM, encoder_units=(16, 16), seed=0
    )
    model.pretrain(x, y, epochs=1, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    base_dir = str(tmp_path_factory.mktemp("exports"))
    path = export_model(model, base_dir, MODEL)
    expected = model.predict(x, verbose=0)
    expected["y_label"] = model.predict_labels(x, verbose=0)
    return {"model": model, "x": x, "y": y, "base_dir": base_dir, "path": path, "expected": expected}


@pytest.fixture(scope="module")
def server(trained):
    model_server = ModelServer(
        trained["base_dir"], rest_port=0, grpc_port=0, poll_seconds=0.2, max_request_bytes=MAX_REQUEST_BYTES,
        version_labels={MODEL: {"stable": 1}},
    ).start()
    yield model_server
    model_server.stop()


@pytest.fixture(scope="module")
def rest_url(server):
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as grpc_channel:
        yield grpc_channel


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def expected_rows(trained, rows):
    return {name: value[rows] for name, value in trained["expected"].items()}


def assert_outputs_equal(actual, expected, context=""):
    assert sorted(actual) == sorted(expected), context
    for name, want in expected.items():
        got = np.asarray(actual[name])
        assert got.shape == want.shape, f"{context} {name}"
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=f"{context} {name}")
        else:
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=f"{context} {name}")


def predict_request(x, signature_name="", version=None, dtype=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x) if dtype is None else np.asarray(x, dtype)))
    return request


def outputs_from_response(response):
    result = {}
    for name, proto in response.outputs.items():
        value = tf.make_ndarray(proto)
        if value.dtype == object:
            value = np.array([item.decode("utf-8") for item in value.reshape(-1)], dtype=object).reshape(value.shape)
        result[name] = value
    return result


def wait_for(condition, timeout=30.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


# ---------------------------------------------------------------------- REST


def test_rest_model_status(rest_url):
    response = requests.get(f"{rest_url}/v1/models/{MODEL}", timeout=30)

    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    }


def test_rest_metadata_lists_signatures(rest_url):
    response = requests.get(f"{rest_url}/v1/models/{MODEL}/metadata", timeout=30)

    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "cluster_labeled", "prior", "decode"} <= set(signatures)
    x_input = signatures["serving_default"]["inputs"]["x"]
    assert x_input["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in x_input["tensor_shape"]["dim"]] == ["-1", str(NUM_FEATURES)]
    assert signatures["serving_default"]["outputs"]["cluster"]["dtype"] == "DT_INT64"
    assert signatures["serving_default"]["outputs"]["y_label"]["dtype"] == "DT_STRING"
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_rest_row_format_matches_model(rest_url, trained):
    rows = np.arange(5)
    body = {"instances": trained["x"][rows].tolist()}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    columns = {name: np.array([row[name] for row in predictions]) for name in predictions[0]}
    assert_outputs_equal(columns, expected_rows(trained, rows))
    assert isinstance(predictions[0]["y_label"], str)
    assert isinstance(predictions[0]["cluster"], int)


def test_rest_columnar_format_matches_model(rest_url, trained):
    rows = np.arange(64)
    body = {"signature_name": "serving_default", "inputs": {"x": trained["x"][rows].tolist()}}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}/versions/1:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    outputs = {name: np.array(value) for name, value in response.json()["outputs"].items()}
    assert_outputs_equal(outputs, expected_rows(trained, rows))


def test_rest_version_label(rest_url, trained):
    body = {"instances": trained["x"][:2].tolist()}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}/labels/stable:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    assert [row["cluster"] for row in response.json()["predictions"]] == trained["expected"]["cluster"][:2].tolist()


def test_rest_cluster_labeled_signature(rest_url, trained):
    rows = np.arange(4)
    instances = [{"x": trained["x"][row].tolist(), "y": str(trained["y"][row])} for row in rows]
    body = {"signature_name": "cluster_labeled", "instances": instances}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    expected = trained["model"].predict_labeled(trained["x"][rows], trained["y"][rows])
    predictions = response.json()["predictions"]
    np.testing.assert_allclose([row["cluster_probs"] for row in predictions], expected["cluster_probs"], atol=TOLERANCE)
    assert [row["cluster"] for row in predictions] == expected["cluster"].tolist()


def test_rest_prior_in_columnar_format(rest_url, server):
    body = {"signature_name": "prior", "inputs": {}}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    reference = server.repository.get(MODEL).functions["prior"]()
    for name in ("pi", "mu", "sigma2"):
        np.testing.assert_allclose(outputs[name], reference[name].numpy(), atol=TOLERANCE, err_msg=name)
    assert np.array(outputs["mu"]).shape == (NUM_CLUSTERS, LATENT_DIM)


def test_rest_decode_signature(rest_url, trained):
    z = np.zeros((2, LATENT_DIM), np.float32)
    body = {"signature_name": "decode", "instances": z.tolist()}

    response = requests.post(f"{rest_url}/v1/models/{MODEL}:predict", json=body, timeout=30)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert np.array([row["x_mean"] for row in predictions]).shape == (2, NUM_FEATURES)
    assert np.array([row["y_probs"] for row in predictions]).shape == (2, NUM_CLUSTERS, len(CLASSES))


PREDICT_PATH = f"/v1/models/{MODEL}:predict"
GOOD_ROW = [50.0] * NUM_FEATURES

REST_BAD_REQUESTS = [
    # (case, method, path, body text, status, message part)
    ("malformed json", "POST", PREDICT_PATH, '{"instances": [[1, 2', 400, "not valid JSON"),
    ("body not an object", "POST", PREDICT_PATH, "[1, 2]", 400, "must be a JSON object"),
    ("wrong width", "POST", PREDICT_PATH, '{"instances": [[1, 2]]}', 400, "must have shape [None, 6]. Received shape [1, 2]"),
    ("ragged rows", "POST", PREDICT_PATH, json.dumps({"instances": [GOOD_ROW, [1.0]]}), 400, "x[0] has 6 values, but x[1] has 1"),
    ("row mixed with value", "POST", PREDICT_PATH, json.dumps({"instances": [GOOD_ROW, 5.0]}), 400, "x[1] is the single value 5.0"),
    ("NaN value", "POST", PREDICT_PATH, '{"instances": [[1, 1, 1, 1, 1, 1], [1, NaN, 1, 1, 1, 1]]}', 400, "such as nan at x[1][1]"),
    ("Infinity literal", "POST", PREDICT_PATH, '{"instances": [[1, 1, 1, 1, 1, -Infinity]]}', 400, "such as -inf at x[0][5]"),
    ("infinite value", "POST", PREDICT_PATH, '{"instances": [[1e999, 1, 1, 1, 1, 1]]}', 400, "NaN or infinite"),
    ("beyond float32", "POST", PREDICT_PATH, '{"instances": [[1e300, 1, 1, 1, 1, 1]]}', 400, "beyond the float32 range"),
    ("text features", "POST", PREDICT_PATH, json.dumps({"instances": [["a"] * NUM_FEATURES]}), 400, 'x[0][0] is "a". Send numbers'),
    ("number as text", "POST", PREDICT_PATH, json.dumps({"instances": [GOOD_ROW[:5] + ["1.5"]]}), 400, 'x[0][5] is "1.5"'),
    ("null value", "POST", PREDICT_PATH, json.dumps({"instances": [[None] + GOOD_ROW[1:]]}), 400, "x[0][0] is null"),
    ("boolean value", "POST", PREDICT_PATH, json.dumps({"instances": [[True] * NUM_FEATURES]}), 400, "x[0][0] is true"),
    ("integer beyond float64", "POST", PREDICT_PATH, json.dumps({"instances": [[10**400] + GOOD_ROW[1:]]}), 400, "beyond the float32 range"),
    ("integer too long to parse", "POST", PREDICT_PATH, '{"instances": [[' + "9" * 5000 + "]]}", 400, "too long to parse"),
    ("deeply nested JSON", "POST", PREDICT_PATH, '{"instances": ' + "[" * 20000 + "]" * 20000 + "}", 400, "nests JSON arrays"),
    ("no rows", "POST", PREDICT_PATH, '{"inputs": {"x": []}}', 400, "has no rows; send at least one row of shape [6]"),
    ("no instances", "POST", PREDICT_PATH, '{"instances": []}', 400, "non-empty list"),
    ("unknown signature", "POST", PREDICT_PATH, json.dumps({"signature_name": "nope", "instances": [GOOD_ROW]}), 400, "Signature 'nope' not found"),
    ("signature name not text", "POST", PREDICT_PATH, '{"signature_name": 7, "instances": []}', 400, "'signature_name' must be a string"),
    ("both formats", "POST", PREDICT_PATH, json.dumps({"instances": [GOOD_ROW], "inputs": [GOOD_ROW]}), 400, "exactly one of"),
    ("no inputs", "POST", PREDICT_PATH, "{}", 400, "exactly one of"),
    ("unknown input name", "POST", PREDICT_PATH, json.dumps({"inputs": {"q": [GOOD_ROW]}}), 400, "takes the inputs ['x']"),
    ("missing label input", "POST", PREDICT_PATH, json.dumps({"signature_name": "cluster_labeled", "instances": [{"x": GOOD_ROW}]}), 400, "has the keys ['x']"),
    ("unseen label", "POST", PREDICT_PATH, json.dumps({"signature_name": "cluster_labeled", "instances": [{"x": GOOD_ROW, "y": "dog"}]}), 400, "not trained on"),
    ("number as label", "POST", PREDICT_PATH, json.dumps({"signature_name": "cluster_labeled", "instances": [{"x": GOOD_ROW, "y": 3}]}), 400, "y[0] is 3"),
    ("prior in row format", "POST", PREDICT_PATH, json.dumps({"signature_name": "prior", "instances": [GOOD_ROW]}), 400, "columnar format"),
    ("prior with input list", "POST", PREDICT_PATH, json.dumps({"signature_name": "prior", "inputs": []}), 400, "must be an empty object {}"),
    ("unknown model", "POST", "/v1/models/nope:predict", json.dumps({"instances": [GOOD_ROW]}), 404, "Model 'nope' not found"),
    ("unknown version", "POST", f"/v1/models/{MODEL}/versions/9:predict", json.dumps({"instances": [GOOD_ROW]}), 404, "Version 9 of model 'dgc' not found"),
    ("unknown model status", "GET", "/v1/models/nope", None, 404, "Model 'nope' not found"),
    ("unknown version status", "GET", f"/v1/models/{MODEL}/versions/9", None, 404, "Version 9"),
    ("unknown version metadata", "GET", f"/v1/models/{MODEL}/versions/9/metadata", None, 404, "Version 9"),
    ("unknown label", "POST", f"/v1/models/{MODEL}/labels/canary:predict", json.dumps({"instances": [GOOD_ROW]}), 400, "Unrecognized servable version label 'canary'"),
    ("malformed path", "GET", "/v2/models", None, 400, "Malformed request"),
    ("classify", "POST", f"/v1/models/{MODEL}:classify", "{}", 400, "classify is not supported"),
    ("too large", "POST", PREDICT_PATH, json.dumps({"instances": [GOOD_ROW] * 3000}), 413, "more than the limit of 100000"),
]


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [case[1:] for case in REST_BAD_REQUESTS],
    ids=[case[0] for case in REST_BAD_REQUESTS],
)
def test_rest_bad_request(rest_url, method, path, body, status, message):
    response = requests.request(method, rest_url + path, data=body, timeout=30)

    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]


def test_rest_request_without_length(server):
    # A chunked body has no Content-Length, so the server cannot check its size first.
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(
            f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            "2\r\n{}\r\n0\r\n\r\n".encode()
        )
        chunks = []
        while chunk := connection.recv(65536):  # The server closes the connection after the reply.
            chunks.append(chunk)
        reply = b"".join(chunks).decode()

    assert reply.startswith("HTTP/1.1 411")
    assert "no Content-Length header" in reply


def raw_http_exchange(port, data):
    """Send raw bytes and return the reply text; the server closes the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def read_one_response(connection):
    """Read one HTTP response with a Content-Length from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])
    while len(body) < length:
        body += connection.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


@pytest.mark.parametrize(
    "request_text, status, message",
    [
        (f"PUT {PREDICT_PATH} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}", 501, "Method PUT is not supported"),
        ("DELETE /v1/models/dgc HTTP/1.1\r\n\r\n", 501, "Use GET for model status and metadata"),
        ("GET /v1/models/dgc HTTP/1.1\r\n" + "X-Filler: 1\r\n" * 150 + "\r\n", 431, "Too many headers"),
        (
            f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}",
            400, "conflicting Content-Length headers ['2', '40']",
        ),
    ],
    ids=["PUT", "DELETE", "too many headers", "two Content-Length headers"],
)
def test_rest_protocol_error_is_json(server, request_text, status, message):
    reply = raw_http_exchange(server.rest_port, request_text.encode())
    head, _, body = reply.partition("\r\n\r\n")

    assert head.startswith(f"HTTP/1.1 {status} "), reply
    assert "Content-Type: application/json" in head
    assert message in json.loads(body)["error"]


def test_rest_malformed_request_line_is_json(server):
    # Without "HTTP/1.x" the request counts as HTTP/0.9, whose replies have no status line or headers.
    reply = raw_http_exchange(server.rest_port, b"hello\r\n\r\n")

    assert "Bad request syntax" in json.loads(reply)["error"]


def test_rest_large_integer_converted(rest_url, trained):
    row = [10**30] + trained["x"][0, 1:].tolist()

    response = requests.post(f"{rest_url}{PREDICT_PATH}", json={"instances": [row]}, timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["cluster"] in range(NUM_CLUSTERS)


def test_rest_oversized_body_gets_413_reply(server):
    # http.client sends the whole body before it reads the reply. If the server closed the
    # connection with the body unread, the client would get a reset instead of the 413.
    body = b'{"instances": [' + b"[1, 2, 3, 4, 5, 6], " * 1_000_000 + b"[1, 2, 3, 4, 5, 6]]}"
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)

    connection.request("POST", PREDICT_PATH, body=body)
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()

    assert response.status == 413
    assert f"The request body has {len(body)} bytes" in reply["error"]


def test_rest_error_logged_with_model_and_version(rest_url, caplog):
    body = {"instances": [[1.0, 2.0]]}

    with caplog.at_level(logging.WARNING, logger="dgc_tf.serving"):
        requests.post(f"{rest_url}/v1/models/{MODEL}/versions/1:predict", json=body, timeout=30)

    messages = [record.getMessage() for record in caplog.records]
    assert any("model dgc, version 1" in text and "-> 400" in text for text in messages), messages


def test_rest_repeated_errors_rate_limited(rest_url, caplog):
    body = {"instances": [["flood"] * NUM_FEATURES]}

    with caplog.at_level(logging.WARNING, logger="dgc_tf.serving"):
        for _ in range(20):
            requests.post(f"{rest_url}{PREDICT_PATH}", json=body, timeout=30)

    logged = [record for record in caplog.records if '"flood"' in record.getMessage()]
    assert 1 <= len(logged) <= 5


def test_rejection_log_reports_dropped_lines(caplog):
    test_logger = logging.getLogger("dgc_tf.serving.test_rejection_log")
    rejection_log = RejectionLog(test_logger, per_message=2, total=3, window_seconds=0.5)

    with caplog.at_level(logging.WARNING, logger=test_logger.name):
        for index in range(6):
            rejection_log.warning("same", "same error %d", index)
        rejection_log.warning("other", "other error")
        time.sleep(0.6)
        rejection_log.warning("same", "same error after the window")

    messages = [record.getMessage() for record in caplog.records]
    assert messages[:3] == ["same error 0", "same error 1", "other error"]
    assert messages[3].startswith("dropped 4 log lines of rejected requests")
    assert messages[4] == "same error after the window"
    assert len(messages) == 5


def test_rest_client_casts_and_matches(rest_url, trained):
    client = RestClient(rest_url)

    outputs = client.predict(MODEL, trained["x"][:3].astype(np.float64))

    assert_outputs_equal(outputs, expected_rows(trained, np.arange(3)))


# ---------------------------------------------------------------------- gRPC


def test_grpc_predict_matches_model(stub, trained):
    rows = np.arange(64)

    response = stub.Predict(predict_request(trained["x"][rows]), timeout=30)

    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    assert_outputs_equal(outputs_from_response(response), expected_rows(trained, rows))


def test_grpc_output_filter(stub, trained):
    request = predict_request(trained["x"][:2])
    request.output_filter.append("cluster")

    response = stub.Predict(request, timeout=30)

    assert list(response.outputs) == ["cluster"]


def test_grpc_model_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")

    response = stub.GetModelMetadata(request, timeout=30)

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert response.model_spec.version.value == 1
    assert {"serving_default", "cluster_labeled", "prior", "decode"} <= set(signature_map.signature_def)
    assert signature_map.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum


def test_grpc_model_status(channel):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL

    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)

    assert [status.version for status in response.model_version_status] == [1]
    assert response.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_grpc_model_status_unknown_model(channel):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"

    with pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Model 'nope' not found. Served models: ['dgc']." in raised.value.details()


def test_grpc_model_status_empty_name(channel):
    request = get_model_status_pb2.GetModelStatusRequest()

    with pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_spec.name is empty" in raised.value.details()


def test_grpc_float64_input_names_expected_dtype(stub, trained):
    request = predict_request(trained["x"][:2], dtype=np.float64)

    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has dtype DT_DOUBLE, but the signature expects DT_FLOAT (float32)" in raised.value.details()


def test_grpc_client_casts_float64(server, trained):
    with GrpcClient(f"127.0.0.1:{server.grpc_port}") as client:
        request = client.make_request(MODEL, trained["x"][:3].astype(np.float64))
        outputs = client.predict(MODEL, trained["x"][:3].astype(np.float64))
        labeled = client.predict(
            MODEL, {"x": trained["x"][:3], "y": trained["y"][:3]}, signature_name="cluster_labeled"
        )

    assert request.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert_outputs_equal(outputs, expected_rows(trained, np.arange(3)))
    assert labeled["cluster"].shape == (3,)


def grpc_case(mutate):
    def build(trained):
        request = predict_request(trained["x"][:2])
        mutate(request)
        return request

    return build


def _set_tensor(request, name, array):
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))


def _set_float_proto(request, sizes, unknown_rank=False, values=(), content=b""):
    """Set input x to a hand-built DT_FLOAT TensorProto, as a client in another language may send."""
    proto = request.inputs["x"]
    proto.Clear()
    proto.dtype = tf.float32.as_datatype_enum
    proto.tensor_shape.unknown_rank = unknown_rank
    for size in sizes:
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend(values)
    proto.tensor_content = content


GRPC_BAD_REQUESTS = [
    # (case, request change, status code, message part)
    ("unknown model", lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, "Model 'nope' not found"),
    ("unknown version", lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND, "Version 9"),
    ("unknown label", lambda r: setattr(r.model_spec, "version_label", "canary"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"),
    ("unknown signature", lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.INVALID_ARGUMENT, "Signature 'nope' not found"),
    ("wrong width", lambda r: _set_tensor(r, "x", np.ones((2, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "must have shape [None, 6]"),
    ("NaN value", lambda r: _set_tensor(r, "x", np.full((1, NUM_FEATURES), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    ("unknown input", lambda r: _set_tensor(r, "q", np.ones((2, NUM_FEATURES), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "no inputs named ['q']"),
    ("unknown output filter", lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT, "output_filter names outputs ['nope']"),
    ("too large", lambda r: _set_tensor(r, "x", np.ones((5000, NUM_FEATURES), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("float64 input", lambda r: _set_tensor(r, "x", np.ones((2, NUM_FEATURES))), grpc.StatusCode.INVALID_ARGUMENT, "has dtype DT_DOUBLE, but the signature expects DT_FLOAT"),
    ("int input", lambda r: _set_tensor(r, "x", np.ones((2, NUM_FEATURES), np.int64)), grpc.StatusCode.INVALID_ARGUMENT, "has dtype DT_INT64"),
    ("no rows", lambda r: _set_tensor(r, "x", np.ones((0, NUM_FEATURES), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "has no rows"),
    # One value fills the whole shape, so a 30-byte message would decode to 24 TB.
    ("huge filled shape", lambda r: _set_float_proto(r, [10**12, NUM_FEATURES], values=[1.0]), grpc.StatusCode.RESOURCE_EXHAUSTED, "more than the limit of 100000"),
    ("unknown rank", lambda r: _set_float_proto(r, [], unknown_rank=True, values=[1.0]), grpc.StatusCode.INVALID_ARGUMENT, "needs a known rank"),
    ("negative size", lambda r: _set_float_proto(r, [-1, NUM_FEATURES]), grpc.StatusCode.INVALID_ARGUMENT, "shape [-1, 6]"),
    ("short tensor_content", lambda r: _set_float_proto(r, [1, NUM_FEATURES], content=b"\0" * 7), grpc.StatusCode.INVALID_ARGUMENT, "7 bytes of tensor_content, but shape [1, 6] of DT_FLOAT takes 24"),
]


@pytest.mark.parametrize(
    "mutate, code, message", [case[1:] for case in GRPC_BAD_REQUESTS], ids=[case[0] for case in GRPC_BAD_REQUESTS]
)
def test_grpc_bad_request(stub, trained, mutate, code, message):
    request = grpc_case(mutate)(trained)

    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)

    assert raised.value.code() == code
    assert message in raised.value.details()


def test_grpc_label_not_utf8(stub, trained):
    request = predict_request(trained["x"][:1], signature_name="cluster_labeled")
    request.inputs["y"].CopyFrom(tf.make_tensor_proto(np.array([b"\xff"], dtype=object)))

    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "A string input contains bytes that are not UTF-8" in raised.value.details()


def test_grpc_classify_unimplemented(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Classify is not supported" in raised.value.details()
    assert "Call Predict instead" in raised.value.details()


def test_grpc_metadata_without_field_rejected(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL

    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelMetadata(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field must be ['signature_def']" in raised.value.details()


# ---------------------------------------------------------------------- concurrency


def test_concurrent_clients(rest_url, stub, trained):
    num_requests = 200
    rows_by_request = [np.arange(i % 50, i % 50 + 1 + i % 8) for i in range(num_requests)]
    local = threading.local()

    def call(index):
        rows = rows_by_request[index]
        if index % 2:
            response = stub.Predict(predict_request(trained["x"][rows]), timeout=60)
            outputs = outputs_from_response(response)
        else:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.post(
                f"{rest_url}/v1/models/{MODEL}:predict", json={"inputs": trained["x"][rows].tolist()}, timeout=60
            )
            assert response.status_code == 200, response.text
            outputs = {name: np.array(value) for name, value in response.json()["outputs"].items()}
        assert_outputs_equal(outputs, expected_rows(trained, rows), f"request {index}")
        return index

    with futures.ThreadPoolExecutor(max_workers=16) as pool:
        finished = list(pool.map(call, range(num_requests)))

    assert finished == list(range(num_requests))


# ---------------------------------------------------------------------- versions


PRIVATE_SOCKET_TIMEOUT = 1.0


@pytest.fixture
def private_server(trained, tmp_path):
    """A server on its own copy of the export, so tests can add and remove versions."""
    base_dir = tmp_path / "exports"
    shutil.copytree(os.path.join(trained["base_dir"], MODEL, "1"), base_dir / MODEL / "1")
    model_server = ModelServer(
        str(base_dir), rest_port=0, grpc_port=0, poll_seconds=0.2, socket_timeout=PRIVATE_SOCKET_TIMEOUT
    ).start()
    yield model_server, base_dir / MODEL
    model_server.stop()


def served_versions(url):
    status = requests.get(f"{url}/v1/models/{MODEL}", timeout=30).json()
    return {entry["version"]: entry["state"] for entry in status["model_version_status"]}


def test_version_added_and_removed_while_serving(private_server, trained, caplog):
    model_server, model_dir = private_server
    url = f"http://127.0.0.1:{model_server.rest_port}"
    body = {"instances": trained["x"][:2].tolist()}

    # An export stages a version under a hidden name; the server must ignore it until the rename.
    staging = model_dir / ".tmp-2-test"
    shutil.copytree(model_dir / "1", staging)
    time.sleep(0.6)
    assert served_versions(url) == {"1": "AVAILABLE"}
    os.rename(staging, model_dir / "2")
    wait_for(lambda: served_versions(url).get("2") == "AVAILABLE", message="version 2 to load")
    with grpc.insecure_channel(f"127.0.0.1:{model_server.grpc_port}") as grpc_channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel).Predict(
            predict_request(trained["x"][:2]), timeout=30
        )
    v2 = requests.post(f"{url}/v1/models/{MODEL}/versions/2:predict", json=body, timeout=30)

    assert response.model_spec.version.value == 2
    assert v2.status_code == 200

    with caplog.at_level(logging.INFO, logger="dgc_tf.serving"):
        shutil.rmtree(model_dir / "2")
        wait_for(lambda: served_versions(url) == {"1": "AVAILABLE"}, message="version 2 to unload")
    removed = requests.post(f"{url}/v1/models/{MODEL}/versions/2:predict", json=body, timeout=30)

    assert removed.status_code == 404
    assert "Loaded versions: [1]" in removed.json()["error"]
    assert any("unloaded model dgc version 2" in record.getMessage() for record in caplog.records)


def test_broken_version_logged_and_skipped(private_server, trained, caplog):
    model_server, model_dir = private_server
    url = f"http://127.0.0.1:{model_server.rest_port}"
    broken = model_dir / "3"

    with caplog.at_level(logging.INFO, logger="dgc_tf.serving"):
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        wait_for(lambda: served_versions(url).get("3") == "END", message="version 3 to be reported")

    status = requests.get(f"{url}/v1/models/{MODEL}/versions/3", timeout=30).json()["model_version_status"][0]
    prediction = requests.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": trained["x"][:1].tolist()}, timeout=30)
    assert status["state"] == "END"
    assert status["status"]["error_code"] == "UNKNOWN"
    assert prediction.status_code == 200
    assert any("failed to load model dgc version 3" in record.getMessage() for record in caplog.records)


def test_server_on_ipv6_loopback(trained):
    with ModelServer(trained["base_dir"], host="::1", rest_port=0, grpc_port=0) as model_server:
        rest = requests.get(f"http://[::1]:{model_server.rest_port}/v1/models/{MODEL}", timeout=30)
        with grpc.insecure_channel(f"[::1]:{model_server.grpc_port}") as grpc_channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel).Predict(
                predict_request(trained["x"][:1]), timeout=30
            )

    assert rest.status_code == 200, rest.text
    assert response.outputs["cluster"].int64_val[0] == int(trained["expected"]["cluster"][0])


def test_unloaded_version_label_logged(trained, caplog):
    labels = {MODEL: {"canary": 7, "stable": 1}, "absent": {"stable": 1}}

    with caplog.at_level(logging.WARNING, logger="dgc_tf.serving"):
        ModelServer(trained["base_dir"], rest_port=0, grpc_port=0, version_labels=labels).start().stop()

    messages = [record.getMessage() for record in caplog.records]
    assert any("version label dgc:canary names version 7, which is not loaded (loaded: [1])" in text for text in messages)
    assert any("version label absent:stable names version 1, which is not loaded (loaded: none)" in text for text in messages)
    assert not any("dgc:stable" in text for text in messages)


def test_rest_percent_encoded_model_name(private_server, trained):
    model_server, model_dir = private_server
    url = f"http://127.0.0.1:{model_server.rest_port}"
    shutil.copytree(model_dir / "1", model_dir.parent / "my model" / "1")
    status_url = f"{url}/v1/models/my%20model"
    wait_for(lambda: "AVAILABLE" in requests.get(status_url, timeout=30).text, message="'my model' to load")

    response = requests.post(f"{url}/v1/models/my%20model:predict", json={"instances": trained["x"][:1].tolist()}, timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["cluster"] == int(trained["expected"]["cluster"][0])


def test_status_loading_while_version_loads(private_server, monkeypatch):
    model_server, model_dir = private_server
    url = f"http://127.0.0.1:{model_server.rest_port}"
    release = threading.Event()

    def held_servable(*arguments):
        release.wait(30)  # Keeps the load running until the test has read the status.
        return Servable(*arguments)

    monkeypatch.setattr(repository_module, "Servable", held_servable)
    shutil.copytree(model_dir / "1", model_dir / "2")
    wait_for(lambda: served_versions(url).get("2") == "LOADING", message="version 2 to be LOADING")
    with grpc.insecure_channel(f"127.0.0.1:{model_server.grpc_port}") as grpc_channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        request.model_spec.version.value = 2
        grpc_status = model_service_pb2_grpc.ModelServiceStub(grpc_channel).GetModelStatus(request, timeout=30)
    release.set()
    wait_for(lambda: served_versions(url).get("2") == "AVAILABLE", message="version 2 to load")

    assert grpc_status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.LOADING


def test_version_retried_when_files_complete(private_server, trained):
    # A plain `cp -r` writes saved_model.pb before the variables, so the first load may fail.
    model_server, model_dir = private_server
    url = f"http://127.0.0.1:{model_server.rest_port}"
    late = model_dir / "2"
    late.mkdir()
    shutil.copy(model_dir / "1" / "saved_model.pb", late / "saved_model.pb")
    wait_for(lambda: served_versions(url).get("2") == "END", message="version 2 to fail")
    missing = requests.post(f"{url}/v1/models/{MODEL}/versions/2:predict", json={"instances": [GOOD_ROW]}, timeout=30)

    shutil.copytree(model_dir / "1" / "variables", late / "variables")
    wait_for(lambda: served_versions(url).get("2") == "AVAILABLE", message="version 2 to load after its variables")

    assert missing.status_code == 404
    assert "Version 2 of model 'dgc' failed to load" in missing.json()["error"]


def test_rest_body_timeout_returns_408(private_server):
    model_server, _ = private_server
    started = time.monotonic()

    reply = raw_http_exchange(
        model_server.rest_port, f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{}}".encode()
    )
    seconds = time.monotonic() - started
    head, _, body = reply.partition("\r\n\r\n")

    assert head.startswith("HTTP/1.1 408 "), reply
    assert "Content-Length announced 100 bytes" in json.loads(body)["error"]
    assert seconds < PRIVATE_SOCKET_TIMEOUT + 10


def test_stop_finishes_running_request_and_closes_idle(private_server, trained):
    model_server, _ = private_server
    body = json.dumps({"instances": trained["x"][:1].tolist()}).encode()
    headers = f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", model_server.rest_port), timeout=30) as idle, \
            socket.create_connection(("127.0.0.1", model_server.rest_port), timeout=30) as running:
        # The idle connection gets one response and stays open (keep-alive).
        idle.sendall(headers + body)
        assert read_one_response(idle).startswith("HTTP/1.1 200 ")
        # The running request has its headers and half of its body sent when the stop begins.
        running.sendall(headers + body[:10])
        rest_server = model_server._rest_server
        wait_for(lambda: rest_server._active_requests == 1, message="the request to start")
        stopper = threading.Thread(target=model_server.stop)
        stopper.start()
        wait_for(lambda: rest_server.stopping, message="the stop to begin")
        running.sendall(body[10:])
        reply = b""
        while chunk := running.recv(65536):
            reply += chunk
        idle_data = idle.recv(65536)
        stopper.join(timeout=30)

    head, _, reply_body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), reply
    assert "Connection: close" in head
    assert json.loads(reply_body)["predictions"][0]["cluster"] == int(trained["expected"]["cluster"][0])
    assert idle_data == b""
    assert not stopper.is_alive()


def test_stop_replies_to_queued_connection(private_server, trained):
    model_server, _ = private_server
    body = json.dumps({"instances": trained["x"][:1].tolist()}).encode()
    # With the accept loop ended, a new connection waits in the listen backlog, as during a stop.
    model_server._rest_server.shutdown()

    with socket.create_connection(("127.0.0.1", model_server.rest_port), timeout=30) as queued:
        queued.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        model_server.stop()
        reply = b""
        while chunk := queued.recv(65536):
            reply += chunk

    head, _, reply_body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), reply
    assert "Connection: close" in head
    assert json.loads(reply_body)["predictions"][0]["cluster"] == int(trained["expected"]["cluster"][0])


# ---------------------------------------------------------------------- command line


def run_cli(*arguments):
    return subprocess.run([DGC_TF, *arguments], capture_output=True, text=True, timeout=120)


def test_cli_serve_missing_base_dir(tmp_path):
    result = run_cli("serve", str(tmp_path / "missing"))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dgc-tf serve: error: Base directory {str(tmp_path / 'missing')!r} not found. "
        "Pass the --out folder of 'dgc-tf export'."
    ]


def test_cli_serve_version_dir_rejected(trained):
    result = run_cli("serve", trained["path"])

    assert result.returncode == 2
    assert "contains saved_model.pb, so it is a version directory" in result.stderr
    assert repr(trained["base_dir"]) in result.stderr


def test_cli_serve_model_dir_rejected(trained):
    result = run_cli("serve", os.path.join(trained["base_dir"], MODEL))

    assert result.returncode == 2
    assert "is a model directory. Pass its parent" in result.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--rest-port", "70000"], "expected a TCP port number from 0 to 65535, got '70000'"),
        (["--version-label", "stable"], "expected MODEL:LABEL=VERSION"),
        (["--poll-seconds", "0"], "--poll-seconds must be a positive number"),
    ],
    ids=["port out of range", "malformed label", "zero poll interval"],
)
def test_cli_serve_bad_option(trained, arguments, message):
    result = run_cli("serve", trained["base_dir"], *arguments)

    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("api, option", [("REST", "--rest-port"), ("gRPC", "--grpc-port")])
def test_cli_serve_port_in_use(trained, api, option):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--grpc-port" if option == "--rest-port" else "--rest-port"

        result = run_cli("serve", trained["base_dir"], option, str(port), other, "0")

    assert result.returncode == 2
    assert f"dgc-tf serve: error: failed to bind the {api} port 127.0.0.1:{port}: Address already in use." in result.stderr
    assert "Choose free ports with --rest-port and --grpc-port" in result.stderr
    # The ports are checked before the models load, which takes long for large models.
    assert "loading model" not in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_serve_answers_and_stops_on_sigterm(trained, tmp_path):
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [DGC_TF, "serve", trained["base_dir"], "--rest-port", "0", "--grpc-port", "0"], stdout=log, stderr=log
        )
    try:
        wait_for(lambda: "REST on http://" in log_path.read_text() or process.poll() is not None, 120, "the server")
        text = log_path.read_text()
        match = re.search(r"REST on http://127\.0\.0\.1:(\d+), gRPC on 127\.0\.0\.1:(\d+)", text)
        assert match, text[-3000:]
        response = requests.post(
            f"http://127.0.0.1:{match[1]}/v1/models/{MODEL}:predict",
            json={"instances": trained["x"][:1].tolist()}, timeout=30,
        )
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    text = log_path.read_text()

    assert response.status_code == 200
    assert response.json()["predictions"][0]["cluster"] == int(trained["expected"]["cluster"][0])
    assert returncode == 0, text[-3000:]
    assert "loaded model dgc version 1" in text
    assert "received SIGTERM" in text
    assert text.rstrip().endswith("dgc_tf.serving: stopped")
    assert "Traceback" not in text


# ---------------------------------------------------------------------- ONNX predictor without TensorFlow

ONNX_SCRIPT = """
import sys

try:
    import tensorflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the tensorflow stub is not active")

import numpy as np

import dgc_tf.serving
from dgc_tf.serving.onnx import OnnxPredictor

version_dir, x_path, out_path = sys.argv[1:]
predictor = OnnxPredictor(version_dir)
assert dgc_tf.serving.OnnxPredictor is OnnxPredictor
outputs = predictor.predict(np.load(x_path))
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "tensorflow_probability"))
assert not heavy, heavy
np.savez(out_path, **outputs)
print("ok")
"""


def test_onnx_predictor_without_tensorflow(trained, tmp_path):
    # A `tensorflow` (and `keras`) package that raises on import shadows the
    # installed ones, as on a device without TensorFlow.
    stubs = tmp_path / "stubs"
    for package in ("tensorflow", "keras", "tensorflow_probability"):
        (stubs / package).mkdir(parents=True)
        (stubs / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed here')\n")
    rows = np.arange(37)
    x_path, out_path = tmp_path / "x.npy", tmp_path / "outputs.npz"
    np.save(x_path, trained["x"][rows])
    environment = dict(os.environ, PYTHONPATH=str(stubs))

    result = subprocess.run(
        [sys.executable, "-c", ONNX_SCRIPT, trained["path"], str(x_path), str(out_path)],
        capture_output=True, text=True, timeout=120, env=environment,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
    with np.load(out_path, allow_pickle=True) as saved:
        outputs = {name: saved[name] for name in saved.files}
    assert_outputs_equal(outputs, expected_rows(trained, rows))
