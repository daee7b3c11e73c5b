"""The inference server over a real socket: every request and response type of SageMaker's FM,
the official SDK predictor as the client, status codes, and resilience to bad requests."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
from sagemaker.amazon.common import (  # noqa: E402
    read_records,
    write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)
from sklearn.datasets import dump_svmlight_file, load_svmlight_file  # noqa: E402

from fmkit import FMClassifier, FMRegressor  # noqa: E402
from fmkit.jobs.fm import predict_files  # noqa: E402
from fmkit.models.fm.model import FMModel  # noqa: E402
from fmkit.models.fm.parameters import reference_logits, sigmoid  # noqa: E402

from .conftest import fmkit_executable, shared_file  # noqa: E402

JSON, JSONLINES, RECORDIO = ("application/json", "application/jsonlines",
                             "application/x-recordio-protobuf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, *args: str, port: int | None = None, env=None):
    """``fmkit serve`` of ``model_dir`` (None: ``fmkit sagemaker serve``, its port
    ``SAGEMAKER_BIND_TO_PORT`` in ``env``)."""
    port = port or free_port()
    command = ([fmkit_executable(), "serve", "--model-dir", str(model_dir), "--host",
                "127.0.0.1", *args] if model_dir else [fmkit_executable(), "sagemaker", "serve"])
    if "--port" not in args and not (env and "SAGEMAKER_BIND_TO_PORT" in env):
        command += ["--port", str(port)]
    # a file, not a pipe: a pipe nobody reads would block the server once full; it lives as
    # long as the server process
    log = tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, **(env or {})})
    proc.log = log  # (what it wrote: read after stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read().decode())
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def a9a():
    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=123)
    Xt, _ = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a.t")), n_features=123)
    return X, y, Xt[:40].astype(np.float32)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, a9a):
    X, y, _ = a9a
    path = tmp_path_factory.mktemp("clf") / "model"
    FMClassifier(num_factors=8, epochs=2, mini_batch_size=100, linear_lr=0.003,
                 factors_lr=0.003).fit(X, y, progress=False).save(path)
    return path


@pytest.fixture(scope="module")
def server(classifier):
    proc, url = start_server(classifier, "--workers", "2", "--max-payload-mb", "0.5")
    yield url
    stop(proc)


def test_serve_quiet_logs_its_warnings_only(classifier):
    """--quiet, as every command has it: no start-up or shutdown lines, a bad request's
    warning still."""
    proc, url = start_server(classifier, "--quiet")
    try:
        answer = httpx.post(f"{url}/invocations", content=b"{", headers={"Content-Type": JSON})
        assert answer.status_code == 400
    finally:
        stop(proc)
    proc.log.seek(0)
    lines = proc.log.read().decode().splitlines()
    assert len(lines) == 1 and " WARNING " in lines[0] and "400 for POST /invocations" in (
        lines[0]), lines


def expected_scores(model_dir, X) -> np.ndarray:
    """sigmoid of the reference FM on the model's weights (not the serving code path)."""
    model = FMModel.load(model_dir)
    return sigmoid(reference_logits(model.params, X))


def batch_predict(model_dir, X, tmp_path) -> np.ndarray:
    data = tmp_path / "rows.libsvm"
    dump_svmlight_file(X, np.zeros(X.shape[0]), str(data), zero_based=True)
    out = tmp_path / "pred.jsonl"
    predict_files(model_dir, data, out, fmt="libsvm")
    return np.array([json.loads(line)["score"] for line in out.read_text().splitlines()])


def sparse_instances(X):
    return [{"data": {"features": {"keys": X[r].indices.tolist(), "shape": [X.shape[1]],
                                   "values": X[r].data.tolist()}}} for r in range(X.shape[0])]


