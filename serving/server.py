"""KServe ModelServer wiring around :class:`serving.predictor.HardnegReranker`.

What KServe 0.21 lacks and this adds (docs/stack.md 2):

* a host to bind (KServe hard-codes 0.0.0.0): ``HardnegRESTServer`` sets ``config.host``;
* a request body limit (``serve.max_body_bytes`` -> 413) and Prometheus counters ``hardneg_requests_total{protocol,
  status}`` / ``hardneg_errors_total{reason}`` on the same ``/metrics`` (``GuardMiddleware``, pure ASGI);
* the runtime x precision served and how it was chosen at load (``RuntimeCollector``: ``hardneg_runtime_info``,
  the candidates' timings, ``hardneg_cpu_info`` with the CPU flags) on ``/metrics``;
* for a bi-encoder export, its document-embedding cache on ``/metrics``: counters
  ``hardneg_doc_cache_hits_total{model}`` / ``hardneg_doc_cache_misses_total{model}`` and gauges
  ``hardneg_doc_cache_entries{model}`` / ``hardneg_doc_cache_capacity{model}`` (``DocCacheCollector``, read at scrape);
* batching across requests (``serving.batcher``) on ``/metrics``: histograms ``hardneg_batch_requests{model}`` and
  ``hardneg_batch_texts{model}`` (requests and queries + documents per scoring call), the counter
  ``hardneg_batch_encoded_texts_total{model}`` (texts the graphs ran: distinct, not cached) and the settings as gauges
  ``hardneg_batch_window_seconds{model}`` / ``hardneg_batch_max_texts{model}`` (``BatchCollector``, read at scrape);
* 4xx with a plain message for every malformed request (``SafeDataPlane`` + exception handlers): no Python class
  names or tracebacks in responses; unexpected errors answer a generic 500 and are logged here;
* ``GET /v2/models/<name>`` with versions and parameters (lineage, fusion weight, limits): KServe's response model
  has neither, so a route registered before KServe's answers first.

``create_app(model)`` builds a fresh FastAPI app for in-process tests; ``serve(...)`` runs the real server.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from serving import clean_argv

with clean_argv():
    import kserve.model_server as ks_model_server
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve import ModelServer
    from kserve.errors import (
        InferenceError,
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        NoModelReady,
        ServerNotReady,
    )
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.server import RESTServer
    from prometheus_client import REGISTRY, Counter
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

from serving.predictor import HardnegReranker, RequestError  # noqa: E402

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "hardneg_requests_total", "Inference requests by protocol and HTTP status", ["protocol", "status"]
)
ERRORS = Counter("hardneg_errors_total", "Failed requests by reason", ["reason"])
INTERNAL_ERROR = "internal server error (logged server-side)"


class _TrackedModels:
    """A custom Prometheus collector reading the served models at scrape time. Models are held weakly, latest per
    name."""

    def __init__(self) -> None:
        self._models: dict[str, weakref.ref[HardnegReranker]] = {}
        self._lock = threading.Lock()

    def track(self, model: HardnegReranker) -> None:
        with self._lock:
            self._models[model.name] = weakref.ref(model)

    def _live(self) -> dict[str, HardnegReranker | None]:
        with self._lock:
            return {name: ref() for name, ref in self._models.items()}


class DocCacheCollector(_TrackedModels):
    """Reads the document-embedding cache counters of the served bi-encoder(s) at scrape time (the counts live in
    :class:`hardneg.rerank.EmbeddingCache`; nothing to keep in sync)."""

    def collect(self) -> Iterator[Metric]:
        models = self._live()
        stats = {
            name: m.reranker.cache_stats()
            for name, m in sorted(models.items())
            if m is not None and m.reranker is not None and m.reranker.doc_cache is not None
        }
        if not stats:
            return
        hits = CounterMetricFamily(
            "hardneg_doc_cache_hits", "Bi-encoder document embeddings found in the cache", labels=["model"]
        )
        misses = CounterMetricFamily(
            "hardneg_doc_cache_misses",
            "Bi-encoder document embeddings computed (not cached)",
            labels=["model"],
        )
        entries = GaugeMetricFamily(
            "hardneg_doc_cache_entries", "Document embeddings in the cache now", labels=["model"]
        )
        capacity = GaugeMetricFamily(
            "hardneg_doc_cache_capacity", "Cache capacity (serve.doc_cache_size; 0: off)", labels=["model"]
        )
        preloaded = GaugeMetricFamily(
            "hardneg_doc_cache_preloaded",
            "Document embeddings put in the cache at start from the export's corpus_vectors.npy",
            labels=["model"],
        )
        for name, st in stats.items():
            assert st is not None
            hits.add_metric([name], st["hits"])
            misses.add_metric([name], st["misses"])
            entries.add_metric([name], st["size"])
            capacity.add_metric([name], st["capacity"])
            preloaded.add_metric([name], st["preloaded"])
        yield from (hits, misses, entries, capacity, preloaded)


class RuntimeCollector(_TrackedModels):
    """What each model serves and how it was chosen at load (:class:`hardneg.runtime_choice.Selection`): gauges
    ``hardneg_runtime_info{model,runtime,precision,variant,mode}`` (1), ``hardneg_runtime_candidate_p50_seconds
    {model,candidate}`` (each timed candidate, 1 query + 20 documents), ``hardneg_runtime_selection_seconds{model}``
    and ``hardneg_cpu_info{model,cpu,flags}`` (1; the matrix flags that decide, comma-separated)."""

    def collect(self) -> Iterator[Metric]:
        sels = {n: m.selection for n, m in sorted(self._live().items()) if m is not None and m.selection}
        if not sels:
            return
        info = GaugeMetricFamily(
            "hardneg_runtime_info",
            "Served runtime x precision (1); mode auto = the fastest candidate timed at load",
            labels=["model", "runtime", "precision", "variant", "mode"],
        )
        cand = GaugeMetricFamily(
            "hardneg_runtime_candidate_p50_seconds",
            "Median seconds of one 1 query + 20 documents request per candidate timed at load (runtime auto)",
            labels=["model", "candidate"],
        )
        secs = GaugeMetricFamily(
            "hardneg_runtime_selection_seconds",
            "Seconds spent choosing the runtime at load",
            labels=["model"],
        )
        cpu = GaugeMetricFamily(
            "hardneg_cpu_info",
            "The serving CPU (1): model name and matrix flags",
            labels=["model", "cpu", "flags"],
        )
        for name, sel in sels.items():
            assert sel is not None
            c = sel.chosen
            info.add_metric([name, c.runtime, c.precision, c.variant, sel.mode], 1)
            for key in sel.timings:
                p50 = sel.p50_ms(key)
                if p50 is not None:
                    cand.add_metric([name, key], p50 / 1000.0)
            secs.add_metric([name], sel.seconds)
            cpu.add_metric([name, str(sel.cpu.get("model")), ",".join(sel.cpu.get("flags") or ())], 1)
        yield from (info, cand, secs, cpu)


class BatchCollector(_TrackedModels):
    """Batching across requests, per model (:class:`serving.batcher.BatchStats`, counted where the batches run):
    histograms of requests and of texts (queries + documents) per scoring call, texts encoded, and the settings. With
    batching off every request is a batch of one."""

    def collect(self) -> Iterator[Metric]:
        models = {n: m for n, m in sorted(self._live().items()) if m is not None}
        if not models:
            return
        reqs = HistogramMetricFamily(
            "hardneg_batch_requests",
            "Inference requests per scoring call (batching across requests)",
            labels=["model"],
        )
        texts = HistogramMetricFamily(
            "hardneg_batch_texts",
            "Queries + documents per scoring call (before dedupe and cache)",
            labels=["model"],
        )
        encoded = CounterMetricFamily(
            "hardneg_batch_encoded_texts",
            "Texts (cross-encoder: pairs) the graphs ran: distinct within a batch, not cached",
            labels=["model"],
        )
        window = GaugeMetricFamily(
            "hardneg_batch_window_seconds",
            "serve.batch_window_ms in seconds (0: batching off)",
            labels=["model"],
        )
        max_texts = GaugeMetricFamily(
            "hardneg_batch_max_texts", "serve.max_batch_texts: texts per batch at most", labels=["model"]
        )
        for name, m in models.items():
            st = m.batch_stats.snapshot()
            reqs.add_metric([name], buckets=st["requests"]["buckets"], sum_value=st["requests"]["sum"])
            texts.add_metric([name], buckets=st["texts"]["buckets"], sum_value=st["texts"]["sum"])
            encoded.add_metric([name], st["encoded"])
            window.add_metric([name], m.batch_window_ms / 1000.0)
            max_texts.add_metric([name], m.max_batch_texts)
        yield from (reqs, texts, encoded, window, max_texts)


DOC_CACHE = DocCacheCollector()
REGISTRY.register(DOC_CACHE)  # a custom collector: collect() only
RUNTIME = RuntimeCollector()
REGISTRY.register(RUNTIME)
BATCHES = BatchCollector()
REGISTRY.register(BATCHES)


def _protocol(path: str) -> str | None:
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


def _error(status: int, message: str, reason: str) -> JSONResponse:
    ERRORS.labels(reason).inc()
    return JSONResponse(status_code=status, content={"error": message})


class GuardMiddleware:
    """Pure ASGI: refuse bodies over ``max_body_bytes`` (413, before any parsing) and count inference requests."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app, self.max_body_bytes = app, int(max_body_bytes)

    async def _reply(self, send: Any, status: int, message: str, reason: str) -> None:
        resp = _error(status, message, reason)
        await send({"type": "http.response.start", "status": status, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protocol = _protocol(scope.get("path", ""))
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            too_big = f"request body larger than {self.max_body_bytes} bytes (serve.max_body_bytes)"
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None:
                if not length.isdigit():
                    await self._reply(send_and_record, 400, "invalid Content-Length header", "bad_request")
                    return
                if int(length) > self.max_body_bytes:
                    await self._reply(send_and_record, 413, too_big, "body_too_large")
                    return
            chunks, total = [], 0
            while True:  # buffer the (bounded) body: also catches chunked uploads without Content-Length
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                body = message.get("body", b"")
                total += len(body)
                if total > self.max_body_bytes:
                    await self._reply(send_and_record, 413, too_big, "body_too_large")
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_and_record)
        finally:
            if protocol is not None:
                REQUESTS.labels(protocol, str(status["code"])).inc()


class SafeDataPlane(DataPlane):
    """Request decoding that never turns a malformed body into a 500: KServe's binary-tensor decoder raises
    KeyError/TypeError/struct.error on bad input. Server readiness includes the models' (KServe's answers True
    whatever the models say, and ``/v2/health/ready`` is the pod's readiness probe)."""

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        if not models or not all([await m.healthy() for m in models]):
            return False
        return bool(await super().ready())

    def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().decode(body, headers, *args, **kwargs)
        except RequestError:
            raise
        except InvalidInput as e:
            msg = str(e)
            # FastAPI hands bodies that are not JSON over as bytes, which KServe takes for binary tensors
            if "inference-header-content-length" in msg.lower():
                raise RequestError(
                    "request body is not valid JSON (binary tensor requests need an Inference-Header-Content-Length header)",
                    "invalid_json",
                ) from None
            if msg.startswith("Unrecognized request format"):
                raise RequestError(
                    f"request body is not valid JSON (UTF-8): {msg.split(':', 1)[-1].strip()}", "invalid_json"
                ) from None
            raise RequestError(msg, "invalid_input") from None
        except InferenceError as e:  # raised while unpacking binary tensors
            if "UTF-8" in str(e):
                raise RequestError("a BYTES input tensor is not valid UTF-8 text", "bad_encoding") from None
            log.info("undecodable binary tensor", exc_info=True)
            raise RequestError(
                "malformed binary tensor data (it does not match the declared shape and datatype)",
                "bad_tensor",
            ) from None
        except Exception:
            log.info("undecodable request body", exc_info=True)
            raise RequestError(
                "malformed inference request body (binary tensor data or headers do not match)",
                "invalid_input",
            ) from None


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errors = [e for e in exc.errors() if tuple(e.get("loc", ()))[:2] != ("body", "bytes")] or exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON (UTF-8)", "invalid_json"
    parts = []
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "InferenceRequest")]
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    return "invalid V2 inference request: " + "; ".join(parts), "invalid_v2_request"


