"""KServe predictor: a ``kserve.Model`` that reranks with :class:`hardneg.rerank.OnnxReranker` (no torch), for both
export kinds: a cross-encoder (a sigmoid score per (query, document) pair) and a bi-encoder (cosine of the query and
document embeddings, document embeddings kept in an LRU cache of ``serve.doc_cache_size`` entries).

V1 ``POST /v1/models/<name>:predict``::

    {"instances": [{"query": "...", "documents": ["...", ...], "first_stage_scores": [...]}]}   (scores optional)
    -> {"predictions": [{"scores": [...], "ranking": [...]}]}

V2 ``POST /v2/models/<name>/infer``: BYTES ``query`` [1], BYTES ``documents`` [n], optional FP32
``first_stage_scores`` [n] -> FP32 ``scores`` [n] + INT64 ``ranking`` [n] (document indices, best first).

``scores`` are the fused scores evaluation tuned (weight from the export's metadata) when first-stage scores are
sent, else the reranker's own scores (sigmoid, or cosine for a bi-encoder). Text beyond the model's ``max_length`` tokens is truncated (as in training);
longer-than-``max_text_chars`` texts are refused (413). Every malformed request raises :class:`RequestError` (an
``InvalidInput``) with a message naming the field; the server maps it to a 4xx.

Concurrent requests are scored together (:mod:`serving.batcher`, params ``serve.batch_window_ms`` /
``serve.max_batch_texts``): validated requests join a queue and one worker thread scores each batch with
:meth:`hardneg.rerank.OnnxReranker.rerank_many`; window 0 scores each request alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import METADATA_FILE
from hardneg.errors import HardnegError
from hardneg.model_card import BI_ENCODER, CROSS_ENCODER
from hardneg.rerank import (
    ExportIntegrityError,
    OnnxReranker,
    verify_export_dir,
)
from hardneg.runtime_choice import Selection, load_reranker
from serving import clean_argv
from serving.batcher import BatchStats, RequestBatcher

with clean_argv():
    from kserve import InferOutput, InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput, ModelNotReady
    from kserve.utils.utils import generate_uuid

log = logging.getLogger(__name__)

V2_INPUTS = ("query", "documents", "first_stage_scores")
V2_OUTPUTS = ("scores", "ranking")
SCORE_DATATYPES = ("FP32", "FP64")


@dataclass(frozen=True)
class Limits:
    """Request limits (params ``serve``)."""

    max_documents: int = 200
    max_text_chars: int = 20000
    max_body_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Limits:
        s = params.get("serve", {})
        return cls(int(s["max_documents"]), int(s["max_text_chars"]), int(s["max_body_bytes"]))


def check_batching(window_ms: Any, max_texts: Any) -> tuple[float, int]:
    """(``serve.batch_window_ms``, ``serve.max_batch_texts``) checked: a window >= 0 ms (0: batching off) and at
    least 1 text per batch."""
    if isinstance(window_ms, bool) or not isinstance(window_ms, int | float) or not math.isfinite(window_ms):
        raise HardnegError(f"batch_window_ms must be a number >= 0 (0: batching off), got {window_ms!r}")
    if window_ms < 0:
        raise HardnegError(f"batch_window_ms must be >= 0 (0: batching off), got {window_ms}")
    if isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts < 1:
        raise HardnegError(f"max_batch_texts must be an integer >= 1, got {max_texts!r}")
    return float(window_ms), int(max_texts)


class RequestError(InvalidInput):
    """A client error: ``status`` (400/404/413) and a short machine-readable ``reason`` for the error counter."""

    def __init__(self, message: str, reason: str = "invalid_input", status: int = 400):
        super().__init__(message)
        self.status, self.code = status, reason


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    first_stage_scores: list[float] | None = None


def _check_text(value: Any, where: str, limits: Limits, allow_empty: bool) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{where} is not valid UTF-8", "bad_encoding") from None
    if not isinstance(value, str):
        raise RequestError(f"{where} must be a string, got {_json_type(value)}", "wrong_type")
    if len(value) > limits.max_text_chars:
        raise RequestError(
            f"{where} has {len(value)} characters; the limit is {limits.max_text_chars} "
            "(send the first part: the model reads only its first max_length tokens anyway)",
            "text_too_long",
            413,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} is not valid Unicode text (lone surrogate)", "bad_encoding") from None
    if not allow_empty and not value.strip():
        raise RequestError(f"{where} must not be empty", "empty_query")
    return value


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float | np.number):
        return "a number"
    if isinstance(v, str | bytes):
        return "a string"
    if isinstance(v, list | tuple | np.ndarray):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return "an unsupported value"


def _check_scores(values: Any, n_docs: int, where: str) -> list[float]:
    if not isinstance(values, list | tuple | np.ndarray):
        raise RequestError(f"{where} must be an array of numbers, got {_json_type(values)}", "wrong_type")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise RequestError(f"{where}[{i}] must be a number, got {_json_type(v)}", "wrong_type")
        f = float(v)
        if not math.isfinite(f):
            raise RequestError(f"{where}[{i}] must be a finite number", "wrong_type")
        out.append(f)
    if len(out) != n_docs:
        raise RequestError(f"{where} has {len(out)} values for {n_docs} documents", "length_mismatch")
    return out


def _check_documents(docs: Any, where: str, limits: Limits, budget: int) -> list[str]:
    if not isinstance(docs, list | tuple | np.ndarray):
        raise RequestError(f"{where} must be an array of strings, got {_json_type(docs)}", "wrong_type")
    if len(docs) == 0:
        raise RequestError(f"{where} must not be empty", "no_documents")
    if len(docs) > budget:
        raise RequestError(
            f"too many documents: {where} brings the request to more than {limits.max_documents} documents "
            f"(the limit per request); split it",
            "too_many_documents",
            413,
        )
    return [_check_text(d, f"{where}[{i}]", limits, allow_empty=True) for i, d in enumerate(docs)]


def parse_v1(payload: Any, limits: Limits) -> list[RerankRequest]:
    """Validate a V1 body (already JSON-decoded) into rerank requests; raise RequestError on anything else."""
    if not isinstance(payload, dict):
        raise RequestError(
            f'request body must be a JSON object {{"instances": [...]}}, got {_json_type(payload)}',
            "bad_request",
        )
    if "instances" not in payload:
        raise RequestError(
            'missing field "instances" (a list of {"query", "documents"} objects)', "missing_field"
        )
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(f'"instances" must be a list, got {_json_type(instances)}', "wrong_type")
    if not instances:
        raise RequestError('"instances" must not be empty', "missing_field")
    if len(instances) > limits.max_documents:
        raise RequestError(
            f'"instances" has {len(instances)} entries; the limit is {limits.max_documents}',
            "too_many_documents",
            413,
        )
    out, budget = [], limits.max_documents
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise RequestError(
                f"{where} must be an object with query and documents, got {_json_type(inst)}", "wrong_type"
            )
        for key in ("query", "documents"):
            if key not in inst:
                raise RequestError(f'{where}: missing field "{key}"', "missing_field")
        query = _check_text(inst["query"], f"{where}.query", limits, allow_empty=False)
        docs = _check_documents(inst["documents"], f"{where}.documents", limits, budget)
        budget -= len(docs)
        fs = inst.get("first_stage_scores")
        scores = None if fs is None else _check_scores(fs, len(docs), f"{where}.first_stage_scores")
        out.append(RerankRequest(query, docs, scores))
    return out


def _tensor(inp: Any, where: str) -> np.ndarray:
    shape = list(inp.shape)
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise RequestError(f"input '{where}': invalid shape {shape}", "bad_tensor")
    try:
        arr = inp.as_numpy()
    except InvalidInput as e:
        raise RequestError(f"input '{where}': {e}", "bad_tensor") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, UnicodeError) as e:
        log.debug("tensor %s: %s", where, e)
        raise RequestError(
            f"input '{where}': data does not match shape {shape} and datatype {inp.datatype}", "bad_tensor"
        ) from None
    except Exception:  # struct.error and friends from malformed binary tensors
        log.debug("tensor %s unreadable", where, exc_info=True)
        raise RequestError(
            f"input '{where}': data does not match shape {shape} and datatype {inp.datatype}", "bad_tensor"
        ) from None
    return arr


def parse_v2(req: InferRequest, limits: Limits) -> RerankRequest:
    """Validate a V2 InferRequest (query [1] BYTES, documents [n] BYTES, optional first_stage_scores [n] FP32)."""
    by_name: dict[str, Any] = {}
    for inp in req.inputs:
        if inp.name in by_name:
            raise RequestError(f"input '{inp.name}' is given twice", "bad_tensor")
        if inp.name not in V2_INPUTS:
            raise RequestError(f"unknown input '{inp.name}'; expected {', '.join(V2_INPUTS)}", "bad_tensor")
        by_name[inp.name] = inp
    for name in ("query", "documents"):
        if name not in by_name:
            raise RequestError(f"missing input '{name}' (BYTES)", "missing_field")
    for name in req.request_outputs or []:
        if name.name not in V2_OUTPUTS:
            raise RequestError(
                f"unknown output '{name.name}' requested; outputs: {', '.join(V2_OUTPUTS)}", "bad_tensor"
            )
    q, d = by_name["query"], by_name["documents"]
    for inp in (q, d):
        if inp.datatype != "BYTES":
            raise RequestError(
                f"input '{inp.name}' must have datatype BYTES, got {inp.datatype}", "bad_tensor"
            )
    if list(q.shape) != [1]:
        raise RequestError(f"input 'query' must have shape [1], got {list(q.shape)}", "bad_tensor")
    if len(d.shape) != 1:
        raise RequestError(
            f"input 'documents' must have shape [n] (one dimension), got {list(d.shape)}", "bad_tensor"
        )
    if d.shape[0] > limits.max_documents:
        raise RequestError(
            f"too many documents: {d.shape[0]} (the limit per request is {limits.max_documents}); split it",
            "too_many_documents",
            413,
        )
    query = _check_text(_tensor(q, "query").reshape(-1)[0], "input 'query'", limits, allow_empty=False)
    docs = _check_documents(
        list(_tensor(d, "documents").reshape(-1)), "input 'documents'", limits, limits.max_documents
    )
    scores = None
    if "first_stage_scores" in by_name:
        f = by_name["first_stage_scores"]
        if f.datatype not in SCORE_DATATYPES:
            raise RequestError(
                f"input 'first_stage_scores' must have datatype FP32, got {f.datatype}", "bad_tensor"
            )
        if list(f.shape) != [len(docs)]:
            raise RequestError(
                f"input 'first_stage_scores' must have shape [{len(docs)}] (one per document), got {list(f.shape)}",
                "bad_tensor",
            )
        scores = _check_scores(
            list(_tensor(f, "first_stage_scores").reshape(-1)), len(docs), "input 'first_stage_scores'"
        )
    return RerankRequest(query, docs, scores)


_TRUNCATION = {
    CROSS_ENCODER: "longest_first: tokens beyond max_length (query + document) are dropped",
    BI_ENCODER: "query and document each truncated to max_length tokens",
}


class ExportWatch:
    """Notices a model folder that changes under a running server (someone rewrites /mnt/models, a volume is
    swapped). Cheap: ``os.stat`` of metadata.json and every file it lists (size, mtime_ns, inode), at most once per
    ``interval`` seconds; only when that changes are the sha256 checksums verified again (``verify_export_dir``,
    ~1 s for 300 MB). ``check()`` returns ``None`` while the folder still holds the verified export (a touch or an
    identical copy passes), else why not; once changed it stays changed (the process serves the export it verified at
    load, which no longer matches the folder: restart to load the new one).
    """

    def __init__(self, root: str | os.PathLike, interval: float = 2.0):
        self.root, self.interval = Path(root), float(interval)
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._digests: dict[str, str] = {}
        self._stats = self._snapshot()
        self._next = time.monotonic() + self.interval

    def _names(self) -> list[str]:
        return [METADATA_FILE, *sorted(self._digests)]

    def _snapshot(self) -> dict[str, tuple[int, int, int] | None]:
        if not self._digests:  # the files listed when watching started (metadata.json verified at load)
            try:
                meta = json.loads((self.root / METADATA_FILE).read_text(encoding="utf-8"))
                self._digests = dict(meta.get("files") or {})
            except (OSError, ValueError):
                self._digests = {}
        out: dict[str, tuple[int, int, int] | None] = {}
        for name in self._names():
            try:
                st = (self.root / name).stat()
                out[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError:
                out[name] = None
        return out

    def check(self, force: bool = False) -> str | None:
        with self._lock:
            if self._problem is not None or (not force and time.monotonic() < self._next):
                return self._problem
            self._next = time.monotonic() + self.interval
            now = self._snapshot()
            if now == self._stats:
                return None
            changed = sorted(n for n in now if now[n] != self._stats.get(n))
            try:
                meta = verify_export_dir(self.root)
                if meta.get("files") != self._digests:
                    raise ExportIntegrityError(f"{self.root}: {METADATA_FILE} now describes another export")
            except ExportIntegrityError as e:
                self._problem = f"model folder changed under the running server ({', '.join(changed)}): {e}"
                log.error(
                    "%s. Readiness is now false and predictions answer 503: restart to load and verify "
                    "the new export",
                    self._problem,
                )
                return self._problem
            log.info(
                "model folder files touched (%s) but their checksums still match: still serving", changed
            )
            self._stats = now
            return None


class HardnegReranker(Model):
    """Serves one export folder. ``load()`` verifies its checksums, chooses the runtime x precision
    (:func:`hardneg.runtime_choice.load_reranker`: timed on this node under ``auto``, else as given or recorded;
    ``selection``), opens the sessions, then sets ``ready``. ``batch_window_ms`` / ``max_batch_texts`` (``None``:
    the packaged params ``serve.*``): batching across requests (``batcher``; window 0: off); ``batch_stats`` counts
    the scoring calls for ``/metrics``."""

    def __init__(
        self,
        name: str,
        model_dir: str,
        *,
        variant: str | None = None,
        limits: Limits | None = None,
        intra_op_threads: int | None = None,
        max_concurrency: int = 1,
        doc_cache_size: int | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        select_seconds: float | None = None,
        watch_interval: float = 2.0,
        batch_window_ms: float | None = None,
        max_batch_texts: int | None = None,
    ):
        super().__init__(name)
        # batching across requests (serving/batcher.py); None: params serve.batch_window_ms / max_batch_texts
        if batch_window_ms is None or max_batch_texts is None:
            from hardneg.config import default_params

            serve = default_params()["serve"]
            batch_window_ms = serve["batch_window_ms"] if batch_window_ms is None else batch_window_ms
            max_batch_texts = serve["max_batch_texts"] if max_batch_texts is None else max_batch_texts
        self.batch_window_ms, self.max_batch_texts = check_batching(batch_window_ms, max_batch_texts)
        self.batch_stats = BatchStats()
        self._batcher: RequestBatcher | None = None
        # None: the export's (metadata.json serving: policy auto -> timed here, else its one runtime); "auto": timed
        self.runtime = runtime
        self.precision = precision  # None: the chosen candidate's / the variant's own
        # runtime auto: budget for timing the candidates at load (None: params serve.select_seconds, packaged)
        self.select_seconds = select_seconds
        self.selection: Selection | None = None
        self.watch_interval = float(watch_interval)
        self.watch: ExportWatch | None = None
        self.model_dir, self.variant = model_dir, variant
        self.doc_cache_size = doc_cache_size  # bi-encoder only; None: params serve.doc_cache_size (packaged)
        self.limits = limits or Limits()
        self.intra_op_threads = intra_op_threads
        self.max_concurrency = max(1, int(max_concurrency))
        self.reranker: OnnxReranker | None = None
        self._slots: asyncio.Semaphore | None = None
        self.ready = False

    def load(self) -> bool:
        # KServe's dataplane calls load() again on a request to a not-ready model: never for a changed folder
        problem = self.watch.check(force=True) if self.watch is not None else None
        if problem is not None:
            self.ready = False
            raise ModelNotReady(self.name, problem)
        if self.reranker is None:
            budget = self.select_seconds
            if budget is None:
                from hardneg.config import default_params

                budget = float(default_params()["serve"]["select_seconds"])
            self.reranker, self.selection = load_reranker(
                self.model_dir,
                runtime=self.runtime,
                precision=self.precision,
                variant=self.variant,
                budget_s=budget,
                intra_op_threads=self.intra_op_threads,
                doc_cache_size=self.doc_cache_size,
            )
            log.info("%s: %s", self.name, self.selection.log_line())
            self.variant = self.reranker.variant  # None -> the chosen (or the export's served) variant
            self.runtime = self.reranker.runtime
            self.precision = self.reranker.precision
            # watched from the checksums just verified (a change between the two reads is caught at the first check)
            self.watch = ExportWatch(self.model_dir, self.watch_interval)
        self.ready = True
        return self.ready

    def integrity_problem(self) -> str | None:
        """Why the served folder no longer holds the export loaded (``None``: it does); flips ``ready`` off."""
        problem = self.watch.check() if self.watch is not None else None
        if problem is not None:
            self.ready = False
        return problem

    async def healthy(self) -> bool:
        # readiness probes (/v2/health/ready, /v2/models/<name>/ready, V1 model status) land here
        if self.ready and self.watch is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.integrity_problem)
        return self.ready

    # -- metadata (V2 GET /v2/models/<name>; served by serving.server, which adds versions and parameters)
    def get_input_types(self) -> list[dict]:
        return [
            {"name": "query", "datatype": "BYTES", "shape": [1]},
            {"name": "documents", "datatype": "BYTES", "shape": [-1]},
            {"name": "first_stage_scores", "datatype": "FP32", "shape": [-1]},
        ]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "ranking", "datatype": "INT64", "shape": [-1]},
        ]

    def model_metadata(self) -> dict[str, Any]:
        r = self.reranker
        meta = r.metadata if r else {}
        return {
            "name": self.name,
            "versions": [r.version] if r else [],
            "platform": r.runtime if r else None,
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "parameters": {
                "model_name": meta.get("model_name"),
                "version": meta.get("version"),
                "kind": r.kind if r else None,
                "score": r.score_name if r else None,
                # bi-encoder: "query" (query tower tuned; documents embedded by document_encoder, the base model) | "both"
                "tune": r.tune if r else None,
                "document_encoder": r.document_encoder if r else None,
                "variant": self.variant,
                "runtime": r.runtime if r else None,
                "precision": r.precision if r else None,
                "threads": r.threads if r else None,
                "serving": meta.get("serving"),
                # how runtime x precision was chosen on this node: mode, chosen, per-candidate timings, cpu flags
                "selection": self.selection.to_dict() if self.selection else None,
                "max_length": r.max_length if r else None,
                "truncation": _TRUNCATION.get(r.kind if r else "", None),
                "doc_cache": r.cache_stats() if r else None,
                "batching": self.batching_info(),
                "fusion": meta.get("fusion"),
                "lineage": meta.get("lineage"),
                "metrics": meta.get("metrics"),
                "parity": meta.get("parity"),
                "created_at": meta.get("created_at"),
                "limits": {
                    "max_documents": self.limits.max_documents,
                    "max_text_chars": self.limits.max_text_chars,
                    "max_body_bytes": self.limits.max_body_bytes,
                },
            },
        }

    def batching_info(self) -> dict[str, Any]:
        """The batching settings and counts (``GET /v2/models/<name>`` ``parameters.batching``)."""
        st = self.batch_stats.snapshot()
        return {
            "window_ms": self.batch_window_ms,
            "max_texts": self.max_batch_texts,
            "enabled": self.batch_window_ms > 0,
            "batches": st["batches"],
            "requests": int(st["requests"]["sum"]),
            "texts": int(st["texts"]["sum"]),
            "texts_encoded": st["encoded"],
        }

    # -- inference
    def validate(self, payload: Any) -> Any:
        return payload  # KServe's own check trips over non-dict JSON (e.g. a bare number -> 500); predict validates

    def _score_jobs(
        self, jobs: list[list[RerankRequest]]
    ) -> tuple[list[list[tuple[np.ndarray, np.ndarray]] | Exception], int]:
        """Score the rerank requests of several HTTP requests (jobs) in one :meth:`OnnxReranker.rerank_many` call;
        per job its results, and the texts the graphs ran. Runs in a worker thread. When the joint call fails, the
        jobs are scored one by one so that only the failing one gets its error (a job alone raises it)."""
        assert self.reranker is not None
        flat = [(r.query, r.documents, r.first_stage_scores) for job in jobs for r in job]
        try:
            results, encoded = self.reranker.rerank_many(flat)
        except Exception:
            if len(jobs) == 1:
                raise
            log.warning("a batch of %d requests failed: scoring them one by one", len(jobs), exc_info=True)
            out: list[list[tuple[np.ndarray, np.ndarray]] | Exception] = []
            encoded = 0
            for job in jobs:
                try:
                    (res,), n = self._score_jobs([job])
                    out.append(res)
                    encoded += n
                except Exception as e:  # noqa: BLE001 - handed to that request's caller
                    out.append(e)
            return out, encoded
        split, start = [], 0
        for job in jobs:
            split.append(results[start : start + len(job)])
            start += len(job)
        return split, encoded

    def _score_alone(self, reqs: list[RerankRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        (res,), encoded = self._score_jobs([reqs])
        self.batch_stats.observe(1, sum(1 + len(r.documents) for r in reqs), encoded)
        assert not isinstance(res, Exception)
        return res

    @property
    def batcher(self) -> RequestBatcher | None:
        """The request batcher (``None`` when batching is off: ``batch_window_ms`` 0)."""
        if self._batcher is None and self.batch_window_ms > 0:
            self._batcher = RequestBatcher(
                self._score_jobs,
                window_s=self.batch_window_ms / 1000.0,
                max_texts=self.max_batch_texts,
                stats=self.batch_stats,
            )
        return self._batcher

    async def _run(self, reqs: list[RerankRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(None, self.integrity_problem)
        if problem is not None:
            raise ModelNotReady(self.name, problem)
        batcher = self.batcher
        if batcher is not None:  # scored with the requests that arrive meanwhile (serving/batcher.py)
            return await batcher.submit(reqs, sum(1 + len(r.documents) for r in reqs))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        # batching off: one request at a time (onnxruntime already uses every core: queue, don't oversubscribe)
        async with self._slots:
            return await loop.run_in_executor(None, self._score_alone, reqs)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            req = parse_v2(payload, self.limits)
            ((scores, order),) = await self._run([req])
            out_scores = InferOutput(name="scores", shape=[len(scores)], datatype="FP32")
            out_scores.set_data_from_numpy(np.asarray(scores, dtype=np.float32), binary_data=False)
            out_rank = InferOutput(name="ranking", shape=[len(order)], datatype="INT64")
            out_rank.set_data_from_numpy(np.asarray(order, dtype=np.int64), binary_data=False)
            return InferResponse(
                response_id=payload.id
                or generate_uuid(),  # V2 without "id" would otherwise be a 500 (docs/stack.md 2.2)
                model_name=self.name,
                model_version=self.reranker.version if self.reranker else None,
                infer_outputs=[out_scores, out_rank],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        if isinstance(payload, bytes | bytearray | str):
            raise RequestError("request body must be JSON (Content-Type: application/json)", "bad_request")
        reqs = parse_v1(payload, self.limits)
        results = await self._run(reqs)
        return {
            "predictions": [
                {"scores": [float(x) for x in s], "ranking": [int(i) for i in o]} for s, o in results
            ]
        }
