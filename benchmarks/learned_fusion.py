"""Would a learned per-query fusion serve better than the evaluate stage's gated fusion? (#16, item 5)

    python benchmarks/learned_fusion.py [--seeds 13,14,15] [--datasets scifact]

Two learned fusions, each beside the systems `make run` ships, all / seen / unseen:

``dev_fusion``: a logistic regression over what the server sees for each of the first stage's top-``depth``
candidates (the depth the evaluate stage chose on dev): the first-stage score and the tuned model's cosine (z-scored
per query), both ranks, whether the candidate is a training positive, and the tuned model's own per-query signals
(is its best candidate a training positive, its top margin) times its score. It is fitted on dev labels, the only
labels a choice may read; its regularisation C is chosen by 5-fold cross-validation on dev under the rule the
evaluate stage's gate follows (best cross-validated dev MRR@10 among the C whose cross-validated dev-unseen MRR@10 is
not below the first stage's there). The gate is cross-validated on the same folds, so the two compare on dev like
for like; test is read once per seed, after the choice.

``train_fusion`` (once per collection, no tuned model): a logistic regression over untrained signals only (BM25 on
the whole document, BM25 on the title, the base dense score: z-scores, ranks, presence, per-query top gaps, query
length) fitted on the *training* labels, which these signals never saw. It asks whether a fusion learned from labels
beats the dev-weighted hybrid without any document-specific knowledge.

Writes ``benchmarks/results/learned_fusion.json`` (resumable per seed). Reads nothing of test but the final scoring.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _offline import ROOT  # offline, quiet, this checkout importable

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "learned_fusion.json"
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)
CV_FOLDS = 5

import numpy as np  # noqa: E402


def _z(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, np.float64)
    sd = a.std()
    return (a - a.mean()) / (sd if sd > 1e-9 else 1.0)


def _inv_rank(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores))
    rank[order] = np.arange(len(scores))
    return 1.0 / (rank + 2.0)


def served_features(
    head: Sequence[tuple[str, float]], tuned: Mapping[str, float], seen_ids: set[str]
) -> np.ndarray:
    """Per candidate of the first stage's head (``[(doc, first-stage score)]``, best first): what the server has."""
    fs = np.array([s for _, s in head], np.float64)
    t = np.array([tuned[d] for d, _ in head], np.float64)
    tp = np.array([1.0 if d in seen_ids else 0.0 for d, _ in head])
    best = int(np.argmax(t))
    top_seen = float(head[best][0] in seen_ids)
    margin = float(t[best] - np.partition(t, -2)[-2]) if len(t) > 1 else 0.0
    zt = _z(t)
    cols = [_z(fs), zt, _inv_rank(fs), _inv_rank(t), tp, zt * top_seen, zt * margin * 10.0, tp * top_seen]
    return np.stack(cols, 1)


def _labels(docs: Sequence[str], rel: Mapping[str, int]) -> np.ndarray:
    return np.array([1 if rel.get(d, 0) >= 1 else 0 for d in docs])


