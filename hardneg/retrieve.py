"""First-stage retrieval: dense (faiss) and BM25 (bm25s), with one run format.

A *run* is ``{query_id: {doc_id: score}}`` (BEIR/ranx convention), saved as ``run.json``. Dense search is
batched over queries so memory stays bounded by ``batch_size x k`` results plus the index (the full
query x corpus score matrix is never built).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from hardneg.artifacts import Run
from hardneg.errors import ConfigError, HardnegError

IndexKind = Literal["flat", "ivf", "hnsw"]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _blas_env_for_faiss() -> dict[str, str]:
    """Environment for the OpenBLAS + libgomp bundled in the faiss-cpu wheel (read once, when faiss is imported).

    The wheel's OpenBLAS (0.3.15) predates Sapphire Rapids and falls back to a slow generic kernel there: forcing the
    AVX-512 (SkylakeX) or AVX2 (Haswell) kernel family made IndexFlatIP search 3.5x faster on the 2-core dev box
    (1024 x 200k x 384, k=110: 5.9 s -> 1.7 s). A passive OpenMP wait policy stops idle threads from spinning, which
    halved search time on a shared machine. Values the user set win.
    """
    env = {}
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        env["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        env["OPENBLAS_CORETYPE"] = "Haswell"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return {k: v for k, v in env.items() if k not in os.environ}


def _faiss():
    """Import faiss with :func:`_blas_env_for_faiss` set only while its libraries load (torch, numpy and
    subprocesses keep the caller's environment)."""
    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    env = _blas_env_for_faiss()
    os.environ.update(env)
    try:
        import faiss
    finally:
        for k in env:
            os.environ.pop(k, None)
    return faiss


def build_index(
    D: np.ndarray, index: IndexKind = "flat", *, nlist: int | None = None, hnsw_m: int = 32, seed: int = 13
):
    """A faiss inner-product index over ``D`` (rows should be L2-normalised, so IP = cosine).

    ``flat`` is exact (``IndexFlatIP``); ``ivf`` (``IndexIVFFlat``, ``nlist ~ 4*sqrt(n)``, trained on at most 256
    points per list) and ``hnsw`` (``IndexHNSWFlat``, inner product) are approximate.
    """
    faiss = _faiss()

    D = np.ascontiguousarray(D, dtype=np.float32)
    if D.ndim != 2 or D.shape[0] == 0:
        raise HardnegError(f"cannot index an empty or non-2-D matrix (shape {D.shape})")
    n, d = D.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nl = int(nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1)))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nl, faiss.METRIC_INNER_PRODUCT)
        train = D if n <= nl * 256 else D[np.random.default_rng(seed).choice(n, nl * 256, replace=False)]
        idx.train(train)
        idx.nprobe = max(1, nl // 8)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = 128
    else:
        raise ConfigError(f"unknown index '{index}' (use flat, ivf or hnsw)")
    idx.add(D)
    return idx


def dense_search(
    Q: np.ndarray,
    D: np.ndarray | None,
    k: int,
    index: IndexKind = "flat",
    batch_size: int = 4096,
    *,
    prebuilt=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search of every row of ``Q`` over ``D``.

    Returns ``(scores float32 [nq, k'], indices int64 [nq, k'])`` with ``k' = min(k, n_docs)``, each row sorted by
    score descending (ties by lower index). Approximate indexes may return fewer hits: missing slots have index -1
    and score -inf. Pass ``prebuilt`` (from :func:`build_index`) to reuse an index across calls.
    """
    idx = prebuilt if prebuilt is not None else build_index(D, index)  # type: ignore[arg-type]
    n = int(idx.ntotal)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    if Q.ndim != 2:
        raise HardnegError(f"queries must be a 2-D matrix, got shape {Q.shape}")
    if Q.shape[0] and Q.shape[1] != idx.d:
        raise HardnegError(f"query width {Q.shape[1]} differs from the index width {idx.d}")
    kk = max(0, min(int(k), n))
    scores = np.empty((Q.shape[0], kk), np.float32)
    ids = np.empty((Q.shape[0], kk), np.int64)
    if kk == 0:
        return scores, ids
    for s in range(0, Q.shape[0], max(1, int(batch_size))):
        sc, ix = idx.search(Q[s : s + batch_size], kk)
        sc = np.where(ix < 0, -np.inf, sc).astype(np.float32)
        # faiss order within equal scores is implementation-defined: make it (score desc, index asc)
        order = np.lexsort((np.where(ix < 0, np.iinfo(np.int64).max, ix), -sc), axis=1)
        scores[s : s + batch_size] = np.take_along_axis(sc, order, axis=1)
        ids[s : s + batch_size] = np.take_along_axis(ix, order, axis=1)
    return scores, ids


# ----------------------------------------------------------------------------------------------------- BM25


def bm25_topk(
    doc_texts: Sequence[str], query_texts: Sequence[str], k: int, *, k1: float = 1.5, b: float = 0.75
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 (bm25s, Lucene variant, English stop words) top-``k``: ``(scores [nq, k'], indices [nq, k'])``.

    Documents with score 0 (no query term matched) get index -1 and score -inf, like missing dense hits.
    """
    import bm25s

    if not doc_texts:
        raise HardnegError("cannot build a BM25 index over an empty corpus")
    kk = max(0, min(int(k), len(doc_texts)))
    if not query_texts or kk == 0:
        return np.empty((len(query_texts), kk), np.float32), np.empty((len(query_texts), kk), np.int64)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(list(doc_texts), stopwords="en", show_progress=False), show_progress=False)
    # queries as token strings: bm25s maps them onto the corpus vocabulary (unknown terms are ignored)
    q_tokens = bm25s.tokenize(list(query_texts), stopwords="en", return_ids=False, show_progress=False)
    ix, sc = retriever.retrieve(q_tokens, k=kk, show_progress=False, n_threads=0)
    ix = np.asarray(ix, np.int64)
    sc = np.asarray(sc, np.float32)
    miss = sc <= 0
    return np.where(miss, -np.inf, sc).astype(np.float32), np.where(miss, -1, ix)


def bm25_search(corpus: Mapping, queries: Mapping, k: int) -> Run:
    """BM25 run over a corpus (``{doc_id: Document | str}``) for ``{query_id: Query | str}``."""
    doc_ids = list(corpus)
    doc_texts = [_text(corpus[d], full=True) for d in doc_ids]
    q_ids = list(queries)
    q_texts = [_text(queries[q]) for q in q_ids]
    scores, idx = bm25_topk(doc_texts, q_texts, k)
    return run_from_arrays(scores, idx, q_ids, doc_ids)


def _text(x, full: bool = False) -> str:
    if isinstance(x, str):
        return x
    if full and hasattr(x, "full_text"):
        return x.full_text
    return x.text


# ------------------------------------------------------------------------------------------------------ runs


def run_from_arrays(
    scores: np.ndarray, indices: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str]
) -> Run:
    """``(scores, indices)`` rows -> ``{qid: {doc_id: score}}`` (missing hits, index -1, dropped)."""
    if len(query_ids) != scores.shape[0]:
        raise HardnegError(f"{len(query_ids)} query ids for {scores.shape[0]} result rows")
    run: Run = {}
    for qid, sc, ix in zip(query_ids, scores, indices, strict=True):
        run[qid] = {doc_ids[i]: float(s) for s, i in zip(sc, ix, strict=True) if i >= 0}
    return run