def install_handlers(app: FastAPI) -> None:
    """Exception handlers replacing KServe's (which put ``type(exc).__name__`` and raw messages in responses)."""

    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.code)

    async def invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(400, str(exc), "invalid_input")

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, reason = _validation_message(exc)
        return _error(400, message, reason)

    async def not_found(_: Request, exc: ModelNotFound) -> JSONResponse:
        return _error(404, str(exc), "unknown_model")

    async def not_ready(_: Request, exc: ModelNotReady) -> JSONResponse:
        return _error(503, str(exc), "not_ready")

    async def server_not_ready(_: Request, exc: ServerNotReady) -> JSONResponse:
        return _error(503, "not ready (a model is not ready; see the server log)", "not_ready")

    async def not_implemented(_: Request, exc: NotImplementedError) -> JSONResponse:
        return _error(501, "not implemented by this model server", "not_implemented")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, INTERNAL_ERROR, "internal")

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ModelNotFound, not_found)
    app.add_exception_handler(ModelNotReady, not_ready)
    app.add_exception_handler(ServerNotReady, server_not_ready)
    app.add_exception_handler(NotImplementedError, not_implemented)
    app.add_exception_handler(Exception, unexpected)


def install_metadata_route(app: FastAPI, dataplane: DataPlane) -> None:
    """``GET /v2/models/{name}`` with versions + parameters (lineage...). Must be registered before KServe's."""

    async def model_metadata(model_name: str) -> JSONResponse:
        model = dataplane.model_registry.get_model(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        if isinstance(model, HardnegReranker):
            return JSONResponse(model.model_metadata())
        return JSONResponse(await dataplane.model_metadata(model_name))

    app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"], response_model=None)


class HardnegRESTServer(RESTServer):
    """KServe's REST server + host binding, body limit, counters, safe errors and the metadata route."""

    host = "0.0.0.0"
    max_body_bytes = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = self.host

    def create_application(self) -> None:
        app = ks_model_server.app
        install_metadata_route(app, self.dataplane)  # before KServe's routes: the first match answers
        super().create_application()
        install_handlers(app)  # after KServe's: replaces its handlers
        app.add_middleware(GuardMiddleware, max_body_bytes=self.max_body_bytes)  # outermost user middleware


def _fresh_app() -> FastAPI:
    """KServe keeps one module-global app; replace it so each server/test gets its own routes and handlers."""
    app = FastAPI(title="hardneg reranker", docs_url=None, redoc_url=None)
    ks_model_server.app = app
    return app


def _server_class(host: str, max_body_bytes: int) -> type[HardnegRESTServer]:
    return type(
        "BoundHardnegRESTServer", (HardnegRESTServer,), {"host": host, "max_body_bytes": int(max_body_bytes)}
    )


def create_app(model: HardnegReranker, *, load: bool = True) -> FastAPI:
    """In-process app (no port) for tests: ``TestClient(create_app(model), raise_server_exceptions=False)``."""
    if load and not model.ready:
        model.load()
    app = _fresh_app()
    server = ModelServer(enable_grpc=False, registered_models=None)
    server.dataplane = SafeDataPlane(model_registry=server.registered_models)
    server.register_model(model)
    for collector in (DOC_CACHE, RUNTIME, BATCHES):
        collector.track(model)
    cls = _server_class("127.0.0.1", model.limits.max_body_bytes)
    cls(
        "kserve.model_server:app", server.dataplane, server.model_repository_extension, http_port=0
    ).create_application()
    return app


def serve(
    model: HardnegReranker,
    *,
    http_port: int,
    host: str = "127.0.0.1",
    workers: int = 1,
    enable_grpc: bool = False,
) -> None:
    """Load the model (verifying the export) and run the server until SIGTERM/SIGINT."""
    model.load()
    if not model.ready:
        raise NoModelReady([model])
    _fresh_app()
    for collector in (DOC_CACHE, RUNTIME, BATCHES):
        collector.track(model)
    # ModelServer.start() looks the RESTServer name up in kserve.model_server
    ks_model_server.RESTServer = _server_class(host, model.limits.max_body_bytes)
    server = ModelServer(http_port=http_port, workers=workers, enable_grpc=enable_grpc)
    server.dataplane = SafeDataPlane(model_registry=server.registered_models)
    log.info("serving %s (%s) on http://%s:%d", model.name, model.model_dir, host, http_port)
    server.start([model])
