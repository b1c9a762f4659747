"""Torch-free reranker scoring with onnxruntime + tokenizers: what evaluation measures is what the server serves.

An export folder (``hardneg export``) holds ``model.onnx`` (fp32), ``model.int8.onnx`` (dynamic int8),
``tokenizer.json``, ``tokenizer_config.json``, ``parity.json`` and ``metadata.json`` (model ``kind``, sha256 of every
other file, max_length, lineage, fusion weight). :class:`OnnxReranker` verifies those checksums on load and scores by
the export's kind:

* ``cross-encoder``: tokenizes query/document pairs exactly as the PyTorch CrossEncoder does (``longest_first``
  truncation to ``max_length`` tokens: text beyond it is silently dropped, as in training), batches pairs of similar
  length together and returns the sigmoid scores the graph computes (:class:`PairScorer`);
* ``bi-encoder``: embeds the query and each document alone (each truncated to ``max_length`` tokens; the graph mean-
  pools and L2-normalises) and returns their cosine (:class:`TextEncoder`, :class:`CosineScorer`); document
  embeddings are kept in a bounded LRU cache keyed by the text's sha256 (:class:`EmbeddingCache`). A bi-encoder
  trained with ``tune: query`` embeds documents with its (untouched) base model: the export then holds a second
  graph, ``doc_model.onnx`` / ``doc_model.int8.onnx`` (+ ``doc_tokenizer.json`` when its tokenizer differs), listed
  under ``metadata.json`` ``document_graph``; queries go through ``model*.onnx``, documents through ``doc_model*``,
  the same variant for both.

``rerank`` applies :func:`hardneg.fusion.fuse` with the dev-tuned weight from the metadata when first-stage scores
are given.

Nothing here (or in what it imports) imports torch: the serving image has none.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hardneg.artifacts import METADATA_FILE
from hardneg.errors import HardnegError
from hardneg.fusion import fuse, text_digest
from hardneg.hw import cpu_limit
from hardneg.lineage import sha256_file
from hardneg.model_card import BI_ENCODER, CROSS_ENCODER, KIND_SCORES, KINDS, SELF_ENCODER

log = logging.getLogger(__name__)

PARITY_FILE = "parity.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
VARIANT_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# bi-encoder with a separate document encoder (tune: query): the document graph, and its tokenizer when it differs
DOC_VARIANT_FILES: dict[str, str] = {"fp32": "doc_model.onnx", "int8": "doc_model.int8.onnx"}
DOC_TOKENIZER_FILE = "doc_tokenizer.json"
DOC_TOKENIZER_CONFIG_FILE = "doc_tokenizer_config.json"
Variant = Literal["fp32", "int8"]
EMBEDDING_OUTPUT = "embedding"


class ExportIntegrityError(HardnegError):
    """An export folder that is incomplete, tampered with, or not an export at all."""


def read_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(export_dir) / METADATA_FILE
    if not Path(export_dir).is_dir():
        raise ExportIntegrityError(f"export folder not found: {export_dir}")
    if not p.exists():
        hint = (
            f" (see {PARITY_FILE}: a parity gate failed)" if (Path(export_dir) / PARITY_FILE).exists() else ""
        )
        raise ExportIntegrityError(f"no {METADATA_FILE} in {export_dir}: not a finished hardneg export{hint}")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportIntegrityError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise ExportIntegrityError(f"{p}: expected an object with a 'files' checksum map")
    return meta


def served_variant(metadata: dict[str, Any], export_dir: str | os.PathLike = "") -> Variant:
    """The variant an export serves (``served_variant`` in metadata.json, written by ``hardneg export``)."""
    v = metadata.get("served_variant")
    if v not in VARIANT_FILES:
        raise ExportIntegrityError(
            f"{export_dir}: metadata.json names no served variant (served_variant={v!r}; an export made before it was "
            "recorded): pass the variant explicitly (int8 or fp32) or re-export"
        )
    return v


def verify_export_dir(export_dir: str | os.PathLike, variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Check every checksum in metadata.json (and that the tokenizer and the requested variants are listed); return
    the metadata. Raises :class:`ExportIntegrityError` naming the first problem found."""
    root = Path(export_dir)
    meta = read_metadata(root)
    files: dict[str, str] = meta["files"]
    required = [TOKENIZER_FILE] + [VARIANT_FILES[v] for v in (variants or [])]
    doc = document_graph(meta, root)
    if doc is not None:
        required += [doc["tokenizer"]] + [doc["variants"][v] for v in (variants or [])]
    vectors = corpus_vectors_info(meta, root)
    if vectors is not None:
        required.append(vectors["file"])
    for name in required:
        if name not in files:
            raise ExportIntegrityError(f"{root}: {name} is not listed in {METADATA_FILE}")
    for name, digest in sorted(files.items()):
        f = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ExportIntegrityError(f"{root}: {METADATA_FILE} lists a path outside the folder: {name}")
        if not f.is_file():
            raise ExportIntegrityError(f"{root}: {name} is missing (listed in {METADATA_FILE})")
        actual = sha256_file(f)
        if actual != digest:
            raise ExportIntegrityError(
                f"{root}: checksum mismatch for {name} (metadata {digest[:12]}..., file {actual[:12]}...): "
                "the export was modified after it was written"
            )
    return meta


