"""Evaluation: ranking metrics (ranx), reranking and score fusion over a first-stage run, paired significance tests.

Systems evaluated on a split (queries of that split's qrels only):

- **first stage** alone (dense PCA-ensemble run, BM25 run): the run as given;
- **rerank**: the top ``depth`` first-stage candidates re-ordered by the reranker, the rest kept below in first-stage
  order (so Recall@100 stays comparable);
- **fusion**: the top ``depth`` re-ordered by :func:`hardneg.fusion.fuse` (z-normalised reranker and first-stage
  scores, weight ``w``); ``w`` is tuned on dev over ``evaluate.fusion_weights`` and only then applied to test.

Reranker scores are the sigmoid of the 1-logit head, as :mod:`hardneg.rerank` (the served ONNX graph) returns them;
fusion z-normalises them per query, so the score scale must be the same in evaluation and serving.

Per-query values are saved so two runs can be compared with :func:`paired_test`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import FUSION_FILE, METRICS_FILE, Run
from hardneg.errors import HardnegError
from hardneg.fusion import fuse
from hardneg.generalization import parts, split_ids, training_positives
from hardneg.hw import apply_torch_threads
from hardneg.scoring import CrossEncoderScorer, Scorer

log = logging.getLogger(__name__)

METRICS = ("mrr@3", "mrr@10", "ndcg@10", "recall@100")
PER_QUERY_FILE = "per_query.json"


# ------------------------------------------------------------------------------------------------------ metrics


@dataclass
class EvalResult:
    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]  # metric -> {query_id: value}
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "n_queries": self.n_queries}


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = METRICS,
) -> EvalResult:
    """Metrics of ``run`` over every query of ``qrels`` (a query missing from the run scores 0; run queries without
    qrels are ignored). Relevance is the qrels score (graded nDCG); only scores >= 1 count as relevant."""
    import warnings

    from ranx import Qrels as RQrels
    from ranx import Run as RRun
    from ranx import evaluate

    rel = {q: {d: int(s) for d, s in docs.items() if s >= 1} for q, docs in qrels.items()}
    rel = {q: docs for q, docs in rel.items() if docs}
    if not rel:
        raise HardnegError("no relevant documents in the qrels: nothing to evaluate")
    # ranx rejects empty per-query dicts: give queries without candidates a placeholder that is never relevant
    sub = {q: ({d: float(s) for d, s in run[q].items()} if run.get(q) else {"__none__": 0.0}) for q in rel}
    rq, rr = RQrels(rel), RRun(sub)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba type-safety chatter
        means = evaluate(rq, rr, list(metrics), make_comparable=True)
    if not isinstance(means, dict):  # a single metric returns a float
        means = {metrics[0]: means}
    per_query = {m: {q: float(v) for q, v in rr.scores[m].items()} for m in metrics}
    return EvalResult({m: float(v) for m, v in means.items()}, per_query, len(rel))


# ------------------------------------------------------------------------------------------------ run helpers


def ranked(run_q: Mapping[str, float]) -> list[tuple[str, float]]:
    """One query's candidates, best first (ties broken by doc id, so the order is deterministic)."""
    return sorted(run_q.items(), key=lambda kv: (-kv[1], kv[0]))


def top_candidates(
    run: Mapping[str, Mapping[str, float]], depth: int, query_ids: Iterable[str] | None = None
) -> dict[str, list[str]]:
    qids = list(query_ids) if query_ids is not None else list(run)
    return {q: [d for d, _ in ranked(run.get(q, {}))[:depth]] for q in qids}


def combine(
    first_stage: Mapping[str, Mapping[str, float]],
    reranker_scores: Mapping[str, Mapping[str, float]],
    depth: int,
    weight: float | Mapping[str, float] | None = None,
) -> Run:
    """The final ranking: the first ``depth`` first-stage candidates re-ordered by the reranker (``weight=None``) or
    by the fused score (``weight`` in [0, 1], or one weight per query id), followed by the remaining candidates in
    first-stage order. Scores of the returned run are rank-based (n - position), so the re-ordered head always stays
    above the tail."""
    out: Run = {}
    for q, run_q in first_stage.items():
        cands = ranked(run_q)
        head, tail = cands[:depth], cands[depth:]
        rs = reranker_scores.get(q)
        w = weight.get(q) if isinstance(weight, Mapping) else weight
        if isinstance(weight, Mapping) and w is None and head and rs is not None:
            raise HardnegError(f"query {q}: no fusion weight")
        if head and rs is not None:
            missing = [d for d, _ in head if d not in rs]
            if missing:
                raise HardnegError(
                    f"query {q}: no reranker score for {len(missing)} of the top-{depth} candidates"
                )
            r = np.array([rs[d] for d, _ in head], dtype=np.float64)
            f = np.array([s for _, s in head], dtype=np.float64)
            new = r if w is None else fuse(r, f, float(w))
            order = sorted(range(len(head)), key=lambda i: (-new[i], i))  # ties keep the first-stage order
            head = [head[i] for i in order]
        docs = [d for d, _ in head] + [d for d, _ in tail]
        n = len(docs)
        out[q] = {d: float(n - i) for i, d in enumerate(docs)}
    return out