def request_bodies(X):
    """Every request form of sagemaker_fm.md §3, each holding the rows of X."""
    dense = X.toarray().tolist()
    sdk_dense, sdk_sparse = io.BytesIO(), io.BytesIO()
    write_numpy_to_dense_tensor(sdk_dense, X.toarray().astype(np.float32))
    write_spmatrix_to_sparse_tensor(sdk_sparse, X)
    f64, i32 = io.BytesIO(), io.BytesIO()
    write_numpy_to_dense_tensor(f64, X.toarray().astype(np.float64))
    write_numpy_to_dense_tensor(i32, X.toarray().astype(np.int64))  # a9a is 0/1: exact
    mixed = []
    for r, row in enumerate(dense):
        forms = [{"features": row}, {"data": {"features": {"values": row}}},
                 sparse_instances(X[r])[0]]
        mixed.append(json.dumps(forms[r % 3]))
    sparse_text = json.dumps({"instances": sparse_instances(X)}, indent=1)
    # the docs' example ends its instance list with a comma: `...},\n]}`
    instances_text = sparse_text.rstrip()[:-1].rstrip()[:-1].rstrip()
    trailing_comma = instances_text + ",\n]\n}"
    return [
        ("json dense features", JSON, json.dumps({"instances": [{"features": r} for r in dense]})),
        ("json data.features.values", JSON,
         json.dumps({"instances": [{"data": {"features": {"values": r}}} for r in dense]})),
        ("json sparse", JSON, sparse_text),
        ("json sparse, trailing comma", JSON, trailing_comma),
        ("json bare list", JSON, json.dumps(dense)),
        ("json instances of lists", JSON, json.dumps({"instances": dense})),
        ("jsonlines mixed", JSONLINES, "\n".join(mixed)),
        # a byte-order mark first, as PowerShell and older Notepad save UTF-8 (RFC 8259 lets a
        # parser ignore it; the body was 'malformed JSON ... line 1 column 1')
        ("json sparse, byte-order mark", JSON, "\ufeff" + sparse_text),
        ("jsonlines mixed, byte-order mark", JSONLINES, "\ufeff" + "\n".join(mixed)),
        ("recordio dense float32", RECORDIO, sdk_dense.getvalue()),
        ("recordio dense float64", RECORDIO, f64.getvalue()),
        ("recordio dense int32", RECORDIO, i32.getvalue()),
        ("recordio sparse", RECORDIO, sdk_sparse.getvalue()),
    ]


def decode_response(content: bytes, accept: str) -> tuple[np.ndarray, np.ndarray]:
    if accept == JSON:
        rows = json.loads(content)["predictions"]
    elif accept == JSONLINES:
        rows = [json.loads(line) for line in content.decode().splitlines()]
    else:
        rows = [{name: r.label[name].float32_tensor.values[0] for name in r.label}
                for r in read_records(io.BytesIO(content))]
    return (np.array([r["score"] for r in rows]), np.array([r["predicted_label"] for r in rows]))


@pytest.mark.parametrize("accept", [JSON, JSONLINES, RECORDIO])
def test_every_request_type_scores_like_batch_predict(server, classifier, a9a, accept,
                                                      tmp_path):
    _, _, X = a9a
    batch = batch_predict(classifier, X, tmp_path)
    reference = expected_scores(classifier, X)
    np.testing.assert_allclose(batch, reference, rtol=1e-5)
    with httpx.Client(base_url=server) as client:
        for name, content_type, body in request_bodies(X):
            response = client.post("/invocations", content=body,
                                   headers={"Content-Type": content_type, "Accept": accept})
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"].startswith(accept)
            scores, labels = decode_response(response.content, accept)
            tolerance = 1e-7 if accept == RECORDIO else 1e-12  # recordIO carries float32
            np.testing.assert_allclose(scores, batch, rtol=tolerance, atol=tolerance,
                                       err_msg=name)
            np.testing.assert_array_equal(labels, (scores >= 0.5).astype(float), err_msg=name)


@pytest.mark.parametrize("fmt,content_type", [("json", JSON), ("jsonlines", JSONLINES),
                                              ("recordio", RECORDIO)])