def document_graph(metadata: dict[str, Any], export_dir: str | os.PathLike = "") -> dict[str, Any] | None:
    """``metadata.json`` ``document_graph`` (``{"variants": {"fp32": file, "int8": file}, "tokenizer": file, ...}``) of
    a bi-encoder whose documents are embedded by another encoder (``tune: query``); ``None`` when the query graph
    embeds documents too."""
    doc = metadata.get("document_graph")
    if doc is None:
        return None
    ok = (
        isinstance(doc, dict)
        and isinstance(doc.get("tokenizer"), str)
        and isinstance(doc.get("variants"), dict)
        and all(isinstance(doc["variants"].get(v), str) for v in VARIANT_FILES)
    )
    if not ok:
        raise ExportIntegrityError(
            f"{export_dir}: {METADATA_FILE} document_graph must be "
            f'{{"variants": {{"fp32": file, "int8": file}}, "tokenizer": file}}, got {doc!r}'
        )
    return doc


# -- the corpus vectors a ``tune: query`` bi-encoder export may ship (params ``export.corpus_vectors``)
CORPUS_VECTORS_FILE = "corpus_vectors.npy"
CORPUS_VECTORS_KEY = "sha256 of the document text as sent to the server, UTF-8 (hardneg.fusion.text_digest)"


def corpus_vectors_dtype(dim: int) -> np.dtype:
    """One record per distinct document text: its sha256 (32 bytes) and its document vector, fp16 (unit length)."""
    return np.dtype([("sha256", "u1", (32,)), ("vector", "<f2", (int(dim),))])