def dense_run(
    D: np.ndarray,
    doc_ids: Sequence[str],
    Q: np.ndarray,
    query_ids: Sequence[str],
    qids: Sequence[str],
    k: int,
) -> Run:
    """Exact top-``k`` inner-product run over ``D`` for the queries ``qids`` (those without a vector are skipped)."""
    qi = {q: i for i, q in enumerate(query_ids)}
    qids = [q for q in qids if q in qi]
    S, Ix = dense_search(Q[[qi[q] for q in qids]], D, k)
    return run_from_arrays(S, Ix, qids, list(doc_ids))


def save_run(run: Run, path: str | os.PathLike) -> Path:
    from hardneg.artifacts import atomic_write_json

    p = Path(path)
    if p.suffix != ".json":
        p = p / "run.json"
    atomic_write_json(p, run)
    return p


def load_run(path: str | os.PathLike) -> Run:
    from hardneg.artifacts import read_run

    return read_run(path)


# --------------------------------------------------------------------------------------------------- hybrid


def fuse_runs(primary: Mapping, secondary: Mapping, weight: float, k: int) -> Run:
    """Hybrid first stage: per query, the union of both runs' candidates scored ``weight * z(primary) +
    (1 - weight) * z(secondary)`` (:func:`hardneg.fusion.fuse`, the served fusion), top ``k``. A candidate missing
    from one run takes that run's lowest score for the query (it ranked below the run's cut-off). The hybrid is
    ``fuse_runs(bm25, dense, w_bm25, k)``; ``w`` is chosen on dev (:func:`hardneg.baselines.tune_hybrid`)."""
    from hardneg.fusion import fuse

    out: Run = {}
    for q in sorted(set(primary) | set(secondary)):
        a, b = primary.get(q) or {}, secondary.get(q) or {}
        cands = sorted(set(a) | set(b))
        if not cands:
            out[q] = {}
            continue
        amin = min(a.values()) if a else 0.0
        bmin = min(b.values()) if b else 0.0
        fa = np.array([a.get(d, amin) for d in cands], np.float64)
        fb = np.array([b.get(d, bmin) for d in cands], np.float64)
        s = fuse(fa, fb, float(weight))
        order = sorted(range(len(cands)), key=lambda i: (-s[i], cands[i]))[: int(k)]
        out[q] = {cands[i]: float(s[i]) for i in order}
    return out
