"""The quality study: does the reranker earn its place, and is it because of the mined negatives?

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

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import Run, read_json
from hardneg.errors import ConfigError, HardnegError
from hardneg.retrieve import dense_run

log = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
PER_QUERY_JSON = "quality_per_query.json"
REPORT_HTML = "quality_report.html"
METRICS = ("mrr@3", "mrr@10", "ndcg@10", "recall@100")
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
NOT_MINED = ("untuned", "in-batch", "random")  # T3 compares the best *mined* policy against these


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
) -> dict[str, Any]:
    """The tuned model alone (dense retrieval over the corpus) and served (fused with ``first_stage`` over its top
    ``rerank_depth``, weight chosen on dev), on dev and test: metrics and per-query MRR@10. ``doc_vectors``: the
    fixed document vectors of ``tune: query`` (else the model embeds the corpus)."""
    from hardneg.biencoder import encode
    from hardneg.evaluate import combine, restrict, top_candidates, tune_fusion_weight

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
    out: dict[str, Any] = {"fusion_weight": w, "fusion_dev_curve": curve}
    for split in ("dev", "test"):
        fs = restrict(first_stage, qrels[split])
        for name, run in (
            ("alone", restrict(alone, qrels[split])),
            ("served", combine(fs, scores, depth, w)),
        ):
            mean, pq = metrics_of(run, qrels[split])
            out.setdefault(name, {})[split] = mean
            out.setdefault("per_query", {}).setdefault(name, {})[split] = pq
    return out


# ----------------------------------------------------------------------------------------------- significance


def randomization_p(a: Mapping[str, float], b: Mapping[str, float], n: int = 10000, seed: int = 0) -> float:
    from hardneg.evaluate import paired_test

    return float(paired_test(a, b, n_resamples=n, seed=seed)["p_randomization"])


def seed_mean(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    qs = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return {q: float(np.mean([p[q] for p in per_seed])) for q in qs}


def summarize(results: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """quality.json from the finished arm runs: means over seeds, the best mined policy on dev, p-values."""
    arms_out: dict[str, Any] = {}
    finished = {a: r for a, r in results["arms"].items() if r}
    for arm, by_seed in finished.items():
        seeds = sorted(by_seed, key=int)
        row: dict[str, Any] = {"seeds": [int(s) for s in seeds], "steps": by_seed[seeds[0]].get("steps")}
        for system in ("alone", "served"):
            for split in ("dev", "test"):
                for m in ("mrr@10", "ndcg@10", "mrr@3"):
                    vals = [by_seed[s][system][split][m] for s in seeds]
                    row.setdefault(system, {}).setdefault(split, {})[m] = {
                        "mean": round(float(np.mean(vals)), 5),
                        "std": round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 5),
                        "seeds": vals,
                    }
        row["test"] = row["served"]["test"]
        row["dev"] = row["served"]["dev"]
        row["negatives"] = by_seed[seeds[0]].get("negatives", {})
        arms_out[arm] = row
    candidates = [a for a in arms_out if a not in NOT_MINED]
    best = max(candidates or list(arms_out), key=lambda a: arms_out[a]["served"]["dev"]["mrr@10"]["mean"])
    pq = results["per_query"]
    for arm, row in arms_out.items():
        if arm == best:
            row["p_vs_best"] = None
            continue
        shared = sorted(set(pq[arm]) & set(pq[best]), key=int)
        for system in ("served", "alone"):
            a = seed_mean([pq[best][s][system]["test"] for s in shared])
            b = seed_mean([pq[arm][s][system]["test"] for s in shared])
            per_seed = [
                randomization_p(pq[best][s][system]["test"], pq[arm][s][system]["test"]) for s in shared
            ]
            key = "p_vs_best" if system == "served" else "p_vs_best_alone"
            row[key] = round(randomization_p(a, b), 5)
            row[key + "_per_seed"] = [round(p, 5) for p in per_seed]
            row[("diff_vs_best" if system == "served" else "diff_vs_best_alone")] = round(
                float(np.mean([a[q] - b[q] for q in a])), 5
            )
    return {"arms": arms_out, "best_policy": best}


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
    return p


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
    baseline: dict[str, Any] = {}
    for name, s in systems.items():
        for split in ("dev", "test"):
            mean, _ = metrics_of(s["run"], qrels[split])
            baseline.setdefault(name, {"weight": s.get("weight")})[split] = mean
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
            if r.get("key") != key:
                continue
            st["arms"].setdefault(r["arm"], {})[str(r["seed"])] = r["result"]
            st["per_query"].setdefault(r["arm"], {})[str(r["seed"])] = r["per_query"]
        return st

    state = load_state()
    neg_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
    bcfg0 = BiEncoderConfig.from_params(params)
    fixed = document_vectors(ds, bcfg0, params["embed"]["cache_dir"]) if bcfg0.tune == "query" else None
    for seed in cfg["seeds"]:  # seed-major: an interrupted study has every arm at the same number of seeds
        for arm in cfg["arms"]:
            done = runs_dir / f"{arm}-{seed}.json"
            if done.exists() and read_json(done, rerun="hardneg compare").get("key") == key:
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
            ev = evaluate_model(model, ds, first_stage, qrels, params, fixed)
            pq = ev.pop("per_query")
            result = {
                **ev,
                "steps": steps,
                "negatives": nstats,
                "train": tstats,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            _save(
                runs_dir / f"{arm}-{seed}.json",
                {"key": key, "arm": arm, "seed": seed, "result": result, "per_query": pq},
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
        return {s: {m: v["mean"] for m, v in arm_best[system][s].items()} for s in ("dev", "test")}

    lin = current_lineage(None)
    quality = {
        "dataset": str(data_dir),
        "commit": lin.git_commit,
        "data_version": lin.data_version,
        "params_hash": key["params"],
        "splits": split_record,
        "config": cfg,
        "ensemble_weights": {"models": slugs, "chosen_on_dev": ens_w, "dev_curve": ens_curve},
        "no_training": baseline,
        "bm25": {s: baseline["bm25"][s] for s in ("dev", "test")},
        "dense": {s: baseline["dense"][s] for s in ("dev", "test")},
        "no_training_hybrid": {"system": best_nt, **{s: baseline[best_nt][s] for s in ("dev", "test")}},
        "first_stage": {"system": fs_name, **{s: baseline[fs_name][s] for s in ("dev", "test")}},
        # evaluate.first_stage's default must be this (tests/test_readme_numbers.py)
        "first_stage_best_on_dev": max(
            ("dense", "bm25", "hybrid"),
            key=lambda n: (baseline[n]["dev"]["mrr@10"], baseline[n]["dev"]["ndcg@10"]),
        ),
        "best_policy": best,
        "reranker_alone": {"arm": best, **means("alone")},
        "served": {"arm": best, **means("served")},
        "arms": summ["arms"],
        "steps_per_arm": {a: r["steps"] for a, r in summ["arms"].items()},
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    _save(out / QUALITY_JSON, quality)
    _save(out / PER_QUERY_JSON, state["per_query"])
    (out / REPORT_HTML).write_text(report_html(quality), encoding="utf-8")
    return quality


def report_html(q: Mapping[str, Any]) -> str:
    """A self-contained HTML page: baselines, arms (mean ± std over seeds, per seed), p-values."""
    import html

    def cell(v: Any) -> str:
        return html.escape(f"{v:.4f}" if isinstance(v, float) else str(v))

    rows = []
    for name, b in q["no_training"].items():
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{cell(b['dev']['mrr@10'])}</td>"
            f"<td>{cell(b['test']['mrr@10'])}</td><td>{cell(b['test']['ndcg@10'])}</td>"
            f"<td>{cell(b.get('weight'))}</td></tr>"
        )
    arms = []
    for name, a in sorted(q["arms"].items(), key=lambda kv: -kv[1]["served"]["dev"]["mrr@10"]["mean"]):
        s, al = a["served"], a["alone"]
        bold = " style='font-weight:bold'" if name == q["best_policy"] else ""
        arms.append(
            f"<tr{bold}><td>{html.escape(name)}</td>"
            f"<td>{cell(s['dev']['mrr@10']['mean'])}</td>"
            f"<td>{cell(s['test']['mrr@10']['mean'])} ± {cell(s['test']['mrr@10']['std'])}</td>"
            f"<td>{', '.join(cell(x) for x in s['test']['mrr@10']['seeds'])}</td>"
            f"<td>{cell(al['test']['mrr@10']['mean'])} ± {cell(al['test']['mrr@10']['std'])}</td>"
            f"<td>{cell(s['test']['ndcg@10']['mean'])}</td><td>{cell(a.get('diff_vs_best'))}</td>"
            f"<td>{cell(a.get('p_vs_best'))}</td><td>{cell(a.get('p_vs_best_per_seed'))}</td><td>{cell(a['steps'])}</td></tr>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>hardneg quality study</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "td{text-align:right}td:first-child{text-align:left}</style>"
        f"<h1>hardneg quality study</h1><p>dataset {html.escape(q['dataset'])}, commit {html.escape(q['commit'])}, "
        f"params {html.escape(q['params_hash'])}; dev = {q['splits']['top_up']['dev_queries']} queries "
        f"(topped up from train: {q['splits']['top_up']['moved']}, seed {q['splits']['top_up']['seed']}). Choices on dev, test read once.</p>"
        f"<p>Best no-training system (dev): <b>{html.escape(q['no_training_hybrid']['system'])}</b>; "
        f"best mined policy (dev): <b>{html.escape(q['best_policy'])}</b>.</p>"
        "<h2>No-training systems (MRR@10)</h2><table><tr><th>system</th><th>dev</th><th>test</th><th>test nDCG@10</th>"
        "<th>BM25 weight</th></tr>" + "".join(rows) + "</table>"
        "<h2>Arms (bi-encoder fine-tuned, equal steps; served = fused with the first stage)</h2>"
        "<table><tr><th>arm</th><th>dev MRR@10</th><th>test MRR@10 (mean ± sd)</th><th>per seed</th>"
        "<th>alone test MRR@10</th><th>test nDCG@10</th><th>diff vs best</th><th>p vs best (seed-averaged, "
        "randomization)</th><th>p per seed</th><th>steps</th></tr>" + "".join(arms) + "</table>"
    )


# ------------------------------------------------------------------------------------------------ README table

README_START = (
    "<!-- quality:start (written by benchmarks/quality.py from benchmarks/results/quality.json) -->"
)
README_END = "<!-- quality:end -->"


def readme_table(q: Mapping[str, Any]) -> str:
    """The README's quality block, generated from quality.json (a test checks README against it)."""

    def f(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    best_nt, arms = q["no_training_hybrid"], q["arms"]
    lines = [
        README_START,
        f"SciFact test MRR@10 / nDCG@10 (dev = {q['splits']['top_up']['dev_queries']} queries: choices; test read once). "
        f"Commit `{q['commit'][:12]}`, params `{q['params_hash']}`, {len(q['config']['seeds'])} seeds, "
        f"{q['config']['max_steps']} steps per arm.",
        "",
        "| system | MRR@10 | nDCG@10 |",
        "|---|---|---|",
        f"| BM25 | {f(q['bm25']['test']['mrr@10'])} | {f(q['bm25']['test']['ndcg@10'])} |",
        f"| dense ensemble (PCA) | {f(q['dense']['test']['mrr@10'])} | {f(q['dense']['test']['ndcg@10'])} |",
        f"| best no-training system on dev: `{best_nt['system']}` | {f(best_nt['test']['mrr@10'])} | "
        f"{f(best_nt['test']['ndcg@10'])} |",
        f"| reranker alone (`{q['best_policy']}`, mean of seeds) | {f(q['reranker_alone']['test']['mrr@10'])} | "
        f"{f(q['reranker_alone']['test']['ndcg@10'])} |",
        f"| served: reranker fused with `{q['first_stage']['system']}` (`{q['best_policy']}`) | "
        f"{f(q['served']['test']['mrr@10'])} | {f(q['served']['test']['ndcg@10'])} |",
        "",
        "| arm (served, test) | MRR@10 mean ± sd | seeds | dev MRR@10 | alone MRR@10 | diff vs best | p vs best |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in sorted(arms.items(), key=lambda kv: -kv[1]["served"]["dev"]["mrr@10"]["mean"]):
        t = a["served"]["test"]["mrr@10"]
        lines.append(
            f"| {'**' + name + '**' if name == q['best_policy'] else name} | {f(t['mean'])} ± {f(t['std'])} | "
            f"{', '.join(f(x) for x in t['seeds'])} | {f(a['served']['dev']['mrr@10']['mean'])} | "
            f"{f(a['alone']['test']['mrr@10']['mean'])} | {f(a.get('diff_vs_best') or 0.0)} | "
            f"{f(a.get('p_vs_best')) if a.get('p_vs_best') is not None else '-'} |"
        )
    lines.append(README_END)
    return "\n".join(lines)


def replace_readme_block(readme: str, block: str) -> str:
    if README_START not in readme or README_END not in readme:
        raise HardnegError("README.md has no quality block markers")
    i, j = readme.index(README_START), readme.index(README_END) + len(README_END)
    return readme[:i] + block + readme[j:]
