"""The quality study: does the reranker earn its place, and is it because of the mined negatives?

This module runs it (arms x seeds, resumable); :mod:`hardneg.baselines` has the no-training systems and
:mod:`hardneg.study_report` the summary, significance, HTML report and README table.

One command (``benchmarks/quality.py`` / ``hardneg compare``), resumable, writes ``quality.json`` (the report contract),
``quality_per_query.json`` and ``quality_report.html``. Protocol (also in README "Reranker quality"):

1. Splits: dev is topped up from train to ``data.dev_min_queries`` (seeded, :func:`hardneg.data.top_up_dev_split`); every choice below
   is made on dev; test is read once per configuration, at the end.
2. No-training systems: BM25, each embedding model alone, the PCA ensemble, and BM25 fused with each dense system
   (weight chosen on dev). The ensemble weights are chosen on dev too (:func:`choose_ensemble_weights`). The best of
   all of them on dev is ``no_training_hybrid``: the baseline the served system must beat.
3. Arms: the bi-encoder fine-tuned for the same number of steps with the same batch, differing only in the negatives:
   ``in-batch`` (none mined), ``random``, ``bm25``, ``st-default`` (sentence-transformers ``mine_hard_negatives``
   defaults), ``positive-aware`` (NV-Retriever TopK-PercPos 95%), ``paper`` (arXiv 2505.18366 on the PCA ensemble,
   primary negative; queries without a qualifying negative still train on in-batch negatives), ``paper-drop`` (the
   paper's triplet setup: those queries are dropped), ``hybrid``; ablations of the paper's rule on other vectors:
   ``paper-single-model`` (the best single model on dev), ``paper-pca80``, ``paper-no-pca``. ``untuned`` is the
   base model without training. Each arm runs every seed.
4. Per arm and seed: the tuned model alone (dense retrieval over the whole corpus) and the served system (the model's
   cosine fused with the pipeline's first stage over its top ``retrieve.rerank_depth``, weight chosen on dev), on dev
   and test. Significance: per-seed paired randomization tests and one over queries of the seed-averaged values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import Run, read_json
from hardneg.baselines import (
    choose_ensemble_weights,
    ensemble_vectors,
    metrics_by_part,
    metrics_of,
    model_vectors,
    no_training_systems,
)
from hardneg.errors import ConfigError
from hardneg.retrieve import dense_run
from hardneg.study_report import report_html, summarize

log = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
PER_QUERY_JSON = "quality_per_query.json"
REPORT_HTML = "quality_report.html"
ARMS = (
    "untuned",
    "in-batch",
    "random",
    "bm25",
    "st-default",
    "positive-aware",
    "paper",
    "paper-drop",
    "hybrid",
    "paper-single-model",
    "paper-pca80",
    "paper-no-pca",
)


# ------------------------------------------------------------------------------------------------------- arms


def arm_negatives(
    arm: str,
    dataset: Any,
    params: Mapping[str, Any],
    vectors: Mapping[str, tuple[np.ndarray, list[str], np.ndarray, list[str]]],
    bm25_train: Run | None,
    emb_dir: Path,
    work: Path,
) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """The mined negatives of one arm (``None`` for in-batch), mined on the train split only."""
    from hardneg.mine import mine_negatives

    split = params["data"]["train_split"]
    pool = int(params["compare"]["num_negatives"])
    if arm in ("untuned", "in-batch"):
        return None, {}
    if arm == "st-default":
        from hardneg.anchors import st_negatives

        return st_negatives(
            dataset,
            split,
            params,
            emb_dir,
            work / "st-cache",
            relative_margin=None,
            num_negatives=pool,
            strategy=arm,
        )
    policy = "paper" if arm.startswith("paper") else arm
    space = {"paper-single-model": "single", "paper-pca80": "pca80", "paper-no-pca": "no-pca"}.get(
        arm, "ensemble"
    )
    D, doc_ids, Q, query_ids = vectors[space]
    rows, stats = mine_negatives(
        dataset,
        D,
        doc_ids,
        Q,
        query_ids,
        split,
        params,
        bm25_run=bm25_train,
        policy=policy,
        num_negatives=pool,
    )
    stats = {
        k: stats[k]
        for k in ("pairs", "pairs_with_negatives", "queries_without_negative", "rejected")
        if k in stats
    }
    stats["space"] = space
    return rows, stats


def evaluate_model(
    model: Any,
    dataset: Any,
    first_stage: Run,
    qrels: Mapping[str, Mapping[str, Mapping[str, int]]],
    params: Mapping[str, Any],
    doc_vectors: tuple[np.ndarray, Sequence[str]] | None = None,
    ids: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """The tuned model ``alone`` (dense retrieval over the whole corpus), ``rerank`` (reranking the first stage's top
    ``rerank_depth`` alone) and ``served`` (fused with ``first_stage`` over those, weight chosen on dev), on dev and
    test: metrics and per-query MRR@10; with ``ids`` (split -> hardneg.generalization.split_ids) also
    ``<split>_seen`` / ``<split>_unseen``. ``doc_vectors``: the fixed document vectors of ``tune: query`` (else the
    model embeds the corpus)."""
    from hardneg.biencoder import encode
    from hardneg.evaluate import (
        combine,
        gate_weights,
        query_signals,
        restrict,
        seen_document_ids,
        top_candidates,
        tune_fusion_weight,
        tune_gate,
    )

    train_docs, _ = seen_document_ids(dataset, params["data"]["train_split"])

    depth = int(params["retrieve"]["rerank_depth"])
    k = int(params["retrieve"]["top_k"])
    if doc_vectors is not None:
        D, doc_ids = np.asarray(doc_vectors[0], np.float32), list(doc_vectors[1])
    else:
        doc_ids = list(dataset.corpus)
        D = encode(model, [dataset.corpus[d].full_text for d in doc_ids])
    qids = sorted(set(qrels["dev"]) | set(qrels["test"]))
    Q = encode(model, [dataset.queries[q].text for q in qids])
    alone = dense_run(D, doc_ids, Q, qids, qids, k)
    di, qi = {d: i for i, d in enumerate(doc_ids)}, {q: i for i, q in enumerate(qids)}
    cand = top_candidates(first_stage, depth, qids)
    scores = {q: {d: float(Q[qi[q]] @ D[di[d]]) for d in docs} for q, docs in cand.items()}
    weights = [float(w) for w in params["evaluate"]["fusion_weights"]]
    fs_dev = restrict(first_stage, qrels["dev"])
    w, curve = tune_fusion_weight(fs_dev, scores, qrels["dev"], depth, weights)
    # the served system's per-query gate, chosen on dev as the evaluate stage chooses it
    signals = list(params["evaluate"]["gate_signals"])
    max_p = params["evaluate"].get("gate_max_p")
    dev_unseen = ids["dev"]["unseen"] if ids is not None else ()  # the unseen guard's queries
    gate, _ = tune_gate(
        fs_dev, scores, qrels["dev"], depth, weights, train_docs, signals, max_p=max_p, guard_ids=dev_unseen
    )
    out: dict[str, Any] = {"fusion_weight": w, "fusion_dev_curve": curve, "fusion_gate": gate}
    for split in ("dev", "test"):
        fs = restrict(first_stage, qrels[split])
        served_w = gate_weights(gate, query_signals(fs, scores, depth, train_docs))
        for name, run in (
            ("alone", restrict(alone, qrels[split])),
            ("rerank", combine(fs, scores, depth)),
            ("served", combine(fs, scores, depth, served_w)),
        ):
            mean, pq = metrics_of(run, qrels[split])
            out.setdefault(name, {})[split] = mean
            if ids is not None:
                for part, row in metrics_by_part(run, qrels[split], ids[split]).items():
                    out[name][f"{split}_{part}"] = row
            out.setdefault("per_query", {}).setdefault(name, {})[split] = pq
    return out


# --------------------------------------------------------------------------------------------------- the study


def study_config(
    params: Mapping[str, Any], arms: Sequence[str] | None, seeds: Sequence[int] | None
) -> dict[str, Any]:
    c = dict(params["compare"])
    cfg = {
        "arms": list(arms or c["arms"]),
        "seeds": [int(s) for s in (seeds or c["seeds"])],
        "max_steps": int(c.get("max_steps") or params["train"]["max_steps"]),
        "num_negatives": int(c["num_negatives"]),
        "ensemble_weight_grid": [float(x) for x in c["ensemble_weight_grid"]],
    }
    unknown = sorted(set(cfg["arms"]) - set(ARMS))
    if unknown:
        raise ConfigError(f"unknown compare arm(s) {unknown}; known: {list(ARMS)}")
    return cfg


def _study_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that decide an arm's result. Left out: what the study itself sets per arm or chooses on dev (the
    mining policy, drop_without_negative, the ensemble weights), so setting the defaults to the study's winner
    afterwards does not invalidate the finished runs."""
    import copy

    p = copy.deepcopy(dict(params))
    p["mine"].pop("policy", None)
    p["train"].get("bi_encoder", {}).pop("drop_without_negative", None)
    for m in p["embed"].get("models", []):
        m.pop("weight", None)
    # nor what does not change an arm's numbers: how the corpus is split across embed workers, the encoding batch
    p["embed"].pop("shards", None)
    p["train"].get("bi_encoder", {}).pop("batch_size", None)
    # the reading of the rule with several positives: in the key of the arms that read it only (_arm_key)
    p["mine"].pop("positive_reading", None)
    return p