def restrict(run: Mapping[str, Mapping[str, float]], query_ids: Iterable[str]) -> Run:
    return {q: dict(run[q]) for q in query_ids if q in run}


def rerank_scores(
    scorer: Scorer | Callable[[Sequence[tuple[str, str]]], np.ndarray],
    query_texts: Mapping[str, str],
    doc_texts: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, float]]:
    """Reranker scores of each query's candidate documents: ``{qid: {doc_id: score}}``."""
    keys: list[tuple[str, str]] = [(q, d) for q, docs in candidates.items() for d in docs]
    pairs = [(query_texts[q], doc_texts[d]) for q, d in keys]
    fn = scorer.score_pairs if hasattr(scorer, "score_pairs") else scorer
    scores = fn(pairs)
    out: dict[str, dict[str, float]] = {q: {} for q in candidates}
    for (q, d), s in zip(keys, scores, strict=True):
        out[q][d] = float(s)
    return out


def doc_texts_of(dataset: Any) -> dict[str, str]:
    return {d: doc.full_text for d, doc in dataset.corpus.items()}


def query_texts_of(dataset: Any) -> dict[str, str]:
    return {q: qq.text for q, qq in dataset.queries.items()}


# ------------------------------------------------------------------------------------------------------ fusion


def tune_fusion_weight(
    first_stage: Mapping[str, Mapping[str, float]],
    reranker_scores: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    depth: int,
    weights: Sequence[float],
    metric: str = "mrr@10",
) -> tuple[float, dict[str, float]]:
    """The weight with the best ``metric`` on these queries (ties: better nDCG@10, then the smaller weight)."""
    if not weights:
        raise HardnegError("evaluate.fusion_weights is empty")
    curve: dict[str, float] = {}
    best: tuple[float, float, float] | None = None
    best_w = float(weights[0])
    for w in weights:
        res = evaluate_run(combine(first_stage, reranker_scores, depth, float(w)), qrels, (metric, "ndcg@10"))
        curve[f"{float(w):g}"] = res.mean[metric]
        key = (round(res.mean[metric], 10), round(res.mean["ndcg@10"], 10), -float(w))
        if best is None or key > best:
            best, best_w = key, float(w)
    return best_w, curve


def query_signals(
    first_stage: Mapping[str, Mapping[str, float]],
    reranker_scores: Mapping[str, Mapping[str, float]],
    depth: int,
    train_docs: set[str],
) -> dict[str, tuple[list[float], bool]]:
    """Per query: the reranker scores of its top ``depth`` candidates and whether the reranker's best candidate is a
    positive of a training query (what :func:`hardneg.fusion.gate_passes` reads)."""
    out = {}
    for q, run_q in first_stage.items():
        rs = reranker_scores.get(q) or {}
        head = [d for d, _ in ranked(run_q)[:depth] if d in rs]
        scores = [rs[d] for d in head]
        top = head[int(np.argmax(scores))] if scores else None
        out[q] = (scores, top in train_docs)
    return out


def gate_weights(
    gate: Mapping[str, Any], signals: Mapping[str, tuple[list[float], bool]]
) -> dict[str, float]:
    from hardneg.fusion import gated_weight

    return {q: gated_weight(gate, sc, seen) for q, (sc, seen) in signals.items()}


def _group_weight(
    first_stage: Mapping[str, Mapping[str, float]],
    reranker_scores: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    depth: int,
    weights: Sequence[float],
    max_p: float | None,
) -> float:
    """One group's fusion weight (best dev MRR@10 on the group); 0.0 when ``max_p`` is set and that weight's gain
    over 0.0 on the group is not significant (paired randomization p >= ``max_p``)."""
    fs = restrict(first_stage, qrels)
    w, _ = tune_fusion_weight(fs, reranker_scores, qrels, depth, weights)
    if max_p is None or w == 0.0 or 0.0 not in [float(x) for x in weights]:
        return w
    best = evaluate_run(combine(fs, reranker_scores, depth, w), qrels, ("mrr@10",)).per_query["mrr@10"]
    zero = evaluate_run(combine(fs, reranker_scores, depth, 0.0), qrels, ("mrr@10",)).per_query["mrr@10"]
    return w if _significant_gain(paired_test(best, zero, n_resamples=2000), max_p) else 0.0