def _fit(X: list[np.ndarray], y: list[np.ndarray], C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(
        np.concatenate(X), np.concatenate(y)
    )


def _learned_run(
    first_stage: Mapping[str, Mapping[str, float]], depth: int, model: Any, feats: Mapping
) -> dict:
    """The head re-ordered by the model's score, the tail in first-stage order (rank-based scores, like
    :func:`hardneg.evaluate.combine`)."""
    from hardneg.evaluate import ranked

    out = {}
    for q, run_q in first_stage.items():
        cands = ranked(run_q)
        head, tail = cands[:depth], cands[depth:]
        s = model.decision_function(feats[q])
        order = sorted(range(len(head)), key=lambda i: (-s[i], i))
        docs = [head[i][0] for i in order] + [d for d, _ in tail]
        out[q] = {d: float(len(docs) - i) for i, d in enumerate(docs)}
    return out


def _parts(run: Mapping, qrels: Mapping, ids: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    from hardneg.evaluate import evaluate_run
    from hardneg.generalization import parts

    return parts(evaluate_run(run, qrels, ("mrr@10", "ndcg@10")).per_query, ids)


def _cv_folds(qids: Sequence[str], seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    perm = [qids[i] for i in rng.permutation(len(qids))]
    return [list(f) for f in np.array_split(np.array(perm, dtype=object), CV_FOLDS)]


# long: one seed end to end (train, the evaluate stage, cross-validation of gate and learned fusion on dev, test)
def one_seed(ds: Any, red: Path, params: dict, rows: Any, seed: int, work: Path) -> dict[str, Any]:
    from hardneg.biencoder import BiEncoderConfig, document_vectors, load_biencoder, train_biencoder
    from hardneg.evaluate import (
        combine,
        doc_texts_of,
        evaluate_reranker,
        gate_weights,
        query_signals,
        query_texts_of,
        ranked,
        rerank_scores,
        restrict,
        seen_document_ids,
        top_candidates,
        tune_gate,
    )
    from hardneg.experiment import _bi_scorer
    from hardneg.first_stage import compute
    from hardneg.generalization import split_ids, training_positives
    from hardneg.settings import section, settings

    t0 = time.perf_counter()
    p = copy.deepcopy(params)
    p["train"]["seed"] = seed
    s = settings(p)
    d = section(p, "data")
    run, _ = compute(ds, red, p, [d.dev_split, d.test_split])
    cfg = BiEncoderConfig.from_params(p)
    fixed = document_vectors(ds, cfg, section(p, "embed").cache_dir) if cfg.tune == "query" else None
    mdir = work / f"model-{seed}"
    train_biencoder(ds, rows, mdir, cfg, train_split=d.train_split, doc_vectors=fixed)
    scorer = _bi_scorer(load_biencoder(mdir, cfg.max_length), cfg, fixed, ds)
    ev = evaluate_reranker(ds, scorer, run, p)
    depth = int(ev.metrics["rerank_depth"])
    train_docs = training_positives(ds, d.train_split)
    seen_ids, _ = seen_document_ids(ds, d.train_split)
    qrels = {sp: ds.split_qrels(sp) for sp in (d.dev_split, d.test_split)}
    ids = {sp: split_ids(qrels[sp], train_docs) for sp in qrels}
    fs = {sp: restrict(run, qrels[sp]) for sp in qrels}
    qt, dt = query_texts_of(ds), doc_texts_of(ds)
    tuned = {sp: rerank_scores(scorer, qt, dt, top_candidates(fs[sp], depth)) for sp in qrels}
    feats = {
        sp: {q: served_features(ranked(fs[sp][q])[:depth], tuned[sp][q], seen_ids) for q in fs[sp]}
        for sp in qrels
    }
    dev, test = d.dev_split, d.test_split
    dev_q = sorted(fs[dev])
    folds = _cv_folds(dev_q, seed)

    def labels(sp: str, q: str) -> np.ndarray:
        return _labels([doc for doc, _ in ranked(fs[sp][q])[:depth]], qrels[sp][q])

    def gate_on(train_q: Sequence[str]) -> dict[str, Any]:
        sub = {q: qrels[dev][q] for q in train_q}
        guard = [q for q in ids[dev]["unseen"] if q in sub]
        gate, _ = tune_gate(
            restrict(fs[dev], train_q), tuned[dev], sub, depth, s.evaluate.fusion_weights, seen_ids,
            s.evaluate.gate_signals, max_p=s.evaluate.gate_max_p, guard_ids=guard,
        )  # fmt: skip
        return gate

    cv_gate: dict[str, dict[str, float]] = {}
    cv_fusion: dict[float, dict[str, dict[str, float]]] = {c: {} for c in C_GRID}
    for f in folds:
        rest = [q for q in dev_q if q not in set(f)]
        held = restrict(fs[dev], f)
        gate = gate_on(rest)
        cv_gate.update(
            combine(
                held, tuned[dev], depth, gate_weights(gate, query_signals(held, tuned[dev], depth, seen_ids))
            )
        )
        for c in C_GRID:
            model = _fit([feats[dev][q] for q in rest], [labels(dev, q) for q in rest], c)
            cv_fusion[c].update(_learned_run(held, depth, model, feats[dev]))
    fs_dev = _parts(fs[dev], qrels[dev], ids[dev])
    curve = {f"{c:g}": _parts(cv_fusion[c], qrels[dev], ids[dev]) for c in C_GRID}
    floor = fs_dev["unseen"].get("mrr@10")
    ok = [c for c in C_GRID if floor is None or curve[f"{c:g}"]["unseen"]["mrr@10"] >= floor]
    chosen = max(ok, key=lambda c: (curve[f"{c:g}"]["all"]["mrr@10"], -c)) if ok else None
    out: dict[str, Any] = {
        "seed": seed,
        "depth": depth,
        "gate": ev.metrics.get("fusion_gate"),
        "chosen_C": chosen,
        "dev_cv": {"first_stage": fs_dev, "gate": _parts(cv_gate, qrels[dev], ids[dev]), "dev_fusion": curve},
        "test": {
            "first_stage": ev.metrics["parts"]["test"]["first_stage"],
            "served_gate": ev.metrics["parts"]["test"]["fusion"],
            "tuned_alone": ev.metrics["parts"]["test"]["rerank"],
        },
    }
    if chosen is not None:
        model = _fit([feats[dev][q] for q in dev_q], [labels(dev, q) for q in dev_q], chosen)
        out["coef"] = [round(float(x), 4) for x in model.coef_[0]]
        out["test"]["dev_fusion"] = _parts(
            _learned_run(fs[test], depth, model, feats[test]), qrels[test], ids[test]
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# long: the untrained-signal fusion fitted on training labels, beside the dev-weighted hybrid, in one pass
def train_fusion(ds: Any, red: Path, params: dict) -> dict[str, Any]:
    from hardneg.baselines import tune_hybrid
    from hardneg.evaluate import first_stage_runs
    from hardneg.generalization import split_ids, training_positives
    from hardneg.retrieve import bm25_search, fuse_runs
    from hardneg.settings import section

    d = section(params, "data")
    sp = [d.train_split, d.dev_split, d.test_split]
    runs = first_stage_runs(ds, red, params, splits=sp)
    k = int(params["retrieve"]["top_k"])
    qids = [q for s in sp for q in ds.split_qrels(s)]
    titles = {doc_id: (doc.title or doc.text) for doc_id, doc in ds.corpus.items()}
    runs["bm25_title"] = bm25_search(titles, {q: ds.queries[q] for q in qids}, k)
    qrels = {s: ds.split_qrels(s) for s in sp}
    train_docs = training_positives(ds, d.train_split)
    ids = {s: split_ids(qrels[s], train_docs) for s in sp[1:]}
    w, _ = tune_hybrid(
        runs["bm25"], runs["dense"], qrels[d.dev_split], params["evaluate"]["fusion_weights"], k
    )
    hybrid = fuse_runs(runs["bm25"], runs["dense"], w, k)
    names = ("bm25", "dense", "bm25_title")

    def feats(q: str) -> tuple[list[str], np.ndarray]:
        cands = sorted(set().union(*[runs[n].get(q, {}) for n in names]))
        cols = []
        for n in names:
            r = runs[n].get(q, {})
            low = min(r.values()) if r else 0.0
            raw = np.array([r.get(doc, low) for doc in cands])
            vals = sorted(r.values(), reverse=True) + [0.0, 0.0]
            gap = (vals[0] - vals[1]) / (float(np.std(list(r.values()))) + 1e-9) if r else 0.0
            present = np.array([1.0 if doc in r else 0.0 for doc in cands])
            cols += [_z(raw), _inv_rank(np.where(present > 0, raw, -np.inf)) * present, present]
            cols.append(np.full(len(cands), gap))
        qlen = np.log1p(len(ds.queries[q].text.split()))
        X = np.stack(cols, 1)
        return cands, np.concatenate([X, X[:, [0, 4, 8]] * qlen, np.full((len(cands), 1), qlen)], 1)

    F = {q: feats(q) for q in qids}
    tr = sorted(qrels[d.train_split])
    X = [F[q][1] for q in tr]
    y = [_labels(F[q][0], qrels[d.train_split][q]) for q in tr]
    out: dict[str, Any] = {"bm25_weight": w, "train_queries": len(tr), "systems": {}}
    for s in sp[1:]:
        out["systems"].setdefault("hybrid", {})[s] = _parts(hybrid, qrels[s], ids[s])
    for c in C_GRID:
        model = _fit(X, y, c)
        for s in sp[1:]:
            run = {}
            for q in qrels[s]:
                cands, Xq = F[q]
                sc = model.decision_function(Xq)
                run[q] = {cands[i]: float(sc[i]) for i in np.argsort(-sc)[:k]}
            out["systems"].setdefault(f"C={c:g}", {})[s] = _parts(run, qrels[s], ids[s])
    dev = d.dev_split
    best = max(C_GRID, key=lambda c: out["systems"][f"C={c:g}"][dev]["all"]["mrr@10"])
    out["chosen_C"] = best  # on dev, read test once after
    return out


def _mean(rows: list[dict], path: Sequence[str]) -> float | None:
    vals = []
    for r in rows:
        x: Any = r
        for key in path:
            x = x.get(key) if isinstance(x, dict) else None
        if isinstance(x, (int, float)):
            vals.append(float(x))
    return round(sum(vals) / len(vals), 5) if vals and len(vals) == len(rows) else None


def summarise(entry: dict) -> None:
    """Seed means: dev (cross-validated) for the first stage, the gate and every C; test for the first stage, the
    served gate, the tuned model alone and ``rule`` (the learned fusion where the rule chose a C, else the gate: what
    would be served under the rule)."""
    rows = entry["seeds"]
    parts = ("all", "seen", "unseen")
    mean: dict[str, Any] = {"dev_cv": {}, "test": {}}
    for system in ("first_stage", "gate"):
        mean["dev_cv"][system] = {p: _mean(rows, ("dev_cv", system, p, "mrr@10")) for p in parts}
    for c in C_GRID:
        mean["dev_cv"][f"C={c:g}"] = {
            p: _mean(rows, ("dev_cv", "dev_fusion", f"{c:g}", p, "mrr@10")) for p in parts
        }
    for r in rows:
        r["test"]["rule"] = r["test"]["dev_fusion" if r.get("chosen_C") is not None else "served_gate"]
    for system in ("first_stage", "served_gate", "tuned_alone", "rule"):
        mean["test"][system] = {p: _mean(rows, ("test", system, p, "mrr@10")) for p in parts}
    mean["seeds_choosing_the_learned_fusion"] = sum(1 for r in rows if r.get("chosen_C") is not None)
    entry["mean"] = mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="13,14,15")
    ap.add_argument("--datasets", default="scifact")
    ap.add_argument("--nfcorpus", default=str(ROOT.parent / "shared" / "data" / "nfcorpus"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "generalization"))
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import yaml
    from generalization import _prepare

    from hardneg.data import prepare_splits
    from hardneg.hw import cpu_info
    from hardneg.lineage import BENCHMARK_OUTPUTS, git_commit

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    state = json.loads(OUT.read_text()) if OUT.exists() and not args.fresh else {}
    commit = git_commit(ROOT, ignore=BENCHMARK_OUTPUTS)
    state.update(commit=commit, cpu=cpu_info(), c_grid=list(C_GRID), cv_folds=CV_FOLDS)
    state.setdefault("datasets", {})
    for name in args.datasets.split(","):
        data_dir = ROOT / params["data"]["dir"] if name == "scifact" else Path(args.nfcorpus)
        ds0, red = _prepare(name, data_dir, params, Path(args.work))
        ds, _ = prepare_splits(ds0, params)
        entry = state["datasets"].setdefault(name, {"seeds": []})
        if "train_fusion" not in entry:
            entry["train_fusion"] = train_fusion(ds, red, params)
            OUT.write_text(json.dumps(state, indent=1) + "\n")
            logging.info("%s train_fusion: %s", name, json.dumps(entry["train_fusion"]["systems"]["hybrid"]))
        from hardneg.experiment import _mine

        work = Path(args.work) / name / "learned_fusion"
        work.mkdir(parents=True, exist_ok=True)
        rows = None
        for seed in [int(x) for x in args.seeds.split(",")]:
            if any(r["seed"] == seed for r in entry["seeds"]):
                continue
            rows = rows if rows is not None else _mine(ds, red, params, work)
            r = one_seed(ds, red, params, rows, seed, work)
            r["commit"] = commit
            entry["seeds"] = sorted([*entry["seeds"], r], key=lambda x: x["seed"])
            summarise(entry)
            OUT.write_text(json.dumps(state, indent=1) + "\n")
            logging.info("%s seed %d: %s", name, seed, json.dumps(r["test"]))
    print(json.dumps({n: e.get("mean") for n, e in state["datasets"].items()}, indent=1))


if __name__ == "__main__":
    main()