def test_batch_prediction_reads_request_bodies_and_writes_responses(
        server, classifier, a9a, tmp_path, fmt, content_type):
    _, _, X = a9a
    body = dict((t, b) for n, t, b in request_bodies(X) if "sparse" in n or t == JSONLINES)
    data = tmp_path / f"requests.{fmt}"
    payload = body[content_type]
    data.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    for accept in (JSON, JSONLINES, RECORDIO):
        out = tmp_path / "out"
        predict_files(classifier, data, out, fmt=fmt, accept=accept)
        online = httpx.post(f"{server}/invocations", content=payload,
                            headers={"Content-Type": content_type, "Accept": accept})
        assert out.read_bytes() == online.content, (fmt, accept)


def test_status_codes_and_resilience(server, a9a):
    _, _, X = a9a
    good = json.dumps({"instances": sparse_instances(X[:3])})
    cases = [
        ({"Content-Type": "text/csv"}, "1,2,3", 415, "unsupported Content-Type 'text/csv'"),
        ({"Content-Type": JSON, "Accept": "text/html"}, good, 406, "cannot produce Accept"),
        ({"Content-Type": JSON}, '{"instances": [', 400, "malformed JSON"),
        ({"Content-Type": JSON}, json.dumps({"instances": [{"features": [1, 2]}]}), 400,
         "instance 1: dense features have 2 values, expected 123"),
        ({"Content-Type": JSON},
         json.dumps({"instances": [{"data": {"features": {"keys": [5, 500], "shape": [123],
                                                          "values": [1, 1]}}}]}), 400,
         "instance 1: keys[1]: key 500 is out of range: feature_dim=123"),
        ({"Content-Type": JSON},
         json.dumps({"instances": [{"data": {"features": {"keys": [5], "shape": [999],
                                                          "values": [1]}}}]}), 400,
         "shape [999] does not match feature_dim [123]"),
        ({"Content-Type": JSONLINES}, '{"features": [1]}\nnot json', 400, "line 1"),
        ({"Content-Type": RECORDIO}, b"\x00" * 16, 400, "bad RecordIO magic number"),
        ({"Content-Type": JSON}, "[" + "0," * 400_000 + "0]", 413, "exceeds the limit"),
    ]
    with httpx.Client(base_url=server) as client:
        for headers, body, status, message in cases:
            response = client.post("/invocations", content=body, headers=headers)
            assert response.status_code == status, (headers, response.text)
            assert message in response.json()["error"], response.text
            assert "Traceback" not in response.text
        for i in range(1000):
            headers, body, status, _ = cases[i % len(cases)]
            response = client.post("/invocations", content=body, headers=headers)
            assert response.status_code == status, (i, headers)
        assert client.get("/ping").status_code == 200
        response = client.post("/invocations", content=good, headers={"Content-Type": JSON})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 3
        for body, content_type, answer in (('{"instances": []}', JSON, '{"predictions": []}'),
                                           ("[]", JSON, '{"predictions": []}'),
                                           ("", JSONLINES, "")):  # (each was a 500)
            response = client.post("/invocations", content=body, headers={
                "Content-Type": content_type, "Accept": content_type})
            assert response.status_code == 200 and response.text == answer, response.text
        no_accept = client.post("/invocations", content=good,
                                headers={"Content-Type": "application/json; charset=utf-8",
                                         "Accept": "*/*"})
        assert no_accept.headers["content-type"].startswith(JSON)