def _significant_gain(test: Mapping[str, Any], max_p: float) -> bool:
    """A :func:`paired_test` result (a - b) says a is better: positive mean difference, randomization p < max_p."""
    return bool(test["diff"] > 0 and test["p_randomization"] < max_p)


def _first_stage_only(first_stage: Run, scores: Mapping, qrels: Mapping, depth: int) -> dict[str, Any]:
    """The do-nothing gate (weight 0 for every query: the no-training first stage), always a candidate."""
    res = evaluate_run(combine(first_stage, scores, depth, 0.0), qrels, ("mrr@10", "ndcg@10"))
    gate = {"signal": "none", "threshold": None, "weight_high": 0.0, "weight_low": 0.0}
    return {**gate, "passing": 0, "dev": {k: round(v, 5) for k, v in res.mean.items()}}


def _guard(
    tried: list[dict[str, Any]],
    first_stage: Run,
    scores: Mapping,
    qrels: Mapping,
    depth: int,
    sig: Mapping[str, tuple[list[float], bool]],
    guard_ids: Sequence[str],
    min_guard: int,
    max_p: float | None = None,
) -> None:
    """Mark each tried gate ``guard_ok``: its MRR@10 on the guard queries (dev-unseen) is not below the first
    stage's, and, with ``max_p``, a gate that gives the queries it does not pass (where unseen queries land) a weight
    above 0 must beat the first stage on the guard queries significantly (paired randomization p < ``max_p``).
    Always true with fewer than ``min_guard`` guard queries, and for the first stage alone."""
    sub = {q: qrels[q] for q in guard_ids if q in qrels and q in first_stage}
    base = None
    if len(sub) >= min_guard:
        base = evaluate_run(restrict(first_stage, sub), sub, ("mrr@10",)).per_query["mrr@10"]
    for t in tried:
        if base is None or (t["weight_high"] == 0.0 and t["weight_low"] == 0.0):
            t["guard_ok"] = True
            continue
        w = gate_weights(t, {q: sig[q] for q in sub})
        run = combine(restrict(first_stage, sub), scores, depth, w)
        test = paired_test(evaluate_run(run, sub, ("mrr@10",)).per_query["mrr@10"], base, n_resamples=2000)
        t["dev_unseen"] = round(test["mean_a"], 5)
        ok = test["diff"] >= -1e-9
        if ok and max_p is not None and t["weight_low"] > 0.0:  # unseen queries mostly land in the low group
            ok = _significant_gain(test, max_p)
        t["guard_ok"] = bool(ok)


