"""No-training systems of the quality study, every choice made on dev: BM25, each embedding model alone, the PCA
ensemble (its model weights chosen on dev), and BM25 fused with each dense system (weight chosen on dev). The best of
them on dev is the baseline the served system must beat (hardneg.quality); ``tune_hybrid`` is also the pipeline's
``evaluate.first_stage: hybrid``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import Run
from hardneg.retrieve import dense_run

log = logging.getLogger(__name__)

METRICS = ("mrr@3", "mrr@10", "ndcg@10", "recall@100")


# ---------------------------------------------------------------------------------------------------- vectors


def model_vectors(
    emb_dir: str | os.PathLike, slug: str
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """One embedding model's (corpus, doc_ids, queries, query_ids) from ``hardneg embed`` output (unit rows)."""
    from hardneg.embed import l2_normalize

    m = Path(emb_dir) / slug
    ids = json.loads((m / "ids.json").read_text(encoding="utf-8"))
    D = l2_normalize(np.load(m / "corpus.npy").astype(np.float32))
    Q = l2_normalize(np.load(m / "queries.npy").astype(np.float32))
    return D, list(ids["doc_ids"]), Q, list(ids["query_ids"])


def ensemble_vectors(
    emb_dir: str | os.PathLike,
    slugs: Sequence[str],
    weights: Sequence[float],
    variance: float | None,
    seed: int = 13,
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Weighted concatenation of the models' vectors, PCA to ``variance`` (None: no PCA), re-normalised."""
    from hardneg.reduce import fit_projection

    parts = [model_vectors(emb_dir, s) for s in slugs]
    proj = fit_projection([p[0] for p in parts], weights, list(slugs), variance=variance, seed=seed)
    return (
        proj.transform([p[0] for p in parts]),
        parts[0][1],
        proj.transform([p[2] for p in parts]),
        parts[0][3],
    )


# ------------------------------------------------------------------------------------------------ evaluation


def metrics_of(run: Run, qrels: Mapping[str, Mapping[str, int]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean metrics, per-query MRR@10) of ``run`` on ``qrels``."""
    from hardneg.evaluate import evaluate_run

    res = evaluate_run(run, qrels, METRICS)
    return {k: round(v, 5) for k, v in res.mean.items()}, res.per_query["mrr@10"]


def metrics_by_part(
    run: Run, qrels: Mapping[str, Mapping[str, int]], ids: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """``{"seen": {metric: mean, "n"}, "unseen": {...}}`` of ``run`` (hardneg.generalization.split_ids ``ids``)."""
    from hardneg.evaluate import evaluate_run
    from hardneg.generalization import parts

    res = evaluate_run(run, qrels, ("mrr@10", "ndcg@10"))
    return {k: v for k, v in parts(res.per_query, ids).items() if k != "all"}


def tune_hybrid(
    primary: Run, secondary: Run, dev_qrels: Mapping[str, Mapping[str, int]], weights: Sequence[float], k: int
) -> tuple[float, dict[str, float]]:
    """The weight of ``primary`` in :func:`hardneg.retrieve.fuse_runs` with the best dev MRR@10 (ties: nDCG@10, then
    the smaller weight). Reads only ``dev_qrels``."""
    from hardneg.evaluate import evaluate_run
    from hardneg.retrieve import fuse_runs

    best, best_w, curve = None, float(weights[0]), {}
    for w in weights:
        m = evaluate_run(fuse_runs(primary, secondary, float(w), k), dev_qrels, ("mrr@10", "ndcg@10")).mean
        curve[f"{float(w):g}"] = round(m["mrr@10"], 5)
        key = (round(m["mrr@10"], 10), round(m["ndcg@10"], 10), -float(w))
        if best is None or key > best:
            best, best_w = key, float(w)
    return best_w, curve


def choose_ensemble_weights(
    emb_dir: str | os.PathLike,
    slugs: Sequence[str],
    dev_qrels: Mapping[str, Mapping[str, int]],
    grid: Sequence[float],
    variance: float | None,
    k: int,
) -> tuple[list[float], dict[str, float]]:
    """Ensemble weights by dev MRR@10 of the PCA ensemble's dense run: the first model fixed at 1.0, the others from
    ``grid`` (exhaustive). Reads only ``dev_qrels`` (a test checks that test labels cannot change the choice)."""
    from hardneg.evaluate import evaluate_run
    from hardneg.reduce import fit_projection

    parts = [model_vectors(emb_dir, s) for s in slugs]
    qids = sorted(dev_qrels)
    combos: list[list[float]] = [[1.0]]
    for _ in slugs[1:]:
        combos = [c + [float(g)] for c in combos for g in grid]
    best, best_w, curve = None, combos[0], {}
    for w in combos:
        proj = fit_projection([p[0] for p in parts], w, list(slugs), variance=variance)
        D, Q = proj.transform([p[0] for p in parts]), proj.transform([p[2] for p in parts])
        m = evaluate_run(
            dense_run(D, parts[0][1], Q, parts[0][3], qids, k), dev_qrels, ("mrr@10", "ndcg@10")
        ).mean
        curve["/".join(f"{x:g}" for x in w)] = round(m["mrr@10"], 5)
        key = (round(m["mrr@10"], 10), round(m["ndcg@10"], 10), -sum(w))
        if best is None or key > best:
            best, best_w = key, w
    return best_w, curve


def no_training_systems(
    dataset: Any,
    emb_dir: str | os.PathLike,
    slugs: Sequence[str],
    ensemble_weights: Sequence[float],
    params: Mapping[str, Any],
    qids: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """``{name: {"run": Run, "weight": w | None}}`` for BM25, each model alone, the PCA ensemble and each BM25 + dense
    hybrid (weight chosen on dev). Runs cover ``qids`` (dev + test)."""
    from hardneg.retrieve import bm25_search, fuse_runs

    k = int(params["retrieve"]["top_k"])
    dev_qrels = dataset.split_qrels(params["data"]["dev_split"])
    weights = [float(w) for w in params["evaluate"]["fusion_weights"]]
    variance = params["reduce"]["variance"]
    systems: dict[str, dict[str, Any]] = {
        "bm25": {"run": bm25_search(dataset.corpus, {q: dataset.queries[q] for q in qids}, k), "weight": None}
    }
    dense: dict[str, Run] = {}
    for s in slugs:
        D, dids, Q, qi = model_vectors(emb_dir, s)
        dense[f"dense:{s}"] = dense_run(D, dids, Q, qi, qids, k)
    D, dids, Q, qi = ensemble_vectors(emb_dir, slugs, ensemble_weights, variance)
    dense["dense"] = dense_run(D, dids, Q, qi, qids, k)
    for name, run in dense.items():
        systems[name] = {"run": run, "weight": None}
        w, curve = tune_hybrid(systems["bm25"]["run"], run, dev_qrels, weights, k)
        systems["hybrid" + name[len("dense") :]] = {
            "run": fuse_runs(systems["bm25"]["run"], run, w, k),
            "weight": w,
            "dev_curve": curve,
        }
    return systems
