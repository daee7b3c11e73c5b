"""Load test of ``fmkit serve`` with wrk: requests/s and p50/p99 latency per request type.

    python benchmarks/bench_server.py [--duration 10] [--connections 2,4,16] [--only fm|deepfm]

Serves, with 2 worker processes each, an FM (10^6 features, k=8; 1-row and 100-row requests of
39 active features, as JSON sparse instances and recordIO-protobuf) and a DeepFM
(``examples/deepfm_criteo.yaml`` trained for one epoch on ../shared/data's 1,000 Criteo rows;
JSON requests of those rows' raw columns), and drives each with wrk (Debian's ``wrk`` package;
the script installs it with apt-get when missing) over loopback. wrk runs on the same 2-core
machine as the server, so the figures are a lower bound. Each request type runs at every
connection count given: 2 (one request in flight per worker, when the kernel gives each
worker one: the latency a lone client sees), 4, and 16 (a queue: throughput; p99 then
includes the wait in it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
FEATURES, K, FIELDS = 1_000_000, 8, 39
REPO = HERE.parent
CRITEO = Path(os.environ.get("FMKIT_SHARED_DATA", REPO.parent / "shared" / "data")
              ) / "criteo_kaggle_head1000" / "train.txt"
CRITEO_COLUMNS = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]

LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
wrk.headers["Accept"] = "{accept}"
"""


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk")


def make_model() -> Path:
    from fmkit.models.fm.hyperparameters import validate
    from fmkit.models.fm.model import FMModel
    from fmkit.models.fm.parameters import init_parameters

    path = CACHE / "serve-model"
    if not path.exists():
        hp = validate(dict(feature_dim=FEATURES, num_factors=K,
                           predictor_type="binary_classifier", factors_init_sigma=0.1))
        FMModel(hp, init_parameters(hp)).save(path)
    return path


def make_bodies(rows: int, workdir: Path) -> dict[str, Path]:
    import io
    import json

    from fmkit.data import recordio

    rng = np.random.default_rng(rows)
    ids = np.sort(rng.choice(FEATURES, size=(rows, FIELDS)), axis=1)
    X = sp.csr_matrix((np.ones(rows * FIELDS, np.float32), ids.ravel(),
                       np.arange(0, rows * FIELDS + 1, FIELDS)), shape=(rows, FEATURES))
    X.sum_duplicates()
    instances = [{"data": {"features": {"keys": X[r].indices.tolist(), "shape": [FEATURES],
                                        "values": X[r].data.tolist()}}} for r in range(rows)]
    json_path = workdir / f"body-{rows}.json"
    json_path.write_text(json.dumps({"instances": instances}))
    buf = io.BytesIO()
    recordio.write_rows(buf, X)
    rec_path = workdir / f"body-{rows}.rec"
    rec_path.write_bytes(buf.getvalue())
    return {"application/json": json_path, "application/x-recordio-protobuf": rec_path}


def make_deepfm_model() -> Path:
    """examples/deepfm_criteo.yaml trained one epoch on the 1,000 Criteo rows (cached)."""
    path = CACHE / "serve-deepfm"
    if not path.exists():
        if not CRITEO.is_file():
            raise SystemExit(f"{CRITEO} is missing: the DeepFM rows need ../shared/data")
        fmkit = str(Path(sys.executable).parent / "fmkit")
        subprocess.run([fmkit, "train", "--config", str(REPO / "examples" / "deepfm_criteo.yaml"),
                        "--train", str(CRITEO), "--test", str(CRITEO), "--model-dir", str(path),
                        "--set", "train_config.num_epochs=1", "--quiet"], check=True)
    return path


def make_deepfm_bodies(rows: int, workdir: Path) -> dict[str, Path]:
    """JSON requests of the first ``rows`` Criteo rows' raw columns (empty fields left out,
    counts as numbers, categories as strings)."""
    instances = []
    for line in CRITEO.read_text().splitlines()[:rows]:
        values = line.split("\t")[1:]
        instances.append({name: (int(value) if name.startswith("I") else value)
                          for name, value in zip(CRITEO_COLUMNS, values) if value})
    path = workdir / f"deepfm-{rows}.json"
    path.write_text(json.dumps({"instances": instances}))
    return {"application/json": path}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_wrk(output: str) -> tuple[float, str, str, int]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rate, p50, p99, int(errors.group(1)) if errors else 0


def first_answers(port: int, body: bytes, content_type: str, clients: int) -> list[float]:
    """Seconds from connecting to the first answer, of ``clients`` connections opened at
    once (each on a thread, raw HTTP/1.1)."""
    import threading

    request = (f"POST /invocations HTTP/1.1\r\nHost: b\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    seconds: list[float] = []

    def one() -> None:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request)
            s.recv(65536)
        seconds.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(seconds)