def tune_gate(
    first_stage: Mapping[str, Mapping[str, float]],
    reranker_scores: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    depth: int,
    weights: Sequence[float],
    train_docs: set[str],
    signals_tried: Sequence[str] = ("none", "seen", "margin", "seen-margin"),
    quantiles: Sequence[float] = (0.25, 0.5, 0.75),
    max_p: float | None = None,
    guard_ids: Sequence[str] = (),
    min_guard: int = 30,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The per-query fusion gate with the best MRR@10 on these (dev) queries (ties: better nDCG@10, then the simpler
    signal, in ``signals_tried`` order). For each signal and threshold (margin thresholds: ``quantiles`` of these
    queries' margins) the queries split into those that pass and the rest, and each group gets its own weight, chosen
    on that group alone. ``none`` is one global weight (:func:`tune_fusion_weight`). Do no harm: with ``max_p``, a
    group keeps weight 0 (the first stage alone, the no-training baseline) unless its best weight beats 0 on its dev
    queries with a paired randomization p below ``max_p``. The unseen guard: with at least ``min_guard``
    ``guard_ids`` (the dev queries none of whose relevant documents was a training positive), a gate competes only
    if its MRR@10 there is not below the first stage's; the first stage alone (weight 0 everywhere) always competes.
    Returns the gate and the table of every candidate tried."""
    from hardneg.fusion import gate_passes, top_margin

    sig = query_signals(first_stage, reranker_scores, depth, train_docs)
    margins = sorted(top_margin(sc) for sc, _ in sig.values())
    tried: list[dict[str, Any]] = []
    for signal in signals_tried:
        if signal in ("margin", "seen-margin") and margins:
            thresholds = sorted({round(float(np.quantile(margins, x)), 6) for x in quantiles})
        else:
            thresholds = [None]
        for t in thresholds:
            probe = {"signal": signal, "threshold": t}
            hi = {q for q, (sc, seen) in sig.items() if gate_passes(probe, sc, seen)}
            chosen = {}
            for name, group in (("weight_high", hi), ("weight_low", set(sig) - hi)):
                sub = {q: qrels[q] for q in group if q in qrels}
                if not sub:
                    chosen[name] = None
                    continue
                chosen[name] = _group_weight(first_stage, reranker_scores, sub, depth, weights, max_p)
            if chosen["weight_high"] is None:
                chosen["weight_high"] = chosen["weight_low"]
            if chosen["weight_low"] is None:
                chosen["weight_low"] = chosen["weight_high"]
            gate = {**probe, **chosen}
            res = evaluate_run(
                combine(first_stage, reranker_scores, depth, gate_weights(gate, sig)),
                qrels,
                ("mrr@10", "ndcg@10"),
            )
            tried.append({**gate, "passing": len(hi), "dev": {k: round(v, 5) for k, v in res.mean.items()}})
    tried.append(_first_stage_only(first_stage, reranker_scores, qrels, depth))
    _guard(tried, first_stage, reranker_scores, qrels, depth, sig, guard_ids, min_guard, max_p)
    best = max(
        (i for i in range(len(tried)) if tried[i]["guard_ok"]),
        key=lambda i: (round(tried[i]["dev"]["mrr@10"], 10), round(tried[i]["dev"]["ndcg@10"], 10), -i),
    )
    gate = {k: tried[best][k] for k in ("signal", "threshold", "weight_high", "weight_low")}
    return gate, tried


# -------------------------------------------------------------------------------------------- paired testing


def paired_test(
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    n_resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of two systems' per-query values (same queries): paired t-test (scipy), a two-sided
    sign-flip randomization test and a bootstrap 95% interval of the mean difference (a - b)."""
    from scipy import stats

    common = sorted(set(per_query_a) & set(per_query_b))
    if not common:
        raise HardnegError("paired test: the two runs share no query")
    a = np.array([per_query_a[q] for q in common], dtype=np.float64)
    b = np.array([per_query_b[q] for q in common], dtype=np.float64)
    d = a - b
    n = len(d)
    obs = float(d.mean())
    if np.allclose(d, 0.0):
        p_t, p_rand, t = 1.0, 1.0, 0.0
        lo = hi = 0.0
    else:
        if np.allclose(d, d[0]):  # constant non-zero difference: t is infinite
            t, p_t = math.copysign(math.inf, obs), 0.0
        else:
            res = stats.ttest_rel(a, b)
            t, p_t = float(res.statistic), float(res.pvalue)
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
        perm = np.abs((signs * d).mean(axis=1))
        p_rand = float((np.sum(perm >= abs(obs) - 1e-12) + 1) / (n_resamples + 1))
        boot = d[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
        lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    return {
        "n": n,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": obs,
        "t": float(t),
        "p_ttest": float(p_t),
        "p_randomization": float(p_rand),
        "ci95": [lo, hi],
    }


# ------------------------------------------------------------------------------------------ full evaluation


@dataclass
class RerankEvaluation:
    """Everything measured for one reranker on one dataset: metrics per system and the per-query values."""

    metrics: dict[str, Any]
    per_query: dict[str, dict[str, dict[str, float]]] = field(
        default_factory=dict
    )  # system -> metric -> q -> v
    # sha256 of the training positives' texts: the served gate's "seen" signal (written to fusion.json)
    seen_documents: list[str] = field(default_factory=list)


def _fusion_on_dev(
    metrics: dict[str, Any],
    fs_dev: Run,
    dev_scores: Mapping[str, Mapping[str, float]],
    dev_qrels: Mapping[str, Mapping[str, int]],
    depth: int,
    weights: Sequence[float],
    dev_ids: Mapping[str, Sequence[str]],
    train_docs: set[str],
    chosen: tuple[dict[str, Any], list[dict[str, Any]]],
) -> dict[str, Any]:
    """Record the dev side of the served system in ``metrics``: the one-global-weight curve (diagnostic), the gate
    chosen on dev at this depth (``chosen`` = :func:`tune_gate`'s result) with every gate tried, and the dev metrics
    by part. Returns the gate."""
    weight, dev_curve = tune_fusion_weight(fs_dev, dev_scores, dev_qrels, depth, weights)
    metrics["fusion_dev_curve"] = dev_curve
    gate, tried = chosen
    metrics["fusion_gate"], metrics["fusion_gate_tried"] = gate, tried
    dev_w = gate_weights(gate, query_signals(fs_dev, dev_scores, depth, train_docs))
    runs = {
        "first_stage": fs_dev,
        "rerank": combine(fs_dev, dev_scores, depth),
        "fusion": combine(fs_dev, dev_scores, depth, dev_w),
    }
    results = {name: evaluate_run(run, dev_qrels) for name, run in runs.items()}
    metrics["dev"] = {name: r.mean for name, r in results.items()}
    metrics.setdefault("parts", {})["dev"] = {
        name: parts(r.per_query, dev_ids) for name, r in results.items()
    }
    metrics["fusion_weight"] = weight
    return gate


def _dev_side(
    dataset: Any,
    dev_split: str,
    first_stage: Mapping[str, Run],
    scorer: Any,
    dev_reranker_scores: Mapping[str, Mapping[str, float]] | None,
    depth: int,
) -> tuple[Run, Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, int]]]:
    """(first stage, reranker scores, qrels) of the dev split, where every choice is made."""
    if dev_split not in dataset.qrels:
        raise HardnegError(
            f"no {dev_split} split to choose the fusion weight on (data.dev_split; hardneg.data.load_dataset_for "
            "carves one from train when the folder has none)"
        )
    dev_qrels = dataset.split_qrels(dev_split)
    fs_dev = restrict(first_stage, dev_qrels)
    if dev_reranker_scores is None:
        cand = top_candidates(fs_dev, depth)
        dev_reranker_scores = rerank_scores(scorer, query_texts_of(dataset), doc_texts_of(dataset), cand)
    return fs_dev, dev_reranker_scores, dev_qrels


def seen_document_ids(dataset: Any, train_split: str) -> tuple[set[str], list[str]]:
    """The documents the served gate calls "seen" and the hashes the export ships: every document whose text is the
    text of a training positive (the server recognises documents by text, so evaluation does too). Returns (ids,
    sorted sha256 of the training positives' texts)."""
    from hardneg.fusion import text_sha256

    if train_split not in dataset.qrels:
        return set(), []
    positives = training_positives(dataset, train_split)
    hashes = {text_sha256(dataset.corpus[d].full_text) for d in positives if d in dataset.corpus}
    ids = {d for d, doc in dataset.corpus.items() if text_sha256(doc.full_text) in hashes}
    return ids, sorted(hashes)


def choose_depth(
    dev: tuple[Run, Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, int]]],
    depths: Sequence[int],
    weights: Sequence[float],
    seen_ids: set[str],
    signals: Sequence[str],
    max_p: float | None = None,
    guard_ids: Sequence[str] = (),
) -> tuple[int, tuple[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]:
    """The rerank depth (how many first-stage candidates the reranker reorders) with the best served dev MRR@10,
    each depth with its own dev-chosen gate (ties: better nDCG@10, then the smaller depth). Returns (depth, (gate,
    tried), curve)."""
    fs_dev, dev_scores, dev_qrels = dev
    curve: dict[str, Any] = {}
    best: tuple[tuple[float, float, int], int, Any] | None = None
    for d in sorted(set(int(x) for x in depths)):
        gate, tried = tune_gate(
            fs_dev, dev_scores, dev_qrels, d, weights, seen_ids, signals, max_p=max_p, guard_ids=guard_ids
        )
        row = next(t for t in tried if all(t[k] == gate[k] for k in gate))["dev"]
        curve[str(d)] = {**row, "gate": gate}
        key = (round(row["mrr@10"], 10), round(row["ndcg@10"], 10), -d)
        if best is None or key > best[0]:
            best = (key, d, (gate, tried))
    assert best is not None
    return best[1], best[2], curve


def dev_folds(query_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """``k`` folds of ``query_ids`` for cross-validation on dev: ids in sha256(seed, id) order dealt round robin
    (independent of input order; fold sizes differ by at most one)."""
    from hardneg.generalization import _order

    ordered = sorted(dict.fromkeys(query_ids), key=lambda q: _order(seed, q))
    return [ordered[i::k] for i in range(k)]


def cross_validated_gate(
    dev: tuple[Run, Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, int]]],
    depths: Sequence[int],
    weights: Sequence[float],
    seen_ids: set[str],
    signals: Sequence[str],
    max_p: float | None,
    dev_ids: Mapping[str, Sequence[str]],
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """The served choice measured out of sample (``evaluate.gate_cv_folds``; a report, never a choice). The
    evaluate stage scores its gate, the unseen guard included, on the dev queries it was tuned on; here the whole
    choice (depth, signal, threshold, weights, guards: :func:`choose_depth`) is re-made without each fold's queries
    and scored on them. Returns ``{"folds", "first_stage": parts, "served": parts}`` (MRR@10 / nDCG@10 by part,
    :func:`hardneg.generalization.parts`) or ``{"folds", "skipped": why}``."""
    fs_dev, dev_scores, dev_qrels = dev
    qids = sorted(q for q in fs_dev if q in dev_qrels)
    if folds < 2 or len(qids) < 2 * folds:
        why = (
            "off (evaluate.gate_cv_folds < 2)" if folds < 2 else f"dev has {len(qids)} queries (< 2 x folds)"
        )
        return {"folds": folds, "skipped": why}
    held: Run = {}
    for fold in dev_folds(qids, folds, seed):
        keep = set(fold)
        rest = [q for q in qids if q not in keep]
        sub = {q: dev_qrels[q] for q in rest}
        guard = [q for q in dev_ids.get("unseen", []) if q in sub]
        depth, (gate, _), _ = choose_depth(
            (restrict(fs_dev, rest), dev_scores, sub), depths, weights, seen_ids, signals, max_p, guard
        )
        fold_fs = restrict(fs_dev, fold)
        held.update(
            combine(
                fold_fs,
                dev_scores,
                depth,
                gate_weights(gate, query_signals(fold_fs, dev_scores, depth, seen_ids)),
            )
        )
    metrics = ("mrr@10", "ndcg@10")
    return {
        "folds": folds,
        "first_stage": parts(evaluate_run(fs_dev, dev_qrels, metrics).per_query, dev_ids),
        "served": parts(evaluate_run(held, dev_qrels, metrics).per_query, dev_ids),
    }


def _gate_cv(dev: Any, depths: Sequence[int], seen_ids: set[str], dev_ids: Mapping, s: Any) -> dict[str, Any]:
    ev = s.evaluate
    return cross_validated_gate(
        dev,
        depths,
        ev.fusion_weights,
        seen_ids,
        ev.gate_signals,
        ev.gate_max_p,
        dev_ids,
        ev.gate_cv_folds,
        s.data.dev_seed,
    )


def _served_fusion(
    metrics: dict[str, Any],
    record: Callable[[str, Run], Any],
    dev: tuple[Run, Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, int]]],
    test: tuple[Run, Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, int]]],
    depth: int,
    weights: Sequence[float],
    train_docs: set[str],
    dev_ids: Mapping[str, Sequence[str]],
    chosen: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """The served system: fusion weight and per-query gate chosen on ``dev`` (first stage, reranker scores, qrels),
    applied unchanged to ``test`` (recorded as ``fusion``). ``train_docs``: the documents the gate calls seen;
    ``dev_ids``: dev queries by part (seen / unseen, for the report)."""
    fs_dev, dev_scores, dev_qrels = dev
    fs_test, test_scores, test_qrels = test
    gate = _fusion_on_dev(metrics, fs_dev, dev_scores, dev_qrels, depth, weights, dev_ids, train_docs, chosen)
    test_w = gate_weights(gate, query_signals(fs_test, test_scores, depth, train_docs))
    record("fusion", combine(fs_test, test_scores, depth, test_w))
    if gate["signal"] != "none":  # diagnostic: the one global weight, as before the gate
        record("fusion_global", combine(fs_test, test_scores, depth, metrics["fusion_weight"]))
    # diagnostic only (never used for selection): the test curve over all weights
    metrics["fusion_test_curve"] = {
        f"{w:g}": evaluate_run(combine(fs_test, test_scores, depth, w), test_qrels, ("mrr@10",)).mean[
            "mrr@10"
        ]
        for w in weights
    }