def test_compressed_bodies_score_as_the_plain_ones(server, a9a):
    """gzip and deflate (zlib-wrapped or raw) bodies of each request type answer the bytes
    their plain body answers; another coding is a 415, a damaged stream a 400, and a body
    that inflates past --max-payload-mb (0.5 here) a 413, on a connection that stays open."""
    import gzip
    import zlib

    _, _, X = a9a
    dense = io.BytesIO()
    write_numpy_to_dense_tensor(dense, X[:5].toarray())
    bodies = [(JSON, json.dumps({"instances": sparse_instances(X[:5])}).encode()),
              (RECORDIO, dense.getvalue())]

    def raw_deflate(data: bytes) -> bytes:
        packer = zlib.compressobj(wbits=-15)
        return packer.compress(data) + packer.flush()

    with httpx.Client(base_url=server) as client:
        for content_type, body in bodies:
            plain = client.post("/invocations", content=body,
                                headers={"Content-Type": content_type})
            assert plain.status_code == 200 and len(plain.json()["predictions"]) == 5
            for coding, packed in (("gzip", gzip.compress(body)),
                                   ("x-gzip", gzip.compress(body)),
                                   ("deflate", zlib.compress(body)),
                                   ("deflate", raw_deflate(body)),
                                   ("identity", body)):
                response = client.post("/invocations", content=packed, headers={
                    "Content-Type": content_type, "Content-Encoding": coding})
                assert response.content == plain.content, (content_type, coding)
        body = bodies[0][1]
        bomb = gzip.compress(b" " * 600_000 + body)  # 1.2 KB that inflates past 0.5 MB
        for coding, packed, status, message in (
                ("br", gzip.compress(body), 415, "unsupported Content-Encoding 'br'"),
                ("gzip, gzip", gzip.compress(gzip.compress(body)), 415, "unsupported"),
                ("gzip", body, 400, "the body is not gzip data"),
                ("gzip", gzip.compress(body)[:-9], 400, "not one complete gzip stream"),
                ("gzip", gzip.compress(body) * 2, 400, "bytes after its end"),
                ("gzip", bomb, 413, "once decompressed")):
            response = client.post("/invocations", content=packed, headers={
                "Content-Type": JSON, "Content-Encoding": coding})
            assert response.status_code == status and message in response.json()["error"], (
                coding, response.text)
        assert client.post("/invocations", content=body,
                           headers={"Content-Type": JSON}).status_code == 200


def test_regressor_responses_have_no_label_and_bind_to_port(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(500, 20, density=0.3, random_state=0, format="csr")
    model_dir = tmp_path / "reg"
    FMRegressor(num_factors=4, epochs=2).fit(X, rng.normal(size=500), progress=False).save(
        model_dir)
    port = free_port()
    proc, url = start_server(model_dir, env={"SAGEMAKER_BIND_TO_PORT": str(port)}, port=port)
    try:
        body = json.dumps({"instances": sparse_instances(X[:4].astype(np.float32))})
        response = httpx.post(f"{url}/invocations", content=body,
                              headers={"Content-Type": JSON, "Accept": JSONLINES})
        rows = [json.loads(line) for line in response.text.splitlines()]
        model = FMModel.load(model_dir)
        expected = reference_logits(model.params, X[:4])
        assert all(set(r) == {"score"} for r in rows)
        np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-5)
    finally:
        stop(proc)


class RuntimeShim:
    """The part of boto3's sagemaker-runtime client the SDK predictor calls, POSTing to us."""

    def __init__(self, url: str):
        self.url = url

    def invoke_endpoint(self, Body, EndpointName, ContentType=None, Accept=None, **_):
        body = Body.getvalue() if hasattr(Body, "getvalue") else Body
        if isinstance(body, str):
            body = body.encode()
        response = httpx.post(f"{self.url}/invocations", content=body,
                              headers={"Content-Type": ContentType, "Accept": Accept or "*/*"})
        assert response.status_code == 200, response.text
        return {"Body": io.BytesIO(response.content),
                "ContentType": response.headers["content-type"]}


