"""Anchor: sentence-transformers' own hard-negative miner (``util.mine_hard_negatives``) as an arm of the quality study.

Texts are mapped back to ids; ST's embedding cache is pre-seeded with the vectors ``hardneg embed`` already computed
for that model (a cache miss only costs time, never changes the result). Mining reads the qrels of one split only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import ConfigError
from hardneg.hw import use_bf16


def _st_model_name(emb_dir: Path) -> str | None:
    """The embedding model the ST anchor uses: all-MiniLM-L6-v2 when configured, else the first embed model."""
    man = emb_dir / "manifest.json"
    if not man.exists():
        return None
    entries = json.loads(man.read_text(encoding="utf-8")).get("entries", [])
    names = [e["model"] for e in entries if e.get("backend") == "torch"]
    return "all-MiniLM-L6-v2" if "all-MiniLM-L6-v2" in names else (names[0] if names else None)


def load_model_vectors(
    emb_dir: Path, model_name: str
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]] | None:
    """(corpus vectors, doc ids, query vectors, query ids) of one model from `hardneg embed` output, or None."""
    from hardneg.embed import model_slug

    mdir = emb_dir / model_slug(model_name)
    try:
        ids = json.loads((mdir / "ids.json").read_text(encoding="utf-8"))
        return np.load(mdir / "corpus.npy"), ids["doc_ids"], np.load(mdir / "queries.npy"), ids["query_ids"]
    except (OSError, ValueError, KeyError):
        return None


def _seed_st_cache(
    model: Any,
    vectors: tuple[np.ndarray, Sequence[str], np.ndarray, Sequence[str]] | None,
    cache: Path,
    queries: list[str],
    corpus: list[str],
    dataset: Any,
) -> bool:
    """Write vectors hardneg already computed into ST's embedding cache (the same key ST computes), so ST does not
    embed the corpus again. A cache miss only costs time, never changes the result."""
    if vectors is None:
        return False
    Dv, doc_ids, Qv, query_ids = vectors
    dvec = {dataset.corpus[d].full_text: Dv[i] for i, d in enumerate(doc_ids) if d in dataset.corpus}
    qvec = {dataset.queries[q].text: Qv[i] for i, q in enumerate(query_ids) if q in dataset.queries}
    uq, uc = list(dict.fromkeys(queries)), list(dict.fromkeys(corpus))
    if any(t not in qvec for t in uq) or any(t not in dvec for t in uc):
        return False
    name = model.model_card_data.base_model or ""
    qh = hashlib.sha256(repr((name, None, None, uq)).encode(), usedforsecurity=False).hexdigest()
    ch = hashlib.sha256(repr((name, None, None, uc)).encode(), usedforsecurity=False).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / f"query_embeddings_{qh}.npy", np.stack([qvec[t] for t in uq]).astype(np.float32))
    np.save(cache / f"corpus_embeddings_{ch}.npy", np.stack([dvec[t] for t in uc]).astype(np.float32))
    return True


def st_negatives(
    dataset: Any,
    split: str,
    params: Mapping[str, Any],
    emb_dir: Path | None,
    cache: Path,
    *,
    relative_margin: float | None,
    num_negatives: int,
    strategy: str,
    vectors: tuple[np.ndarray, Sequence[str], np.ndarray, Sequence[str]] | None = None,
    model_name: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Negatives from sentence-transformers ``util.mine_hard_negatives`` (texts mapped back to ids), with its defaults
    (top ``num_negatives`` by the model's cosine, the positive excluded). ``vectors`` (or ``emb_dir``'s) are the
    model's embeddings hardneg already computed, seeded into ST's cache."""
    import torch
    from sentence_transformers import SentenceTransformer, util

    from hardneg.models import resolve_model

    name = model_name or (_st_model_name(emb_dir) if emb_dir is not None else None) or "all-MiniLM-L6-v2"
    resolved = resolve_model(name)
    if resolved.backend != "torch":
        raise ConfigError(f"the sentence-transformers anchor needs a PyTorch embedding model, got {name}")
    model = SentenceTransformer(resolved.path, device="cpu")
    mcfg = next((m for m in params["embed"]["models"] if str(m["name"]) == name), {})
    model.max_seq_length = int(mcfg.get("max_length", 256))
    qrels = dataset.split_qrels(split)
    pairs = [(q, p) for q in sorted(qrels) for p in sorted(qrels[q])]
    anchors = [dataset.queries[q].text for q, _ in pairs]
    positives = [dataset.corpus[p].full_text for _, p in pairs]
    corpus = [d.full_text for d in dataset.corpus.values()]
    from datasets import Dataset

    ds = Dataset.from_dict({"anchor": anchors, "positive": positives})
    if vectors is None and emb_dir is not None:
        vectors = load_model_vectors(emb_dir, name)
    seeded = _seed_st_cache(model, vectors, cache, anchors, corpus + positives, dataset)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {
        "num_negatives": num_negatives,
        "output_format": "n-tuple",
        "verbose": False,
        "cache_folder": str(cache),
        "batch_size": 64,
    }
    if relative_margin is not None:
        kwargs["relative_margin"] = relative_margin
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(params["embed"]["bf16"])):
        out = util.mine_hard_negatives(ds, model, corpus=corpus, **kwargs)
    rows = _rows_from_st(out, dataset, pairs, anchors, positives, strategy)
    stats = {
        "policy": strategy,
        "anchor": "sentence_transformers.util.mine_hard_negatives",
        "model": name,
        "relative_margin": relative_margin,
        "num_negatives": num_negatives,
        "pairs": len(pairs),
        "pairs_without_negative": sum(1 for r in rows if not r["negative_ids"]),
        "cache_seeded_from_hardneg_embed": seeded,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return rows, stats


def _rows_from_st(
    out: Any,
    dataset: Any,
    pairs: list[tuple[str, str]],
    anchors: list[str],
    positives: list[str],
    strategy: str,
) -> list[dict[str, Any]]:
    """ST's n-tuples (texts) mapped back to ``negatives.jsonl`` rows (ids), one per (query, positive) pair; pairs ST
    dropped (not enough negatives) are kept without a negative, as the miner reports them."""
    text2doc: dict[str, str] = {}
    for d, doc in dataset.corpus.items():
        text2doc.setdefault(doc.full_text, d)
    pair_of = {(a, p): (q, pid) for (q, pid), a, p in zip(pairs, anchors, positives, strict=True)}
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    rows, seen = [], set()
    for rec in out:
        key = pair_of.get((rec["anchor"], rec["positive"]))
        if key is None or key in seen:
            continue
        seen.add(key)
        negs = [text2doc[rec[c]] for c in neg_cols if rec[c] in text2doc]
        rows.append({"query_id": key[0], "positive_id": key[1], "negative_ids": negs, "policy": strategy})
    for q, p in pairs:
        if (q, p) not in seen:
            rows.append({"query_id": q, "positive_id": p, "negative_ids": [], "policy": strategy})
    return rows


def add_distances(
    rows: list[dict[str, Any]], D: np.ndarray, doc_ids: Sequence[str], Q: np.ndarray, query_ids: Sequence[str]
) -> None:
    """Fill ``d_qp``/``d_qn``/``d_pn`` (cosine distances in the shared PCA space) for rows that lack them, so every
    policy's negatives.jsonl has the same fields."""
    di = {d: i for i, d in enumerate(doc_ids)}
    qi = {q: i for i, q in enumerate(query_ids)}
    for r in rows:
        if "d_qn" in r and "d_qp" in r:
            continue
        q, p = Q[qi[r["query_id"]]], D[di[r["positive_id"]]]
        N = (
            D[[di[n] for n in r["negative_ids"]]]
            if r["negative_ids"]
            else np.zeros((0, D.shape[1]), np.float32)
        )
        r["d_qp"] = round(float(1 - q @ p), 6)
        r["d_qn"] = [round(float(x), 6) for x in 1 - N @ q]
        r["d_pn"] = [round(float(x), 6) for x in 1 - N @ p]