def tuned_alone_run(scorer: Any, dataset: Any, query_ids: Sequence[str], k: int) -> Run | None:
    """The tuned model by itself, retrieving from the whole corpus (its query tower against every document's vector:
    a bi-encoder scorer only), top ``k`` per query; ``None`` for a scorer that cannot (a cross-encoder, ONNX)."""
    if not hasattr(scorer, "query_matrix"):
        return None
    from hardneg.retrieve import dense_run

    doc_ids, qids = list(dataset.corpus), list(query_ids)
    D = scorer.document_matrix([dataset.corpus[d].full_text for d in doc_ids])
    Q = scorer.query_matrix([dataset.queries[q].text for q in qids])
    return dense_run(D, doc_ids, Q, qids, qids, k)


def _record_alone(
    metrics: dict[str, Any],
    record: Callable[[str, Run], Any],
    dataset: Any,
    scorer: Any,
    test_qrels: Mapping[str, Mapping[str, int]],
    dev_qrels: Mapping[str, Mapping[str, int]],
    dev_ids: Mapping[str, Sequence[str]],
    k: int,
) -> None:
    """Record ``alone`` (:func:`tuned_alone_run`; a diagnostic, never served) on test and, by part, on dev."""
    run = tuned_alone_run(scorer, dataset, sorted(set(test_qrels) | set(dev_qrels)), k)
    if run is None:
        return
    record("alone", restrict(run, test_qrels))
    res = evaluate_run(restrict(run, dev_qrels), dev_qrels)
    metrics.setdefault("dev", {})["alone"] = res.mean
    metrics.setdefault("parts", {}).setdefault("dev", {})["alone"] = parts(res.per_query, dev_ids)