@pytest.mark.parametrize("payload, workers, sent_mb, status, expected", [
    (None, "2", 6.5, 413, {"MaxConcurrentTransforms": 2, "MaxPayloadInMB": 6}),
    ("20", "2", 6.5, 200, {"MaxConcurrentTransforms": 2, "MaxPayloadInMB": 20}),
    ("60", "3", 1, 200, {"MaxConcurrentTransforms": 1, "MaxPayloadInMB": 60}),
])
def test_a_batch_transform_jobs_payload_and_concurrency(classifier, tmp_path, a9a, payload,
                                                        workers, sent_mb, status, expected):
    """A Batch Transform job's MaxPayloadInMB ($SAGEMAKER_MAX_PAYLOAD_IN_MB) is the largest
    body it sends: fmkit sagemaker serve takes it (a 6.5 MB body was 413 whatever the job
    said). GET /execution-parameters offers a request in flight per worker (it said 1, leaving
    the other workers idle), within SageMaker's 100 MB for their product."""
    _, _, X = a9a
    shutil.copytree(classifier, tmp_path / "model")
    port = free_port()
    env = {"FMKIT_OPT_ML": str(tmp_path), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SAGEMAKER_MODEL_SERVER_WORKERS": workers,
           **({"SAGEMAKER_MAX_PAYLOAD_IN_MB": payload} if payload else {})}
    proc, url = start_server(None, port=port, env=env)
    try:
        parameters = httpx.get(f"{url}/execution-parameters").json()
        assert parameters == {**expected, "BatchStrategy": "MULTI_RECORD"}
        row = json.dumps({"data": {"features": {"keys": X[0].indices.tolist(), "shape": [123],
                                                "values": X[0].data.tolist()}}})
        rows = int(sent_mb * 2**20 / (len(row) + 2))
        body = '{"instances": [' + ", ".join([row] * rows) + "]}"
        answer = httpx.post(f"{url}/invocations", content=body, timeout=120,
                            headers={"Content-Type": JSON, "Accept": "application/jsonlines"})
        assert answer.status_code == status, answer.text[:200]
        if status == 200:
            scores = [json.loads(line)["score"] for line in answer.text.splitlines()]
            assert len(scores) == rows
            np.testing.assert_allclose(scores, expected_scores(classifier, X[:1]).repeat(rows),
                                       rtol=1e-6)
    finally:
        stop(proc)


def test_sagemaker_sdk_predictor_against_fmkit_serve(server, classifier, a9a):
    import boto3
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    _, _, X = a9a
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"),
                                sagemaker_runtime_client=RuntimeShim(server))
    expected = expected_scores(classifier, X)
    predictor = sagemaker.FactorizationMachinesPredictor("fmkit-local", sagemaker_session=session)
    for dtype in (np.float32, np.float64):
        records = predictor.predict(X.toarray().astype(dtype))
        scores = np.array([r.label["score"].float32_tensor.values[0] for r in records])
        labels = np.array([r.label["predicted_label"].float32_tensor.values[0] for r in records])
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
        np.testing.assert_array_equal(labels, (scores >= 0.5).astype(float))
    json_predictor = sagemaker.FactorizationMachinesPredictor(
        "fmkit-local", sagemaker_session=session, serializer=JSONSerializer(),
        deserializer=JSONDeserializer())
    result = json_predictor.predict(X.toarray().tolist())
    np.testing.assert_allclose([p["score"] for p in result["predictions"]], expected, rtol=1e-5)
    sparse_result = json_predictor.predict({"instances": sparse_instances(X)})
    np.testing.assert_allclose([p["score"] for p in sparse_result["predictions"]], expected,
                               rtol=1e-5)


