"""Score fusion of the reranker and the first stage, shared by evaluation and serving (so what is served is what
was measured): per query, z-normalise both score lists, then ``w * z(reranker) + (1 - w) * z(first_stage)``.
``w`` is tuned on the dev split and stored in the exported model's metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def zscore(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a
    sd = a.std()
    return (a - a.mean()) / sd if sd > 1e-12 else np.zeros_like(a)


def fuse(
    reranker_scores: Sequence[float] | np.ndarray,
    first_stage_scores: Sequence[float] | np.ndarray,
    weight: float,
) -> np.ndarray:
    """Fused scores for one query's candidates. weight=1: reranker only; weight=0: first stage only."""
    r, f = np.asarray(reranker_scores, dtype=np.float64), np.asarray(first_stage_scores, dtype=np.float64)
    if r.shape != f.shape:
        raise ValueError(f"reranker and first-stage scores differ in length: {r.shape} vs {f.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return weight * zscore(r) + (1.0 - weight) * zscore(f)


# ------------------------------------------------------------------------------------------------- per-query gate

GATE_SIGNALS = ("none", "margin", "seen", "seen-margin")


def top_margin(reranker_scores: Sequence[float] | np.ndarray) -> float:
    """The reranker's confidence on one query: best score minus the runner-up (0 with fewer than 2 candidates)."""
    r = np.sort(np.asarray(reranker_scores, dtype=np.float64))[::-1]
    return float(r[0] - r[1]) if r.size >= 2 else 0.0


def gate_passes(gate: Mapping[str, Any], reranker_scores: Sequence[float], top_is_seen: bool) -> bool:
    """Whether one query takes the gate's ``weight_high`` (the tuned model trusted more). ``top_is_seen``: the
    reranker's best candidate is a positive of a training query. Signals: ``none`` (never: one global weight),
    ``margin`` (best minus runner-up >= threshold), ``seen`` (the best candidate is a training positive),
    ``seen-margin`` (both)."""
    signal = gate.get("signal", "none")
    if signal == "none":
        return False
    margin_ok = top_margin(reranker_scores) >= float(gate.get("threshold") or 0.0)
    if signal == "margin":
        return margin_ok
    if signal == "seen":
        return bool(top_is_seen)
    if signal == "seen-margin":
        return bool(top_is_seen) and margin_ok
    raise ValueError(f"unknown gate signal {signal!r} (one of {list(GATE_SIGNALS)})")


def gated_weight(gate: Mapping[str, Any], reranker_scores: Sequence[float], top_is_seen: bool) -> float:
    """The fusion weight of one query under ``gate`` (``{"signal", "threshold", "weight_high", "weight_low"}``)."""
    passes = gate_passes(gate, reranker_scores, top_is_seen)
    return float(gate["weight_high"] if passes else gate["weight_low"])


def text_digest(text: str) -> bytes:
    """sha256 of a document's exact text (UTF-8; a lone surrogate, which JSON allows in a corpus but a request never
    carries, is encoded as is rather than refused): the one key of a document wherever hardneg recognises one by its
    text: the seen gate (:func:`text_sha256`), the server's document cache (:class:`hardneg.rerank.EmbeddingCache`)
    and the corpus vectors an export ships (``corpus_vectors.npy``)."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def text_sha256(text: str) -> str:
    """How a document is recognised as a training positive at serving time: :func:`text_digest` in hex."""
    return text_digest(text).hex()


def served_weight(
    fusion: Mapping[str, Any] | None,
    reranker_scores: Sequence[float] | np.ndarray,
    docs: Sequence[str],
    seen_sha256: set[str] | frozenset[str] = frozenset(),
) -> float | None:
    """The fusion weight of one request, as evaluation chose it: the export's ``fusion`` (``{"weight", "gate"}``),
    the reranker's scores of the request's documents (texts ``docs``) and the sha256 of the training positives'
    texts. ``None``: no fusion (the reranker's own scores)."""
    if not fusion or fusion.get("weight") is None:
        return None
    gate = fusion.get("gate")
    if not gate or gate.get("signal", "none") == "none":
        return float(fusion["weight"])
    r = np.asarray(reranker_scores, dtype=np.float64)
    top_is_seen = bool(r.size) and text_sha256(docs[int(np.argmax(r))]) in seen_sha256
    return gated_weight(gate, r, top_is_seen)