def _timed_scores(scorer: Any, dataset: Any, fs_test: Run, depth: int, metrics: dict[str, Any]) -> dict:
    """The reranker's scores of the test queries' top ``depth`` candidates (time and pair count in ``metrics``)."""
    t0 = time.time()
    cand = top_candidates(fs_test, depth)
    scores = rerank_scores(scorer, query_texts_of(dataset), doc_texts_of(dataset), cand)
    metrics["rerank_seconds_test"] = round(time.time() - t0, 1)
    metrics["rerank_pairs_test"] = sum(len(v) for v in cand.values())
    return scores


def evaluate_reranker(
    dataset: Any,
    scorer: Scorer | None,
    first_stage: Mapping[str, Run],
    params: Mapping[str, Any],
    *,
    test_split: str | None = None,
    dev_split: str | None = None,
    extra_first_stages: Mapping[str, Run] | None = None,
    depth: int | None = None,
    dev_reranker_scores: Mapping[str, Mapping[str, float]] | None = None,
) -> RerankEvaluation:
    """Evaluate first stage, reranking and fusion.

    ``first_stage`` is the run the reranker rescores (``{qid: {doc: score}}``, covering dev and test queries);
    ``extra_first_stages`` are other first-stage runs reported alone (e.g. ``{"bm25": run}``). With ``scorer=None``
    only first stages are evaluated. The rerank depth (``evaluate.rerank_depths``; ``depth`` fixes it), the fusion
    weight and the per-query gate are chosen on ``dev_split`` and applied unchanged on test.
    """
    from hardneg.settings import settings

    s = settings(params)
    test_split, dev_split = test_split or s.data.test_split, dev_split or s.data.dev_split
    depths = [int(depth)] if depth else list(s.evaluate.rerank_depths or [s.retrieve.rerank_depth])
    depths = [d for d in depths if d <= s.retrieve.top_k] or [min(max(depths), s.retrieve.top_k)]  # no deeper
    ev, weights = s.evaluate, s.evaluate.fusion_weights
    test_qrels = dataset.split_qrels(test_split)
    train_split = s.data.train_split
    train_docs = training_positives(dataset, train_split) if train_split in dataset.qrels else set()
    test_ids = split_ids(test_qrels, train_docs)
    metrics: dict[str, Any] = {
        "split": test_split,
        "dev_split": dev_split,
        "n_queries": len(test_qrels),
        "systems": {},
        # seen: a relevant document of the query is a positive of a training query (hardneg.generalization)
        "seen_unseen": {"train_split": train_split, "train_positive_documents": len(train_docs)},
        "parts": {"test": {}},
    }
    per_query: dict[str, dict[str, dict[str, float]]] = {}

    def record(name: str, run: Run) -> EvalResult:
        res = evaluate_run(run, test_qrels)
        metrics["systems"][name] = res.mean
        metrics["parts"]["test"][name] = parts(res.per_query, test_ids)
        per_query[name] = res.per_query
        return res

    if scorer is not None and isinstance(
        scorer, CrossEncoderScorer
    ):  # 1 thread: faster on a shared 2-core box
        apply_torch_threads(params)
    fs_test = restrict(first_stage, test_qrels)
    record("first_stage", fs_test)
    for name, run in (extra_first_stages or {}).items():
        record(name, restrict(run, test_qrels))
    if scorer is None:
        return RerankEvaluation(metrics, per_query)

    test_scores = _timed_scores(scorer, dataset, fs_test, max(depths), metrics)
    if not ev.fusion:
        metrics["rerank_depth"] = depths[0]
        record("rerank", combine(fs_test, test_scores, depths[0]))
        return RerankEvaluation(metrics, per_query)
    dev = _dev_side(dataset, dev_split, first_stage, scorer, dev_reranker_scores, max(depths))
    seen_ids, seen_hashes = seen_document_ids(dataset, train_split)
    dev_ids = split_ids(dev[2], train_docs)
    chosen_depth, chosen, metrics["depth_dev_curve"] = choose_depth(
        dev, depths, weights, seen_ids, ev.gate_signals, ev.gate_max_p, dev_ids["unseen"]
    )
    metrics["rerank_depth"] = chosen_depth
    metrics["gate_cv"] = _gate_cv(dev, depths, seen_ids, dev_ids, s)
    record("rerank", combine(fs_test, test_scores, chosen_depth))
    test = (fs_test, test_scores, test_qrels)
    _served_fusion(metrics, record, dev, test, chosen_depth, weights, seen_ids, dev_ids, chosen)
    _record_alone(metrics, record, dataset, scorer, test_qrels, dev[2], dev_ids, s.retrieve.top_k)
    seen = seen_hashes if "seen" in metrics["fusion_gate"]["signal"] else []
    return RerankEvaluation(metrics, per_query, seen)