@pytest.mark.parametrize("preset", [None, "3"])
def test_several_workers_split_the_cores(classifier, monkeypatch, preset):
    """With 2 workers each scores on cores // 2 threads (numba's and PyTorch's), unless the
    environment already chose; uvicorn is replaced by a stub that records what it would start
    the workers with."""
    import uvicorn

    from fmkit.cpus import available_cpus
    from fmkit.serve import app

    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", app.MODEL_DIR_ENV,
                 app.MAX_PAYLOAD_ENV, app.BODY_TIMEOUT_ENV, app.worker_pool.DIR_ENV,
                 app.worker_pool.COUNT_ENV):
        # set, then removed: monkeypatch then restores the variable's state before the test
        # after serve() sets it. A NUMBA_NUM_THREADS left behind would make the next numba
        # compile in this process (a cold cache) refuse to run ("Cannot set NUMBA_NUM_THREADS
        # ... once the threads have been launched").
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    if preset:
        monkeypatch.setenv("NUMBA_NUM_THREADS", preset)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(
        workers=k["workers"], numba=os.environ.get("NUMBA_NUM_THREADS"),
        omp=os.environ.get("OMP_NUM_THREADS")))
    app.serve(str(classifier), host="127.0.0.1", port=free_port(), workers=2)
    share = str(max(1, available_cpus() // 2))
    assert seen == {"workers": 2, "numba": preset or share, "omp": share}


class _Recording:
    """A model that records what it scores, and otherwise is the model it wraps."""

    def __init__(self, model):
        self.model, self.scored = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predictions(self, batch):
        self.scored.append(batch.n_rows)
        return self.model.predictions(batch)


def test_a_new_server_scores_its_warm_up_requests_before_it_answers(classifier):
    """A worker's first request would otherwise wait while it loads its compiled kernels: the
    app scores the model's warm-up bodies (a JSON row and a recordIO block of PARALLEL_ROWS
    rows) at startup, before the first /ping."""
    from starlette.testclient import TestClient

    from fmkit.models.fm.model import PARALLEL_ROWS
    from fmkit.serve.app import create_app

    model = _Recording(FMModel.load(classifier))
    app = create_app(model)
    assert model.scored == []
    with TestClient(app) as client:
        assert model.scored == [1, PARALLEL_ROWS]
        assert client.get("/ping").status_code == 200


def _server_side_owner(server_port: int, client_port: int) -> int:
    """The process id holding the server's end of the connection from ``client_port`` (found
    the way ``ss -p`` does: the socket's inode in /proc/net/tcp, then in /proc/*/fd)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (server_port, client_port) and fields[3] == "01":  # ESTABLISHED
            inode = fields[9]
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return int(pid)
    raise AssertionError(f"no process holds socket {inode}")


def test_connections_opened_together_reach_different_workers(classifier, a9a):
    """Two keep-alive connections opened at once, right after the first /ping answer (the
    moment a client or a benchmark starts), end up served by both workers rather than one:
    the workers start accepting together, a worker leaves a new connection to an idle peer,
    and a worker two connections ahead closes one (the client reconnects). Without these,
    both connections stayed in one worker in 3 of 4 runs."""
    import http.client

    _, _, Xt = a9a
    body = json.dumps({"instances": sparse_instances(Xt[:1])})
    port = free_port()
    proc, _ = start_server(classifier, "--workers", "2", port=port)
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(2)]
    try:
        for client in clients:
            client.connect()
        owners: set[int] = set()
        deadline = time.monotonic() + 5  # a loaded machine: the close-one rule acts in 0.1 s
        while len(owners) < 2 and time.monotonic() < deadline:
            for client in clients:  # (a connection the server closed is opened again)
                client.request("POST", "/invocations", body, {"Content-Type": JSON})
                response = client.getresponse()
                assert response.status == 200
                response.read()
            owners = {_server_side_owner(port, c.sock.getsockname()[1])
                      for c in clients if c.sock is not None}
        assert len(owners) == 2, "both connections stayed in one worker"
    finally:
        for client in clients:
            client.close()
        stop(proc)


def test_a_worker_answers_only_when_every_worker_is_ready(tmp_path, monkeypatch):
    """A worker waits until every worker has announced itself in the parent's directory; a
    dead worker's file does not count; after the timeout it gives up waiting."""
    import asyncio
    import threading

    from fmkit.serve import workers

    monkeypatch.setattr(workers, "_board", None)
    monkeypatch.setenv(workers.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(workers.COUNT_ENV, "2")
    finished = subprocess.Popen(["true"])  # noqa: S607 (a worker that has died)
    finished.wait()
    (tmp_path / str(finished.pid)).write_bytes(bytes(8))
    assert asyncio.run(workers.wait_for_workers(timeout=0.3)) is False  # alone with the dead
    assert not (tmp_path / str(finished.pid)).exists()  # whose file it removed

    peer = subprocess.Popen(["sleep", "30"])  # noqa: S607 (a live process standing for a peer)
    try:
        threading.Timer(0.3, (tmp_path / str(peer.pid)).write_bytes, [bytes(8)]).start()
        started = time.monotonic()
        assert asyncio.run(workers.wait_for_workers(timeout=10)) is True
        assert time.monotonic() - started >= 0.25
        assert workers._board.peers() == [0]  # the peer's published count
    finally:
        peer.kill()
        peer.wait()


def test_a_killed_servers_meeting_place_is_removed_by_the_next(tmp_path, monkeypatch):
    """The workers' directory is named by host and process id: one a parent killed with
    SIGKILL left (its process gone) is removed when the next server makes its own; a live
    server's is kept; the server's own is removed when it stops."""
    from fmkit import files
    from fmkit.serve import workers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for name in (workers.DIR_ENV, workers.COUNT_ENV):  # restored after the test
        monkeypatch.setenv(name, "")
    finished = subprocess.Popen(["true"])  # noqa: S607 (a parent that has died)
    finished.wait()
    host = files._HOST
    dead = tmp_path / f".fmkit-serve.partial-{host}-{finished.pid}-x1"
    live = tmp_path / f".fmkit-serve.partial-{host}-{os.getppid()}-x2"
    for directory in (dead, live):
        directory.mkdir()
        (directory / "123").write_bytes(bytes(8))
    with workers.meeting_place(2):
        own = Path(os.environ[workers.DIR_ENV])
        assert own.is_dir() and own.parent == tmp_path
        assert not dead.exists() and live.exists()
    assert not own.exists() and live.exists()


def test_a_worker_two_connections_ahead_of_a_peer_closes_one(tmp_path, monkeypatch):
    """``should_close_connection``: with two connections more than a live peer a worker
    closes the one it answers on, at most once per check interval; one ahead, it keeps it."""
    from fmkit.serve import workers

    peer = subprocess.Popen(["sleep", "30"])  # noqa: S607 (a live process standing for a peer)
    try:
        (tmp_path / str(peer.pid)).write_bytes((1).to_bytes(8, "little"))
        board = workers.Board(tmp_path)
        monkeypatch.setattr(workers, "_board", board)
        board.publish(2)
        assert workers.should_close_connection() is False  # one ahead of the peer's 1
        board.next_check = 0.0
        board.publish(3)
        assert workers.should_close_connection() is True
        assert workers.should_close_connection() is False  # checked again only later
        board.next_check = 0.0
        peer.kill()
        peer.wait()
        assert workers.should_close_connection() is False  # a dead peer's count is ignored
    finally:
        peer.kill()
        peer.wait()


def test_connections_left_to_a_busy_peer_are_all_taken_on_the_next_wake(monkeypatch):
    """A worker ahead of its peer leaves waiting connections to it for DEFER seconds; when
    they still wait, its next wake takes all of them however late it comes (a busy loop's pass
    outlasts DEFER: it took one connection per deferral, and a burst of hundreds waited
    seconds). A real listening socket; a stand-in event loop whose clock jumps a pass."""
    from fmkit.serve import workers

    class Board:  # a peer holding no connection
        def peers(self):
            return [0]

        def publish(self, count):
            pass

    class Loop:
        def __init__(self):
            self.now, self.later, self.reading = 0.0, [], False

        def time(self):
            return self.now

        def add_reader(self, fd, callback):
            self.reading = True

        def remove_reader(self, fd):
            self.reading = False

        def call_later(self, delay, callback):
            self.later.append(callback)

        def create_task(self, coroutine):
            coroutine.close()  # (the connection's protocol is not needed here)

    monkeypatch.setattr(workers, "_board", Board())
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
    try:
        loop = Loop()
        acceptor = workers.BalancedAcceptor(loop, listener, lambda: None)
        acceptor._open = 3  # ahead of the peer
        acceptor._ready()
        assert acceptor._open == 3 and not loop.reading and len(loop.later) == 1  # deferred
        loop.now += workers.DEFER
        loop.later.pop()()  # the deferral's end: reading again
        loop.now += 0.5  # a busy pass before the wake
        acceptor._ready()
        assert acceptor._open == 3 + 20 and loop.reading
        acceptor._ready()  # a further wake weighs again: still ahead, it defers
        assert acceptor._open == 23 and not loop.reading and len(loop.later) == 1
    finally:
        for client in clients:
            client.close()
        listener.close()