def write_corpus_vectors(
    path: str | os.PathLike, texts: Sequence[str], vectors: np.ndarray
) -> dict[str, int]:
    """``corpus_vectors.npy``: a structured .npy (:func:`corpus_vectors_dtype`) of the distinct ``texts`` (first
    occurrence order; a text repeated under several ids is stored once) and their ``vectors`` in fp16. Returns
    ``{"count", "dim", "duplicates"}``."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(texts) != len(vectors):
        raise HardnegError(f"corpus vectors: {len(texts)} texts for an array of shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise HardnegError("corpus vectors: non-finite values (NaN / inf)")
    rows: dict[bytes, int] = {}
    for i, t in enumerate(texts):
        rows.setdefault(text_digest(t), i)
    rec = np.empty(len(rows), dtype=corpus_vectors_dtype(vectors.shape[1]))
    rec["sha256"] = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 32)
    rec["vector"] = vectors[list(rows.values())].astype(np.float16)
    np.save(path, rec, allow_pickle=False)
    return {"count": len(rows), "dim": int(vectors.shape[1]), "duplicates": len(texts) - len(rows)}


def read_corpus_vectors(
    path: str | os.PathLike, limit: int | None = None, dim: int | None = None
) -> tuple[list[bytes], np.ndarray, int]:
    """The first ``limit`` (None: all) records of ``corpus_vectors.npy``: (keys: 32-byte sha256 digests, vectors:
    fp16 [n, dim], the file's record count). Memory-mapped: only the rows read are loaded. Raises
    :class:`ExportIntegrityError` for a file of another layout (or another ``dim``)."""
    try:
        rec = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExportIntegrityError(f"{path}: cannot read the corpus vectors ({e})") from None
    fields = rec.dtype.fields or {}
    d = fields["vector"][0].shape[0] if "vector" in fields and fields["vector"][0].shape else None
    if rec.ndim != 1 or d is None or rec.dtype != corpus_vectors_dtype(d) or (dim is not None and d != dim):
        raise ExportIntegrityError(
            f"{path}: expected records {corpus_vectors_dtype(dim or 0).descr} (dim {dim}), got {rec.dtype.descr} "
            f"of shape {rec.shape}"
        )
    n = len(rec) if limit is None else max(0, min(int(limit), len(rec)))
    part = rec[:n]
    raw = np.ascontiguousarray(part["sha256"]).tobytes()
    keys = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    return keys, np.ascontiguousarray(part["vector"]), len(rec)


def corpus_vectors_info(
    metadata: dict[str, Any], export_dir: str | os.PathLike = ""
) -> dict[str, Any] | None:
    """``metadata.json`` ``corpus_vectors`` (``{"file", "count", "dim", "dtype", "key", ...}``), ``None`` when the
    export ships none."""
    info = metadata.get("corpus_vectors")
    if info is None:
        return None
    if not (
        isinstance(info, dict) and isinstance(info.get("file"), str) and isinstance(info.get("dim"), int)
    ):
        raise ExportIntegrityError(
            f'{export_dir}: {METADATA_FILE} corpus_vectors must be {{"file": name, "dim": int, ...}}, got {info!r}'
        )
    return info


# -- runtimes: both read the same .onnx files
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)
Runtime = Literal["onnxruntime", "openvino"]
# inference precision per runtime: onnxruntime runs the graph as stored (fp32 or int8 file); OpenVINO runs the fp32
# file in f32, or in bf16 (its INFERENCE_PRECISION_HINT; only worth it with native bf16: AMX / AVX512-BF16), or the
# int8 file. OpenVINO's CPU plugin DEFAULTS to bf16 on AMX CPUs: the hint is always set explicitly, so the precision
# served is the one the export's parity gate measured.
PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {
    ONNXRUNTIME: {"fp32": ("fp32",), "int8": ("int8",)},
    OPENVINO: {"fp32": ("fp32", "bf16"), "int8": ("int8",)},
}


def check_runtime(runtime: str | None) -> str:
    if runtime == "auto":
        raise HardnegError(
            "runtime 'auto' is a choice made at load (hardneg.runtime_choice.load_reranker), not a runtime: "
            f"pass one of {list(RUNTIMES)} here"
        )
    if runtime not in RUNTIMES:
        raise HardnegError(f"unknown runtime {runtime!r}: use one of {list(RUNTIMES)}")
    return str(runtime)


def check_precision(runtime: str, precision: str | None, variant: str | None = None) -> str:
    """The inference precision for ``runtime`` (``None``: the variant's own: fp32 or int8)."""
    allowed = sorted({p for ps in PRECISIONS[runtime].values() for p in ps})
    if precision is None:
        return variant or "fp32"
    if precision not in allowed or (variant is not None and precision not in PRECISIONS[runtime][variant]):
        raise HardnegError(
            f"precision {precision!r} is not available for {runtime} with the {variant or 'fp32'} graph "
            f"(available: {list(PRECISIONS[runtime][variant or 'fp32'])})"
        )
    return precision


class _Session:
    """One compiled graph: ``run(output, feed)`` -> numpy array; ``input_names``, ``output_names``."""

    input_names: list[str]
    output_names: list[str]

    def run(self, output: str, feed: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def output_dim(self, output: str) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError


class _OrtSession(_Session):
    def __init__(self, onnx_path: str | os.PathLike, threads: int, allow_spinning: bool):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = int(threads)
        if not allow_spinning:  # busy-waiting threads burn CPU quota (k8s limits, shared nodes)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, output: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        (res,) = self.session.run([output], feed)
        return np.asarray(res)

    def output_dim(self, output: str) -> int | None:
        out = next(o for o in self.session.get_outputs() if o.name == output)
        d = out.shape[-1] if out.shape else None
        return d if isinstance(d, int) else None


class _OpenVinoSession(_Session):
    """OpenVINO (CPU plugin) compiling the same .onnx file: explicit inference precision, ``threads`` inference
    threads, latency hint (one stream: a request uses every thread, requests queue in the predictor). One infer
    request per calling thread (an InferRequest is not thread-safe)."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int, precision: str):
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            # int8 graphs: their integer ops decide; the hint only governs the float parts
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # kernels kept per input shape: OpenVINO's default (5000) lets RSS creep with varied query lengths
            "CPU_RUNTIME_CACHE_CAPACITY": openvino_runtime_cache(),
        }
        self.compiled = _ov_core().compile_model(str(onnx_path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == "bf16" and ov_type_name(hint) != "bf16":
            log.warning(
                "OpenVINO runs %s in %s, not bf16: this CPU has no native bf16", onnx_path, ov_type_name(hint)
            )
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self._local = threading.local()

    def run(self, output: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        res = req.infer(feed)
        # the result views the request's output tensor, which the next infer overwrites
        return np.array(res[self.compiled.output(output)], copy=True)

    def output_dim(self, output: str) -> int | None:
        shape = self.compiled.output(output).get_partial_shape()
        last = (
            shape[shape.rank.get_length() - 1] if shape.rank.is_static and shape.rank.get_length() else None
        )
        return int(last.get_length()) if last is not None and last.is_static else None


def ov_type_name(value: Any) -> str:
    """OpenVINO's short name of an element type (``"bf16"``, ``"f32"``) from an ``openvino.Type`` or a string.

    ``INFERENCE_PRECISION_HINT`` reads back as an ``openvino.Type`` whose ``str()`` is the long name
    (``<Type: 'bfloat16'>``), so ``"bf16" in str(hint)`` is False exactly when bf16 is on."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {
        "bfloat16": "bf16",
        "float32": "f32",
        "<Type: 'bfloat16'>": "bf16",
        "<Type: 'float32'>": "f32",
    }.get(name, name)


RUNTIME_CACHE_ENV = "HARDNEG_OPENVINO_RUNTIME_CACHE"


def openvino_runtime_cache() -> int:
    """OpenVINO's ``CPU_RUNTIME_CACHE_CAPACITY`` for the served graphs: the environment variable
    ``HARDNEG_OPENVINO_RUNTIME_CACHE`` (a container's setting; ``python -m serving`` sets it from its ``--config``'s
    ``serve.openvino_runtime_cache`` when the container did not), else the packaged default of that key."""
    from hardneg.config import default_params

    raw = os.environ.get(RUNTIME_CACHE_ENV)
    value = raw if raw not in (None, "") else default_params()["serve"]["openvino_runtime_cache"]
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise HardnegError(f"{RUNTIME_CACHE_ENV} must be an integer >= 0, got {value!r}") from None
    if n < 0:
        raise HardnegError(f"{RUNTIME_CACHE_ENV} / serve.openvino_runtime_cache must be >= 0, got {n}")
    return n


@functools.lru_cache(maxsize=1)
def _ov_core() -> Any:
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - depends on the install
        raise HardnegError("runtime openvino needs the openvino package: pip install 'hardneg[serve]'") from e

    return ov.Core()


def openvino_native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (``BF16`` in ``OPTIMIZATION_CAPABILITIES``)."""
    try:
        return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - openvino missing or no CPU plugin: no
        return False


def _pad_token_id(tokenizer: Any, tokenizer_config: dict[str, Any]) -> int:
    tok = tokenizer_config.get("pad_token")
    if isinstance(tok, dict):  # older configs store AddedToken dicts
        tok = tok.get("content")
    for cand in (tok, "[PAD]", "<pad>"):
        if isinstance(cand, str):
            i = tokenizer.token_to_id(cand)
            if i is not None:
                return int(i)
    return 0


class _OnnxGraph:
    """One ONNX graph (inputs input_ids / attention_mask [/ token_type_ids], output ``output_name``) + its tokenizer.

    ``_run`` sorts encodings by token length, runs batches of at most ``batch_size`` rows and ``max_batch_tokens``
    padded tokens, and returns the output rows (float32 [n, k]) in the input order.
    """

    output_name = ""

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        tokenizer_path: str | os.PathLike,
        max_length: int,
        *,
        pad_token_id: int | None = None,
        tokenizer_config_path: str | os.PathLike | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 16384,
        allow_spinning: bool = False,
        runtime: str = ONNXRUNTIME,
        precision: str | None = None,
    ):
        from tokenizers import Tokenizer

        if max_length < 4:
            raise HardnegError(f"max_length must be >= 4, got {max_length}")
        if batch_size < 1 or max_batch_tokens < max_length:
            raise HardnegError(
                f"batch_size must be >= 1 and max_batch_tokens >= max_length ({max_batch_tokens} < {max_length})"
            )
        self.max_length, self.batch_size, self.max_batch_tokens = (
            int(max_length),
            int(batch_size),
            int(max_batch_tokens),
        )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        self.tokenizer.no_padding()
        cfg_path = (
            Path(tokenizer_config_path)
            if tokenizer_config_path is not None
            else Path(tokenizer_path).parent / TOKENIZER_CONFIG_FILE
        )
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        self.pad_id = _pad_token_id(self.tokenizer, cfg) if pad_token_id is None else int(pad_token_id)

        self.runtime = check_runtime(runtime)
        self.precision = check_precision(self.runtime, precision)
        self.threads = int(intra_op_threads) if intra_op_threads else cpu_limit()
        if self.runtime == OPENVINO:
            self.session: _Session = _OpenVinoSession(onnx_path, self.threads, self.precision)
        else:
            self.session = _OrtSession(onnx_path, self.threads, allow_spinning)
        self.input_names = self.session.input_names
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise HardnegError(f"{onnx_path}: unexpected graph inputs {sorted(unknown)}")
        if self.output_name not in self.session.output_names:
            raise HardnegError(
                f"{onnx_path}: the graph has no '{self.output_name}' output (outputs: {self.session.output_names})"
            )

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        # longest first: the first batch shows the worst-case memory
        order = np.argsort(-lengths, kind="stable")
        batches, cur, cur_max = [], [], 0
        for i in order:
            n = int(lengths[i])
            new_max = max(cur_max, n)
            if cur and (len(cur) + 1 > self.batch_size or new_max * (len(cur) + 1) > self.max_batch_tokens):
                batches.append(np.asarray(cur))
                cur, new_max = [], n
            cur.append(int(i))
            cur_max = new_max
        if cur:
            batches.append(np.asarray(cur))
        return batches

    def _run(self, encs: Sequence[Any]) -> np.ndarray:
        """The graph's output for each encoding, float32 [len(encs), k], in the input order (non-empty input)."""
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        out: np.ndarray | None = None
        for idx in self._batches(lengths):
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                e = encs[i]
                n = len(e.ids)
                ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            res = self.session.run(self.output_name, {k: feed[k] for k in self.input_names})
            res = np.asarray(res, dtype=np.float32).reshape(len(idx), -1)
            if out is None:
                out = np.empty((len(encs), res.shape[1]), dtype=np.float32)
            out[idx] = res
        assert out is not None
        return out


class PairScorer(_OnnxGraph):
    """A cross-encoder graph (output ``score``): ``score_pairs`` returns its sigmoid scores in the input order."""

    output_name = "score"

    def encode(self, queries: Sequence[str], docs: Sequence[str]) -> list[Any]:
        return self.tokenizer.encode_batch(list(zip(queries, docs, strict=True)))

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """Sigmoid scores for (queries[i], docs[i]), float32 [n]."""
        if len(queries) != len(docs):
            raise ValueError(f"queries and docs differ in length: {len(queries)} vs {len(docs)}")
        if not docs:
            return np.empty(0, dtype=np.float32)
        return self._run(self.encode(queries, docs))[:, 0].copy()

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        return self.score_pairs([query] * len(docs), docs)

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[np.ndarray], int]:
        """Several (query, documents) requests in ONE pass over their distinct pairs (a pair repeated within or
        across requests is scored once): float32 scores per request, and the number of pairs the graph scored. One
        request without repeated pairs runs exactly the batches :meth:`score` runs."""
        row: dict[tuple[str, str], int] = {}
        for q, docs in items:
            for d in docs:
                row.setdefault((q, d), len(row))
        flat = self.score_pairs([p[0] for p in row], [p[1] for p in row])
        return [flat[[row[(q, d)] for d in docs]] for q, docs in items], len(row)


class TextEncoder(_OnnxGraph):
    """A bi-encoder graph (output ``embedding``: mean pooling + L2 normalisation inside the graph).

    Each text is tokenized alone and truncated to ``max_length`` tokens; ``embed`` returns float32 [n, dim].
    """

    output_name = EMBEDDING_OUTPUT

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        return self._run(self.tokenizer.encode_batch(list(texts)))

    @property
    def dim(self) -> int | None:
        return self.session.output_dim(self.output_name)


class EmbeddingCache:
    """A bounded, thread-safe LRU map sha256(document text) -> embedding; ``capacity`` 0 stores nothing.

    ``hits`` / ``misses`` count lookups of distinct documents (a document repeated within one call counts once).
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise HardnegError(f"doc_cache_size must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.preloaded = 0  # entries put by preload (the export's corpus vectors) at start

    def preload(self, keys: Sequence[bytes], vectors: np.ndarray) -> int:
        """Put the first ``capacity - len(self)`` of (``keys[i]``, ``vectors[i]``) (no hit or miss counted) as
        ordinary LRU entries (evicted like any other when unused); returns how many were put. The rows are kept as
        views of ``vectors`` (fp16 rows of the export's corpus vectors: half an fp32 entry's bytes; ``CosineScorer``
        computes in fp32)."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        with self._lock:
            n = max(0, min(len(keys), self.capacity - len(self._items)))
            self._items.update(zip(keys[:n], vectors[:n], strict=True))  # row views, made in C
            self.preloaded += n
        return n

    @staticmethod
    def key(text: str) -> bytes:
        """sha256 of the text (:func:`hardneg.fusion.text_digest`: the key the export's corpus vectors carry)."""
        return text_digest(text)

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached embeddings among ``keys`` (distinct), counting hits and misses; found keys become recent."""
        if not self.capacity:
            return {}
        found = {}
        with self._lock:
            for k in keys:
                v = self._items.get(k)
                if v is not None:
                    self._items.move_to_end(k)
                    found[k] = v
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        if not self.capacity:
            return
        with self._lock:
            for k, v in items:
                self._items[k] = v
                self._items.move_to_end(k)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._items),
                "capacity": self.capacity,
                "preloaded": self.preloaded,
            }


class CosineScorer:
    """Bi-encoder scoring: cosine(query embedding, document embedding), float32. The graph L2-normalises, so the
    cosine is the dot product. Queries are embedded by ``encoder`` on every call; documents by ``doc_encoder``
    (default: ``encoder``; a ``tune: query`` bi-encoder's base model), through an :class:`EmbeddingCache` of
    ``doc_cache_size`` entries."""

    def __init__(self, encoder: TextEncoder, doc_cache_size: int = 0, doc_encoder: TextEncoder | None = None):
        self.encoder = encoder
        self.doc_encoder = encoder if doc_encoder is None else doc_encoder
        if (
            doc_encoder is not None
            and None not in (encoder.dim, doc_encoder.dim)
            and encoder.dim != doc_encoder.dim
        ):
            raise HardnegError(
                f"the query and document graphs embed in different dimensions ({encoder.dim} vs {doc_encoder.dim})"
            )
        self.cache = EmbeddingCache(doc_cache_size)

    def embed_documents(self, docs: Sequence[str]) -> np.ndarray:
        return self._embed_documents(docs)[0]

    def _embed_documents(self, docs: Sequence[str]) -> tuple[np.ndarray, int]:
        """Embeddings of ``docs`` (one graph call for the distinct uncached ones) and how many were embedded."""
        keys = [EmbeddingCache.key(d) for d in docs]
        text_of = dict(zip(keys, docs, strict=True))  # distinct documents, first occurrence order
        found = self.cache.get_many(list(text_of))
        missing = [k for k in text_of if k not in found]
        if missing:
            vecs = self.doc_encoder.embed([text_of[k] for k in missing])
            new = [(k, vecs[i].copy()) for i, k in enumerate(missing)]  # copies: a row would pin the batch
            self.cache.put_many(new)
            found.update(new)
        if not docs:
            return np.empty((0, self.doc_encoder.dim or 0), dtype=np.float32), 0
        # float32 [n, dim] (preloaded corpus vectors are fp16 rows: the scores are computed in fp32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False), len(missing)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """Cosine of (queries[i], docs[i]), float32 [n]."""
        if len(queries) != len(docs):
            raise ValueError(f"queries and docs differ in length: {len(queries)} vs {len(docs)}")
        if not docs:
            return np.empty(0, dtype=np.float32)
        distinct = list(dict.fromkeys(queries))
        q_emb = self.encoder.embed(distinct)
        row = {q: i for i, q in enumerate(distinct)}
        q = q_emb[[row[x] for x in queries]]
        d = self.embed_documents(docs)
        return np.einsum("ij,ij->i", q, d).astype(np.float32)

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        return self.score_pairs([query] * len(docs), docs)

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[np.ndarray], int]:
        """Several (query, documents) requests together: ONE query-graph call for their distinct queries and ONE
        document-graph call for their distinct uncached documents (the calls :meth:`score_pairs` makes for one
        request), then each request's cosines, float32. Also returns the number of texts embedded."""
        queries = list(dict.fromkeys(q for q, _ in items))
        q_emb = self.encoder.embed(queries)
        row = {q: i for i, q in enumerate(queries)}
        d_emb, embedded = self._embed_documents([d for _, docs in items for d in docs])
        out, start = [], 0
        for q, docs in items:
            d = d_emb[start : start + len(docs)]
            start += len(docs)
            out.append(np.einsum("ij,ij->i", q_emb[[row[q]] * len(docs)], d).astype(np.float32))
        return out, len(queries) + embedded


def served_runtime(
    metadata: dict[str, Any], runtime: str | None, precision: str | None, variant: str
) -> tuple[str, str]:
    """(runtime, precision) to serve: the arguments, else what the export's parity gate measured and recorded
    (``metadata.json`` ``serving``: ``{"runtime", "precision", ...}``, from params ``serve.runtime``; under
    ``serve.runtime: auto`` that is the default candidate, onnxruntime at the served variant, served when nothing is
    timed), else onnxruntime (exports made before runtimes were recorded) at the variant's own precision."""
    recorded = metadata.get("serving") if isinstance(metadata.get("serving"), dict) else {}
    rt = check_runtime(runtime or recorded.get("runtime") or ONNXRUNTIME)
    if precision is None and rt == recorded.get("runtime") and variant == recorded.get("variant"):
        precision = recorded.get("precision")
    return rt, check_precision(rt, precision, variant)


def export_kind(metadata: dict[str, Any], export_dir: str | os.PathLike = "") -> str:
    """``metadata.json`` ``kind`` (an export written before kinds existed is a cross-encoder)."""
    kind = metadata.get("kind", CROSS_ENCODER)
    if kind not in KINDS:
        raise ExportIntegrityError(
            f"{export_dir}: unknown model kind {kind!r} in {METADATA_FILE}; known: {KINDS}"
        )
    return str(kind)


def default_doc_cache_size() -> int:
    """params ``serve.doc_cache_size`` of the packaged defaults."""
    from hardneg.config import default_params

    return int(default_params()["serve"].get("doc_cache_size") or 0)


class OnnxReranker:
    """A verified export folder, ready to score. ``variant``: "int8" or "fp32"; ``None`` (default) takes the one the
    export serves (``metadata.json`` ``served_variant``, decided at export by params ``serve.variant``).

    Both kinds (``metadata.json`` ``kind``) have the same API: a cross-encoder scores each (query, document) pair
    (sigmoid), a bi-encoder scores cosine(query embedding, document embedding) and keeps the embeddings of the last
    ``doc_cache_size`` distinct documents (LRU keyed by the text's sha256; ``None``: params
    ``serve.doc_cache_size``; 0: off; ignored for a cross-encoder).

    ``runtime`` / ``precision``: ``None`` serves what the export recorded (``metadata.json`` ``serving``); params
    ``serve.runtime: auto`` is resolved by :func:`hardneg.runtime_choice.load_reranker` (the server's loader), which
    times the gated candidates and builds this class with the fastest. ``quiet`` logs the load line at DEBUG.

    ``corpus_vectors`` (bi-encoder exports that ship ``corpus_vectors.npy``): load them into the document cache at
    start (up to its capacity; ``corpus_vectors`` attribute: ``{"shipped", "loaded", "seconds"}``); False: start
    with an empty cache.
    """

    # verify the export, pick variant / runtime, load graphs, fusion + gate, seen hashes and shipped corpus vectors
    # long: one constructor that leaves a ready, verified scorer (each step reads what the previous loaded)
    def __init__(
        self,
        export_dir: str | os.PathLike,
        variant: Variant | None = None,
        max_length: int | None = None,
        intra_op_threads: int | None = None,
        *,
        batch_size: int = 32,
        max_batch_tokens: int = 16384,
        verify: bool = True,
        allow_spinning: bool = False,
        doc_cache_size: int | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        quiet: bool = False,
        corpus_vectors: bool = True,
    ):
        if variant is not None and variant not in VARIANT_FILES:
            raise HardnegError(f"unknown variant '{variant}': use one of {sorted(VARIANT_FILES)}")
        self.export_dir = Path(export_dir)
        self.metadata = (
            verify_export_dir(self.export_dir, [variant] if variant else None)
            if verify
            else read_metadata(self.export_dir)
        )
        self.kind = export_kind(self.metadata, self.export_dir)
        self.variant: Variant = self._served_variant(variant, verify)
        self.runtime, self.precision = served_runtime(self.metadata, runtime, precision, self.variant)
        exported_max = int(self.metadata.get("max_length") or 512)
        if max_length is not None and not 4 <= max_length <= exported_max:
            raise HardnegError(
                f"max_length must be in [4, {exported_max}] (the exported model's limit), got {max_length}"
            )
        self.max_length = int(max_length or exported_max)
        graph_args = (self.export_dir / VARIANT_FILES[self.variant], self.export_dir / TOKENIZER_FILE)
        graph_kwargs: dict[str, Any] = {
            "intra_op_threads": intra_op_threads,
            "batch_size": batch_size,
            "max_batch_tokens": max_batch_tokens,
            "allow_spinning": allow_spinning,
            "runtime": self.runtime,
            "precision": self.precision,
        }
        self.scorer: PairScorer | CosineScorer
        if self.kind == BI_ENCODER:
            size = default_doc_cache_size() if doc_cache_size is None else int(doc_cache_size)
            doc = document_graph(self.metadata, self.export_dir)
            doc_encoder = None
            if doc is not None:  # tune: query -> documents through the base model's graph, same variant
                cfg = doc.get("tokenizer_config")
                doc_encoder = TextEncoder(
                    self.export_dir / doc["variants"][self.variant],
                    self.export_dir / doc["tokenizer"],
                    self.max_length,
                    # no config recorded: none is read (not the query tokenizer's), as the export's gates did
                    tokenizer_config_path=self.export_dir
                    / (cfg if isinstance(cfg, str) else DOC_TOKENIZER_CONFIG_FILE),
                    **graph_kwargs,
                )
            query_encoder = TextEncoder(*graph_args, self.max_length, **graph_kwargs)
            self.scorer = CosineScorer(query_encoder, size, doc_encoder)
        else:
            self.scorer = PairScorer(*graph_args, self.max_length, **graph_kwargs)
        self.corpus_vectors = self._load_corpus_vectors() if corpus_vectors else None
        self.seen_sha256 = self._seen_documents()
        self._log_loaded(quiet)

    def _log_loaded(self, quiet: bool) -> None:
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "loaded %s (%s, %s on %s, precision %s, %d threads, version %s, max_length %d, fusion weight %s%s)",
            self.export_dir,
            self.kind,
            self.variant,
            self.runtime,
            self.precision,
            self.threads,
            self.version,
            self.max_length,
            self.fusion_weight,
            ""
            if self.corpus_vectors is None
            else ", {loaded} of {shipped} corpus vectors cached in {seconds:.2f} s".format(
                **self.corpus_vectors
            ),
        )

    def _load_corpus_vectors(self) -> dict[str, Any] | None:
        """The export's corpus vectors (``corpus_vectors.npy``, a ``tune: query`` bi-encoder's base-model document
        vectors) put into the document cache, at most its capacity (file order: the corpus order; the rest are
        embedded on first sight, as without them). ``None``: none shipped, or no cache. Documents sent with exactly
        the text they were shipped under are cache hits from the first request: the same vectors the evaluate stage
        scored with (the export checked them against the document graph, ``parity.json`` ``corpus_vectors``)."""
        info = corpus_vectors_info(self.metadata, self.export_dir) if self.kind == BI_ENCODER else None
        cache = self.doc_cache
        if info is None or cache is None or not cache.capacity:
            return None
        t0 = time.perf_counter()
        keys, vectors, total = read_corpus_vectors(
            self.export_dir / info["file"], cache.capacity - len(cache), dim=self.scorer.doc_encoder.dim
        )
        loaded = cache.preload(keys, vectors)
        out = {"file": info["file"], "shipped": total, "loaded": loaded, "seconds": time.perf_counter() - t0}
        if loaded < total:
            log.warning(
                "%s: %d of %d shipped corpus vectors loaded (document cache capacity %d, serve.doc_cache_size): the "
                "other documents are embedded on first sight, and evict the least recently used",
                self.export_dir,
                loaded,
                total,
                cache.capacity,
            )
        return out

    def _seen_documents(self) -> frozenset[str]:
        """The gate's training-positive text hashes (``seen_documents.txt``, checksummed with the export)."""
        fusion = self.metadata.get("fusion") or {}
        ref = fusion.get("seen_documents") if isinstance(fusion, dict) else None
        if not ref:
            return frozenset()
        path = self.export_dir / str(ref["file"])
        try:
            return frozenset(
                line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            )
        except OSError as e:
            raise ExportIntegrityError(f"{path}: cannot read the gate's seen documents ({e})") from None

    def query_weight(self, scores: Sequence[float] | np.ndarray, docs: Sequence[str]) -> float | None:
        """The fusion weight of one request (the dev-chosen per-query gate, :func:`hardneg.fusion.served_weight`)."""
        from hardneg.fusion import served_weight

        return served_weight(self.metadata.get("fusion"), scores, docs, self.seen_sha256)

    def _served_variant(self, variant: Variant | None, verify: bool) -> Variant:
        if variant is None:  # the export's served variant (verified files: check that it is listed too)
            variant = served_variant(self.metadata, self.export_dir)
            doc = document_graph(self.metadata, self.export_dir) if self.kind == BI_ENCODER else None
            needed = [VARIANT_FILES[variant]] + ([doc["variants"][variant]] if doc is not None else [])
            for name in needed if verify else []:
                if name not in self.metadata["files"]:
                    raise ExportIntegrityError(f"{self.export_dir}: {name} is not listed in {METADATA_FILE}")
        if variant == "int8" and (self.metadata.get("parity") or {}).get("int8_passed") is False:
            raise HardnegError(
                f"{self.export_dir}: the int8 variant failed its parity gate at export (see parity.json); serve fp32"
            )
        return variant

    @property
    def threads(self) -> int:
        """Inference threads per graph (``intra_op_threads``; default: the container's CPU limit)."""
        return self.scorer.encoder.threads if isinstance(self.scorer, CosineScorer) else self.scorer.threads

    @property
    def score_name(self) -> str:
        """What ``score`` returns: "sigmoid" (cross-encoder) or "cosine" (bi-encoder)."""
        return KIND_SCORES[self.kind]

    @property
    def document_encoder(self) -> str | None:
        """What embeds the documents of a bi-encoder: ``"self"`` (the query graph) or the base model a ``tune: query``
        bi-encoder keeps for documents (``metadata.json`` ``document_encoder``); ``None`` for a cross-encoder."""
        if self.kind != BI_ENCODER:
            return None
        return str(self.metadata.get("document_encoder") or SELF_ENCODER)

    @property
    def tune(self) -> str | None:
        """A bi-encoder's training mode (``query``: query tower only, ``both``); ``None`` for a cross-encoder or an
        export that does not record it."""
        t = self.metadata.get("tune")
        return str(t) if t is not None and self.kind == BI_ENCODER else None

    @property
    def doc_cache(self) -> EmbeddingCache | None:
        """The bi-encoder's document-embedding cache (``None`` for a cross-encoder)."""
        return self.scorer.cache if isinstance(self.scorer, CosineScorer) else None

    @property
    def cache_hits(self) -> int:
        return self.doc_cache.hits if self.doc_cache is not None else 0

    @property
    def cache_misses(self) -> int:
        return self.doc_cache.misses if self.doc_cache is not None else 0

    @property
    def cache_size(self) -> int:
        """Documents whose embedding is cached now."""
        return len(self.doc_cache) if self.doc_cache is not None else 0

    @property
    def doc_cache_size(self) -> int:
        """The cache's capacity (0: off, or a cross-encoder)."""
        return self.doc_cache.capacity if self.doc_cache is not None else 0

    def cache_stats(self) -> dict[str, int] | None:
        """{hits, misses, size, capacity} for a bi-encoder, ``None`` for a cross-encoder."""
        return self.doc_cache.stats() if self.doc_cache is not None else None

    @property
    def model_name(self) -> str:
        return str(self.metadata.get("model_name") or self.export_dir.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version") or "unknown")

    @property
    def lineage(self) -> dict[str, Any]:
        return dict(self.metadata.get("lineage") or {})

    @property
    def fusion_weight(self) -> float | None:
        fusion = self.metadata.get("fusion") or {}
        w = fusion.get("weight") if isinstance(fusion, dict) else None
        return None if w is None else float(w)

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """Reranker scores of ``docs`` for ``query`` (sigmoid, or cosine for a bi-encoder), float32 [len(docs)], in
        the input order."""
        return self.scorer.score(query, docs)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        return self.scorer.score_pairs(queries, docs)

    def rerank(
        self, query: str, docs: Sequence[str], first_stage_scores: Sequence[float] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, order): ``order`` lists document indices best first (ties keep the input order).

        With first-stage scores and a fusion weight in the metadata, scores are the fused scores the evaluation
        tuned (z-normalised per query); otherwise (no first-stage scores, or an export without a weight) they are
        the reranker's own scores (sigmoid, or cosine for a bi-encoder).
        """
        return self._ranked(self.score(query, docs), docs, first_stage_scores)

    def rerank_many(
        self, requests: Sequence[tuple[str, Sequence[str], Sequence[float] | np.ndarray | None]]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """:meth:`rerank` for several ``(query, documents, first_stage_scores)`` requests at once (the server's
        batching across requests, ``serving/batcher.py``): their texts go through the graph together, each distinct
        text once (a cross-encoder: each distinct pair; a bi-encoder: one call for the distinct queries, one for the
        distinct documents not in the cache), then each request gets its own scores and ranking. Also returns how
        many texts (pairs) the graphs ran.

        One request alone gets exactly what :meth:`rerank` gives it (a cross-encoder request that repeats a document
        scores the pair once: with int8, its other pairs may then move as below). Together with others, its texts
        share graph batches with theirs; the scores are the same up to how the runtime rounds a row in another batch
        shape: not at all for a cross-encoder graph on onnxruntime fp32 (bit-identical, tested), a few float32 ulps
        for a bi-encoder graph (its mean pooling sums over the padded batch width), ~1e-3 for int8 graphs
        (activations quantised per batch) -- the same dependence a cached document embedding already has on the
        request that computed it."""
        scores, encoded = self.scorer.score_many([(q, docs) for q, docs, _ in requests])
        ranked = [self._ranked(s, docs, fs) for s, (_, docs, fs) in zip(scores, requests, strict=True)]
        return ranked, encoded

    def _ranked(
        self, raw: np.ndarray, docs: Sequence[str], first_stage_scores: Sequence[float] | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = raw.astype(np.float64)
        if first_stage_scores is not None:
            fs = np.asarray(first_stage_scores, dtype=np.float64)
            if fs.shape != scores.shape:
                raise ValueError(f"first_stage_scores has {fs.size} values for {len(docs)} documents")
            w = self.query_weight(scores, docs)
            if w is not None:
                scores = fuse(scores, fs, w)
        order = np.argsort(-scores, kind="stable")
        return scores, order