# arms whose negatives depend on mine.positive_reading (the rule compares candidates with the positive)
PART_SPLITS = ("dev_seen", "dev_unseen", "test_seen", "test_unseen")
WHAT = {
    "alone": "the tuned query tower retrieving from the whole corpus by itself (dense, every document)",
    "rerank": "the tuned model reordering the first stage's top retrieve.rerank_depth candidates by itself",
    "served": "the tuned model's cosine fused with the first stage over its top retrieve.rerank_depth (weights and "
    "per-query gate chosen on dev; the study keeps the depth fixed, the evaluate stage also chooses it on dev)",
}

READING_ARMS = (
    "paper",
    "paper-drop",
    "positive-aware",
    "hybrid",
    "paper-single-model",
    "paper-pca80",
    "paper-no-pca",
)


def _arm_key(key: Mapping[str, Any], arm: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration key of one arm's result file (``key`` plus what only this arm reads)."""
    if arm in READING_ARMS:
        return {**key, "positive_reading": params["mine"]["positive_reading"]}
    return dict(key)


def _save(path: Path, obj: Any) -> None:
    from hardneg.artifacts import atomic_write_json

    atomic_write_json(path, obj)


# long: the study's driver (inputs, baselines, arms x seeds with resume, summary) is one readable sequence
def run_study(
    data_dir: str | os.PathLike,
    emb_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the study; returns quality.json's content. Finished (arm, seed) runs are kept in
    ``out_dir/runs.json`` and skipped on a rerun with the same configuration."""
    from hardneg.biencoder import BiEncoderConfig, document_vectors, load_biencoder, train_biencoder
    from hardneg.config import params_hash
    from hardneg.data import load_dataset_for
    from hardneg.lineage import current_lineage

    t_all = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = study_config(params, arms, seeds)
    ds, split_record = load_dataset_for(data_dir, params)
    d = params["data"]
    qrels = {"dev": ds.split_qrels(d["dev_split"]), "test": ds.split_qrels(d["test_split"])}
    qids = sorted(set(qrels["dev"]) | set(qrels["test"]))
    emb = Path(emb_dir)
    slugs = list(json.loads((emb / "manifest.json").read_text(encoding="utf-8"))["models"])
    variance = params["reduce"]["variance"]
    k = int(params["retrieve"]["top_k"])

    # 1. ensemble weights and no-training systems, chosen on dev
    ens_w, ens_curve = choose_ensemble_weights(
        emb, slugs, qrels["dev"], cfg["ensemble_weight_grid"], variance, k
    )
    systems = no_training_systems(ds, emb, slugs, ens_w, params, qids)
    from hardneg.generalization import split_ids, training_positives

    train_docs = training_positives(ds, d["train_split"])
    ids = {split: split_ids(qrels[split], train_docs) for split in ("dev", "test")}
    baseline: dict[str, Any] = {}
    for name, s in systems.items():
        for split in ("dev", "test"):
            mean, _ = metrics_of(s["run"], qrels[split])
            baseline.setdefault(name, {"weight": s.get("weight")})[split] = mean
            for part, row in metrics_by_part(s["run"], qrels[split], ids[split]).items():
                baseline[name][f"{split}_{part}"] = row
    best_nt = max(baseline, key=lambda n: (baseline[n]["dev"]["mrr@10"], baseline[n]["dev"]["ndcg@10"]))
    fs_name = str(params["evaluate"]["first_stage"])
    first_stage = systems[fs_name]["run"]
    log.info("no-training systems: best on dev %s; served first stage %s", best_nt, fs_name)

    # 2. vectors for the mining policies (ensemble with the dev-chosen weights, and the ablations)
    single = max(slugs, key=lambda s: baseline[f"dense:{s}"]["dev"]["mrr@10"])
    vectors = {
        "ensemble": ensemble_vectors(emb, slugs, ens_w, variance),
        "single": model_vectors(emb, single),
        "pca80": ensemble_vectors(emb, slugs, ens_w, 0.80),
        "no-pca": ensemble_vectors(emb, slugs, ens_w, None),
    }
    train_q = sorted(ds.split_qrels(d["train_split"]))
    from hardneg.retrieve import bm25_search

    bm25_train = bm25_search(ds.corpus, {q: ds.queries[q] for q in train_q}, k + 50)

    # 3. arms x seeds (resumable)
    key = {
        "cfg": {k_: v for k_, v in cfg.items() if k_ not in ("arms", "seeds")},
        "params": params_hash(
            _study_params(params), ["data", "embed", "reduce", "mine", "retrieve", "train", "evaluate"]
        ),
    }
    # one file per (arm, seed), written atomically: resumable, and several processes (e.g. one per seed) can share
    # the folder; a file made under another configuration key is ignored (and redone)
    runs_dir = out / "runs" / key["params"]

    def load_state() -> dict[str, Any]:
        st: dict[str, Any] = {"key": key, "arms": {}, "per_query": {}}
        for f in sorted(runs_dir.glob("*.json")) if runs_dir.exists() else []:
            r = read_json(f, rerun="hardneg compare")
            if r.get("key") != _arm_key(key, r.get("arm"), params):
                continue
            st["arms"].setdefault(r["arm"], {})[str(r["seed"])] = r["result"]
            st["per_query"].setdefault(r["arm"], {})[str(r["seed"])] = r["per_query"]
        return st

    state = load_state()
    neg_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
    bcfg0 = BiEncoderConfig.from_params(params)
    fixed = document_vectors(ds, bcfg0, params["embed"]["cache_dir"]) if bcfg0.tune == "query" else None
    if not params["compare"].get("max_steps") and bcfg0.epochs is not None:
        # equal budget: the pair-scaled step count of the full training set, the same for every arm (an arm that
        # drops queries, paper-drop, must not get fewer steps)
        from hardneg.biencoder import planned_steps, training_set

        cfg["max_steps"] = planned_steps(bcfg0, training_set(ds, None, d["train_split"]))
    for seed in cfg["seeds"]:  # seed-major: an interrupted study has every arm at the same number of seeds
        for arm in cfg["arms"]:
            done = runs_dir / f"{arm}-{seed}.json"
            arm_key = _arm_key(key, arm, params)
            if done.exists() and read_json(done, rerun="hardneg compare").get("key") == arm_key:
                continue
            t0 = time.perf_counter()
            if arm not in neg_cache:
                neg_cache[arm] = arm_negatives(arm, ds, params, vectors, bm25_train, emb, out)
            rows, nstats = neg_cache[arm]
            bcfg = BiEncoderConfig.from_params(
                params,
                seed=seed,
                max_steps=cfg["max_steps"],
                eval_every=0,
                drop_without_negative=True if arm == "paper-drop" else None,  # None: the params value
            )
            bcfg = dataclasses.replace(bcfg, epochs=None)  # the study fixes the step count (above)
            if arm == "untuned":
                model, steps, tstats = load_biencoder(bcfg.base_model, bcfg.max_length), 0, {}
            else:
                mdir = out / "models" / f"{arm}-{seed}"
                train_biencoder(
                    ds, rows, mdir, bcfg, train_split=d["train_split"], doc_vectors=fixed, progress=progress
                )
                tm = json.loads((mdir / "train_metrics.json").read_text(encoding="utf-8"))
                steps, tstats = (
                    tm["steps"],
                    {
                        "stopped_by": tm["stopped_by"],
                        "s_per_step": tm["s_per_step"],
                        "training_set": tm["training_set"],
                    },
                )
                model = load_biencoder(mdir, bcfg.max_length)
            ev = evaluate_model(model, ds, first_stage, qrels, params, fixed, ids)
            pq = ev.pop("per_query")
            result = {
                **ev,
                "commit": current_lineage(None).git_commit,  # each arm records the commit it ran at
                "steps": steps,
                "negatives": nstats,
                "train": tstats,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            _save(
                runs_dir / f"{arm}-{seed}.json",
                {"key": arm_key, "arm": arm, "seed": seed, "result": result, "per_query": pq},
            )
            if arm != "untuned":
                import shutil

                shutil.rmtree(out / "models" / f"{arm}-{seed}", ignore_errors=True)
            log.info(
                "%s seed %d: served test MRR@10 %.4f, alone %.4f (%.0f s)",
                arm,
                seed,
                ev["served"]["test"]["mrr@10"],
                ev["alone"]["test"]["mrr@10"],
                time.perf_counter() - t0,
            )

    # 4. summary (over every finished run in the folder, including other processes')
    state = load_state()
    state["arms"] = {a: state["arms"][a] for a in cfg["arms"] if a in state["arms"]}
    state["per_query"] = {a: state["per_query"][a] for a in state["arms"]}
    summ = summarize(state, params)
    best = summ["best_policy"]
    arm_best = summ["arms"][best]

    def means(system: str) -> dict[str, Any]:
        out = {s: {m: v["mean"] for m, v in arm_best[system][s].items()} for s in ("dev", "test")}
        for s in PART_SPLITS:
            if s in arm_best[system]:
                out[s] = {m: (v if m == "n" else v["mean"]) for m, v in arm_best[system][s].items()}
                out[s].setdefault("n", 0)
        return out

    def nt(name: str) -> dict[str, Any]:
        return {s: baseline[name][s] for s in ("dev", "test", *PART_SPLITS) if s in baseline[name]}

    lin = current_lineage(None)
    quality = {
        "dataset": str(data_dir),
        "commit": lin.git_commit,
        "data_version": lin.data_version,
        "params_hash": key["params"],
        "mine_positive_reading": params["mine"]["positive_reading"],  # the reading of the READING_ARMS' rule
        "splits": split_record,
        "config": cfg,
        "ensemble_weights": {"models": slugs, "chosen_on_dev": ens_w, "dev_curve": ens_curve},
        "no_training": baseline,
        "bm25": nt("bm25"),
        "dense": nt("dense"),
        "no_training_hybrid": {"system": best_nt, **nt(best_nt)},
        "first_stage": {"system": fs_name, **nt(fs_name)},
        # evaluate.first_stage's default must be this (tests/test_readme_numbers.py)
        "first_stage_best_on_dev": max(
            ("dense", "bm25", "hybrid"),
            key=lambda n: (baseline[n]["dev"]["mrr@10"], baseline[n]["dev"]["ndcg@10"]),
        ),
        "best_policy": best,
        "rerank_depth": int(params["retrieve"]["rerank_depth"]),
        "seen_unseen": "seen: a relevant document of the query is a positive of a training query (the train split "
        "after the dev top-up); unseen: none is (hardneg.generalization)",
        "reranker_alone": {"arm": best, "what": WHAT["alone"], **means("alone")},
        "reranker_rerank": {"arm": best, "what": WHAT["rerank"], **means("rerank")},
        "served": {"arm": best, "what": WHAT["served"], **means("served")},
        "arms": summ["arms"],
        "steps_per_arm": {a: r["steps"] for a, r in summ["arms"].items()},
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    _save(out / QUALITY_JSON, quality)
    _save(out / PER_QUERY_JSON, state["per_query"])
    (out / REPORT_HTML).write_text(report_html(quality), encoding="utf-8")
    return quality