def new_connections(wrk: str, port: int, script: Path, body: Path, content_type: str,
                    label: str, busy: int = 64, clients: int = 50) -> None:
    """The wait of new connections while ``busy`` keep-alive connections keep the server at
    work (a client pool growing under load): first answers of ``clients`` opened at once."""
    url = f"http://127.0.0.1:{port}/invocations"
    load = subprocess.Popen([wrk, "-t1", f"-c{busy}", "-d8s", "-s", str(script), url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        waits = first_answers(port, body.read_bytes(), content_type, clients)
    finally:
        load.wait()
    print(f"{label}: {clients} new connections beside {busy} busy ones, first answer p50 "
          f"{waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms", flush=True)


def burst(wrk: str, port: int, script: Path, label: str, clients: int = 300) -> None:
    """``clients`` connections opened at once (wrk opens all of them at its start), then kept
    busy for 10 s: the start's wait shows in p99 and max, and in wrk's timeouts (2 s)."""
    out = subprocess.run([wrk, "-t2", f"-c{clients}", "-d10s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}/invocations"],
                         capture_output=True, text=True, check=True).stdout
    rate, p50, p99, _ = parse_wrk(out)
    longest = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)
    timeouts = re.search(r"timeout (\d+)", out)
    print(f"{label}: {clients} connections at once, 1-row json: {rate:,.0f} requests/s, p50 "
          f"{p50}, p99 {p99}, max {longest}, {timeouts.group(1) if timeouts else 0} timeouts",
          flush=True)


def load_test(wrk: str, model: Path, bodies, label: str, args) -> None:
    """Serve ``model`` with ``args.workers`` workers; one wrk run per request body, then the
    wait of new connections beside busy ones (1-row JSON)."""
    port = free_port()
    fmkit = str(Path(sys.executable).parent / "fmkit")
    server = subprocess.Popen([fmkit, "serve", "--model-dir", str(model), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", str(args.workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for rows in (1, 100):
                for content_type, body in bodies(rows, workdir).items():
                    script = workdir / "post.lua"
                    script.write_text(LUA.format(body=body, content_type=content_type,
                                                 accept=content_type))
                    for connections in args.connections:
                        # a warm-up at the same connection count, then the measured run
                        subprocess.run([wrk, "-t2", f"-c{connections}", "-d2s", "-s",
                                        str(script), f"{url}/invocations"],
                                       capture_output=True, check=True)
                        out = subprocess.run([wrk, "-t2", f"-c{connections}",
                                              f"-d{args.duration}s", "--latency", "-s",
                                              str(script), f"{url}/invocations"],
                                             capture_output=True, text=True, check=True).stdout
                        rate, p50, p99, errors = parse_wrk(out)
                        name = (f"{label}, {rows} row{'s' if rows > 1 else ''}, "
                                f"{content_type.split('/')[1]}, {connections} conn.")
                        print(f"{name:<42}{rate:>12,.0f}{rate * rows:>12,.0f}{p50:>10}"
                              f"{p99:>10}{errors:>9}", flush=True)
            json_body = bodies(1, workdir)["application/json"]
            script = workdir / "post.lua"
            script.write_text(LUA.format(body=json_body, content_type="application/json",
                                         accept="application/json"))
            new_connections(wrk, port, script, json_body, "application/json", label)
            burst(wrk, port, script, label)
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per request type")
    parser.add_argument("--connections", default="2,4,16",
                        type=lambda text: [int(n) for n in text.split(",")],
                        help="comma-separated connection counts, one run each")
    parser.add_argument("--only", choices=("fm", "deepfm"), help="serve only this model")
    parser.add_argument("--workers", type=int, default=2, help="fmkit serve --workers")
    args = parser.parse_args()
    wrk = ensure_wrk()
    CACHE.mkdir(exist_ok=True)
    print(f"fmkit serve, {args.workers} worker(s); wrk -t2 -d{args.duration}s over "
          f"loopback. FM: {FEATURES} features, k={K}, {FIELDS} active features per row. "
          "DeepFM: examples/deepfm_criteo.yaml, 39 raw columns per row\n")
    print(f"{'request':<42}{'requests/s':>12}{'rows/s':>12}{'p50':>10}{'p99':>10}"
          f"{'non-2xx':>9}")
    if args.only != "deepfm":
        load_test(wrk, make_model(), make_bodies, "FM", args)
    if args.only != "fm":
        load_test(wrk, make_deepfm_model(), make_deepfm_bodies, "DeepFM", args)


if __name__ == "__main__":
    main()
