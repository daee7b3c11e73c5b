"""The inference server: SageMaker's ``GET /ping`` and ``POST /invocations`` on Starlette.

Run by uvicorn (``fmkit serve``); each worker process loads the model once at start-up. A bad
request is answered with a 4xx status and ``{"error": "..."}``, logged, and never takes the
server down; an unexpected failure answers 500 without a traceback (the log has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fmkit.cpus import process_threads
from fmkit.data import codecs
from fmkit.errors import FMKitError, excerpt, require_option
from fmkit.models.base import load_model
from fmkit.serve import workers as worker_pool

log = logging.getLogger("fmkit.serve")

MODEL_DIR_ENV = "FMKIT_MODEL_DIR"
MAX_PAYLOAD_ENV = "FMKIT_MAX_PAYLOAD_MB"
DEFAULT_MAX_PAYLOAD_MB = 6.0  # SageMaker's MaxPayloadInMB default
INLINE_BYTES = 64 * 1024  # bodies up to this size (~2 ms of work) are scored on the event loop
BODY_TIMEOUT_ENV = "FMKIT_BODY_TIMEOUT"
DEFAULT_BODY_TIMEOUT = 60.0  # seconds a client may take to send a request body


DRAIN_LIMIT = 64 * 1024 * 1024  # read and drop up to this much of an oversized body


class PayloadTooLarge(codecs.RequestError):
    status = 413

    def __init__(self, message: str, drained: bool):
        super().__init__(message)
        self.drained = drained  # False: the connection must close, unread bytes follow


class BodyTimeout(codecs.RequestError):
    status = 408


def _expire(task: asyncio.Task, expired: list) -> None:
    expired.append(True)
    task.cancel()


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The body, or 413, or 408 when it takes more than ``seconds`` to arrive (a client
    sending a byte a minute must not hold a connection forever; the timer starts only when
    the body does not come in one piece). An oversized body is read to its end (up to
    ``DRAIN_LIMIT``) so the client, still sending, can read the answer and keep its
    connection."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    if too_big and int(declared) > DRAIN_LIMIT:
        raise PayloadTooLarge(f"payload of {declared} bytes exceeds the limit of {limit}", False)
    chunks, size, timer, expired = [], 0, None, []
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                too_big = True
                if size > DRAIN_LIMIT:
                    raise PayloadTooLarge(f"payload exceeds the limit of {limit} bytes", False)
            elif not too_big:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
            if timer is None:
                timer = asyncio.get_running_loop().call_later(
                    seconds, _expire, asyncio.current_task(), expired)
    except asyncio.CancelledError:
        if not expired:
            raise
        raise BodyTimeout(f"the request body did not arrive within {seconds:g} s") from None
    finally:
        if timer is not None:
            timer.cancel()
    if too_big:
        raise PayloadTooLarge(f"payload of {size} bytes exceeds the limit of {limit}", True)
    return b"".join(chunks)


def _inflated(work, coding: str, limit: int, body: bytes):
    """``work`` on ``body`` with its Content-Encoding ``coding`` undone."""
    return work(codecs.decoded_body(body, coding, limit))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a request is decoded: a 6 MB body makes hundreds
    of thousands of containers, whose allocation triggers full collections that hold the GIL
    for tens of milliseconds (``/ping`` waited for them). Decoded JSON has no cycles;
    reference counting frees it. Only large requests (those scored beside the event loop)
    pause it: on small ones the pause cost more than the collections it avoided."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _freeze_what_is_loaded() -> None:
    """Everything loaded so far (the model; numba's, PyTorch's and the server's modules) out
    of the cycle collector's sight: requests make garbage, and each of the collector's full
    passes walked all of it while the loop answered nothing (the tail latency of many
    connections: docs/performance.md, session 57)."""
    gc.collect()
    gc.freeze()


def create_app(model, max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, catalogue: Any = None) -> Starlette:
    """The ASGI app serving ``model`` (an FM or a DeepFM model).

    Requests larger than ``INLINE_BYTES`` are decoded and scored on one thread beside the
    event loop (the compiled kernels and PyTorch release the GIL), so ``/ping`` answers while
    a large request is scored and uvicorn's supervisor never finds a worker unresponsive; one
    thread, because the kernels already use every core for a large request. Small requests
    are scored on the loop: the hand-off would cost more than they take.

    ``catalogue`` (an FM's prepared items, :class:`fmkit.models.fm.recommend.Catalogue`)
    enables ``POST /recommend`` (:func:`fmkit.jobs.recommend.recommend_request`)."""
    limit = int(max_payload_mb * 1024 * 1024)
    decode = model.request_decoder()
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmkit-score")

    def score(body: bytes, kind: str, accept: str) -> bytes:
        return codecs.encode_response(model.predictions(decode(body, kind)), accept)

    def paused(work, body: bytes):
        with _collector_paused():
            return work(body)

    async def ping(request: Request) -> Response:
        return Response(status_code=200)

    def recommend(body: bytes) -> bytes:
        from fmkit.jobs.recommend import recommend_request

        if catalogue is None:
            raise codecs.RequestError("this server has no item catalogue: write one with "
                                      "fmkit recommend index --model-dir DIR --items FILE "
                                      "(an FM or field-aware FM)", 404)
        return recommend_request(model, catalogue, body)

    async def invocations(request: Request) -> Response:
        return await answer(request, lambda body: score_request(request, body))

    async def recommendations(request: Request) -> Response:
        return await answer(request, lambda body: (recommend(body), codecs.JSON))

    def score_request(request: Request, body: bytes) -> tuple[bytes, str]:
        kind = codecs.request_type(request.headers.get("content-type"), model.request_types)
        accept = codecs.response_type(request.headers.get("accept"))
        return score(body, kind, accept), accept

    async def answer(request: Request, work) -> Response:
        """Read the body, run ``work`` on it (on the scoring thread when it is large), answer
        its payload, or a 4xx naming the problem."""
        try:
            # the body first: an answer never leaves it unread
            body = await _read_body(request, limit, body_timeout)
            coding = request.headers.get("content-encoding")
            if coding:  # (on the scoring thread: its size says nothing of the work inside)
                work = functools.partial(_inflated, work, coding, limit)
            if len(body) <= INLINE_BYTES and not coding:  # a millisecond at most: no hand-off
                payload, media_type = work(body)
            else:
                payload, media_type = await asyncio.get_running_loop().run_in_executor(
                    scorer, paused, work, body)
            headers = {"Connection": "close"} if worker_pool.should_close_connection() else None
            return Response(payload, media_type=media_type, headers=headers)
        except codecs.RequestError as e:
            log.warning("%d for %s %s: %s", e.status, request.method, request.url.path, e)
            # unread body bytes must not be taken for the next request on the connection
            undrained = (isinstance(e, PayloadTooLarge) and not e.drained
                         or isinstance(e, BodyTimeout))
            headers = {"Connection": "close"} if undrained else None
            return JSONResponse({"error": f"Unable to evaluate payload provided: {e}"},
                                status_code=e.status, headers=headers)
        except FMKitError as e:
            log.warning("400 for %s: %s", request.url.path, e)
            return JSONResponse({"error": f"Unable to evaluate payload provided: {e}"},
                                status_code=400)
        except Exception:
            log.exception("500 for %s", request.url.path)
            return JSONResponse({"error": "internal error"}, status_code=500)

    async def execution_parameters(request: Request) -> Response:
        """What a Batch Transform job that sets none of them uses: a request in flight per
        worker (one left the other workers idle), within SageMaker's rule that their product
        with the payload is at most 100 MB."""
        workers = int(os.environ.get(worker_pool.COUNT_ENV) or 1)
        payload = max(1, int(max_payload_mb))
        return JSONResponse({"MaxConcurrentTransforms": max(1, min(workers, 100 // payload)),
                             "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": payload})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for body, content_type in model.warm_up_requests():  # before the first /ping answer
            score(body, codecs.request_type(content_type, model.request_types), codecs.JSON)
        _freeze_what_is_loaded()
        if not await worker_pool.wait_for_workers():
            log.warning("the other workers were not ready after %g s: answering without them",
                        worker_pool.WAIT_SECONDS)
        yield
        scorer.shutdown(wait=False, cancel_futures=True)

    return Starlette(routes=[
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/recommend", recommendations, methods=["POST"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
    ], lifespan=lifespan)


def app_from_environment() -> Starlette:
    """The app for ``$FMKIT_MODEL_DIR`` (uvicorn's factory, one call per worker process)."""
    from fmkit.jobs.recommend import saved_catalogue

    model = load_model(os.environ[MODEL_DIR_ENV])
    return create_app(model, float(os.environ.get(MAX_PAYLOAD_ENV, DEFAULT_MAX_PAYLOAD_MB)),
                      float(os.environ.get(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT)),
                      saved_catalogue(os.environ[MODEL_DIR_ENV]))


def environment_int(name: str, default: int) -> int:
    """The integer in environment variable ``name`` (SageMaker's settings), else ``default``;
    anything else is a one-line error naming the variable."""
    text = os.environ.get(name) or str(default)
    try:
        return int(text)
    except ValueError:
        raise FMKitError(f"{name}={excerpt(text)} is not an integer") from None


def default_port() -> int:
    """SageMaker's ``SAGEMAKER_BIND_TO_PORT`` when set, else 8080."""
    return environment_int("SAGEMAKER_BIND_TO_PORT", 8080)


def check_port(host: str, port: int) -> None:
    """A clear error now if ``host:port`` cannot be bound (in use, or not an address of this
    machine), rather than uvicorn's log line and exit code 1 without a message on stderr."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise FMKitError(f"cannot serve on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            hint = (": stop the other server or choose another --port"
                    if e.errno == errno.EADDRINUSE else "")
            raise FMKitError(f"cannot serve on {host}:{port}: {e.strerror}{hint}") from None


def serve(model_dir: str, *, host: str = "0.0.0.0", port: int | None = None, workers: int = 1,
          max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB,
          body_timeout: float = DEFAULT_BODY_TIMEOUT, quiet: bool = False,
          **uvicorn_options: Any) -> None:
    """Load the model (failing fast if it is broken), check the port, serve with uvicorn
    (``quiet``: its warnings and errors only, as every command's ``--quiet``).
    Several workers split the cores: each scores on ``cores // workers`` threads (numba's and
    PyTorch's), where each taking every core made them preempt one another (DeepFM, 2 workers
    on 2 cores: p99 634 ms)."""
    import uvicorn

    port = port or default_port()
    require_option(workers >= 1, "--workers", ">= 1", workers)
    require_option(0 < port < 65536, "--port", "in 1..65535", port)
    require_option(max_payload_mb > 0, "--max-payload-mb", "> 0", max_payload_mb)
    require_option(body_timeout > 0, "--body-timeout", "> 0 seconds", body_timeout)
    load_model(model_dir)  # a clear error now rather than in every worker
    check_port(host, port)
    os.environ[MODEL_DIR_ENV] = str(model_dir)
    if workers > 1:  # the workers split the cores (unless the environment already says)
        for name, value in process_threads(workers).items():
            os.environ.setdefault(name, value)
    os.environ[MAX_PAYLOAD_ENV] = str(max_payload_mb)
    os.environ[BODY_TIMEOUT_ENV] = str(body_timeout)
    from uvicorn.config import STARTUP_FAILURE

    try:
        with contextlib.suppress(KeyboardInterrupt), worker_pool.meeting_place(workers):
            uvicorn.run("fmkit.serve.app:app_from_environment", factory=True, host=host,
                        port=port, workers=workers,
                        log_level="warning" if quiet else "info",
                        access_log=False, http="httptools",
                        loop=worker_pool.LOOP, **uvicorn_options)
    except SystemExit as e:  # uvicorn's start-up failed, and it logged why
        if e.code != STARTUP_FAILURE:
            raise
        # most likely the port: free at check_port, it can be taken while the model loads by
        # a server started at the same time
        raise FMKitError(f"cannot serve on {host}:{port}: the server did not start (uvicorn's "
                         "error above says why; a port in use: stop the other server or "
                         "choose another --port)") from None