def write_evaluation(ev: RerankEvaluation, out_dir: str | os.PathLike, lineage: Any = None) -> Path:
    """Write ``metrics.json`` + ``per_query.json`` under ``out_dir`` and, when a fusion was chosen, ``fusion.json``
    (weight, gate, depth, the training positives' hashes for the gate): what export serves (it takes this folder as
    an input). Nothing is written anywhere else."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / METRICS_FILE, ev.metrics)
    _write_json(out / PER_QUERY_FILE, ev.per_query)
    if lineage is not None:
        from hardneg.lineage import write_lineage

        write_lineage(out, lineage)
    if "fusion_weight" in ev.metrics:
        _write_json(
            out / FUSION_FILE,
            {
                "weight": ev.metrics["fusion_weight"],
                "first_stage": ev.metrics.get("first_stage_name", "dense"),
                "depth": ev.metrics["rerank_depth"],
                "score": ev.metrics.get("score", "sigmoid"),
                "first_stage_bm25_weight": ev.metrics.get("first_stage_bm25_weight"),
                "gate": ev.metrics.get("fusion_gate"),
                **({"seen_documents_sha256": ev.seen_documents} if ev.seen_documents else {}),
            },
        )
    return out / METRICS_FILE


def _write_json(path: Path, obj: Any) -> None:
    from hardneg.artifacts import atomic_write_json

    atomic_write_json(path, obj, sort_keys=True)


def load_run(path: str | os.PathLike) -> Run:
    from hardneg.artifacts import read_run

    return read_run(path)


def load_per_query(
    path: str | os.PathLike, system: str = "fusion", metric: str = "mrr@10"
) -> dict[str, float]:
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if system not in obj:
        raise HardnegError(f"{path}: no system '{system}' (have {sorted(obj)})")
    return obj[system][metric]


def first_stage_runs(
    dataset: Any,
    reduced_dir: str | os.PathLike,
    params: Mapping[str, Any],
    splits: Sequence[str] | None = None,
    bm25: bool = True,
) -> dict[str, Run]:
    """The dense run (exact search over the ``hardneg reduce`` vectors) and the BM25 run for the queries of
    ``splits`` (default: dev and test), ``retrieve.top_k`` candidates each: ``{"dense": run, "bm25": run}``."""
    from hardneg.reduce import load_reduced
    from hardneg.retrieve import bm25_search, dense_run
    from hardneg.settings import section

    d = section(params, "data")
    splits = list(splits or [d.dev_split, d.test_split])
    qids = [q for s in splits if s in dataset.qrels for q in dataset.split_qrels(s)]
    D, doc_ids, Q, query_ids = load_reduced(reduced_dir)
    qi = {q: i for i, q in enumerate(query_ids)}
    missing = [q for q in qids if q not in qi]
    if missing:
        raise HardnegError(
            f"{len(missing)} queries of {splits} have no vector in {reduced_dir}: rerun `hardneg embed` and `hardneg reduce`"
        )
    k = int(params["retrieve"]["top_k"])
    runs = {"dense": dense_run(D, doc_ids, Q, query_ids, qids, k)}
    if bm25:
        runs["bm25"] = bm25_search(dataset.corpus, {q: dataset.queries[q] for q in qids}, k)
    return runs
