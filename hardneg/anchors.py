"""Anchor: sentence-transformers' own hard-negative miner (``util.mine_hard_negatives``) as an arm of the quality study.

Texts are mapped back to ids; ST's embedding cache is pre-seeded with the vectors ``hardneg embed`` already computed
for that model (a cache miss only costs time, never changes the result). Mining reads the qrels of one split only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import ConfigError


def _st_model_name(emb_dir: Path) -> str | None:
    """The embedding model the ST anchor uses: all-MiniLM-L6-v2 when configured, else the first embed model."""
    man = emb_dir / "manifest.json"
    if not man.exists():
        return None
    entries = json.loads(man.read_text(encoding="utf-8")).get("entries", [])
    names = [e["model"] for e in entries if e.get("backend") == "torch"]
    return "all-MiniLM-L6-v2" if "all-MiniLM-L6-v2" in names else (names[0] if names else None)


def _seed_st_cache(
    model: Any,
    model_name: str,
    emb_dir: Path,
    cache: Path,
    queries: list[str],
    corpus: list[str],
    dataset: Any,
) -> bool:
    """Write the vectors `hardneg embed` computed into ST's embedding cache (same key as ST computes)."""
    from hardneg.embed import model_slug

    mdir = emb_dir / model_slug(model_name)
    try:
        ids = json.loads((mdir / "ids.json").read_text(encoding="utf-8"))
        Dv, Qv = np.load(mdir / "corpus.npy"), np.load(mdir / "queries.npy")
    except (OSError, ValueError, KeyError):
        return False
    dvec = {dataset.corpus[d].full_text: Dv[i] for i, d in enumerate(ids["doc_ids"])}
    qvec = {dataset.queries[q].text: Qv[i] for i, q in enumerate(ids["query_ids"])}
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
    emb_dir: Path,
    cache: Path,
    *,
    relative_margin: float | None,
    num_negatives: int,
    strategy: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Negatives from sentence-transformers ``util.mine_hard_negatives`` (texts mapped back to ids)."""
    import torch
    from sentence_transformers import SentenceTransformer, util

    from hardneg.models import resolve_model

    name = _st_model_name(emb_dir) or "all-MiniLM-L6-v2"
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
    seeded = _seed_st_cache(model, name, emb_dir, cache, anchors, corpus + positives, dataset)
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
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = util.mine_hard_negatives(ds, model, corpus=corpus, **kwargs)
    text2doc: dict[str, str] = {}
    for d, doc in dataset.corpus.items():
        text2doc.setdefault(doc.full_text, d)
    pair_of = {(a, p): (q, pid) for (q, pid), a, p in zip(pairs, anchors, positives, strict=True)}
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    rows = []
    seen = set()
    for rec in out:
        key = pair_of.get((rec["anchor"], rec["positive"]))
        if key is None or key in seen:
            continue
        seen.add(key)
        negs = [text2doc[rec[c]] for c in neg_cols if rec[c] in text2doc]
        rows.append({"query_id": key[0], "positive_id": key[1], "negative_ids": negs, "policy": strategy})
    for (
        q,
        p,
    ) in pairs:  # pairs ST dropped (not enough negatives): kept with no negative, as the miner reports them
        if (q, p) not in seen:
            rows.append({"query_id": q, "positive_id": p, "negative_ids": [], "policy": strategy})
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
