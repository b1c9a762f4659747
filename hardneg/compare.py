"""The negative-strategy comparison: one command, one dataset, one base model, one training budget, several seeds.

Arms (``compare.strategies``), all trained with the ``train`` section overridden by the ``compare`` budget:

- ``random``, ``bm25``, ``paper`` (arXiv 2505.18366's two conditions, closest first), ``hybrid`` (hardneg's best
  policy) and any other :mod:`hardneg.mine` policy: negatives from :func:`hardneg.mine.mine_negatives` over the shared
  PCA-ensemble vectors;
- ``st-default`` / ``st-margin``: sentence-transformers ``util.mine_hard_negatives`` with all-MiniLM-L6-v2 and its
  defaults (``range_min=0``, ``range_max`` automatic, ``sampling_strategy="top"``), the second with
  ``relative_margin=0.05`` (NV-Retriever's TopK-PercPos 95%); ``num_negatives`` is set to the same count as the other
  arms so every arm fills the same groups. Its embedding cache is pre-seeded with the vectors ``hardneg embed``
  already computed for that model (a cache miss only costs time, never changes the result);

plus two references without training: the first stage alone (dense PCA-ensemble and BM25) and the untrained
reranker (fresh head). Embeddings, the first-stage runs and each strategy's negatives are computed once and shared
by all seeds. Every arm is evaluated on the test split (first stage -> rerank top ``rerank_depth`` -> fusion with the
weight tuned on dev); ``compare_results.json`` is rewritten after each arm, and a rerun skips finished arms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.errors import ConfigError, HardnegError
from hardneg.hw import use_bf16

log = logging.getLogger(__name__)

RESULTS_JSON = "compare_results.json"
RESULTS_MD = "compare_results.md"
REPORT_HTML = "report.html"
ST_STRATEGIES = {"st-default": None, "st-margin": "relative_margin"}
PRIMARY = ("fusion", "mrr@10")
# results.json keys of the references -> the names in tables (a strategy is also called "bm25")
REFERENCE_NAMES = {
    "first_stage": "first stage (dense)",
    "bm25": "first stage (BM25)",
    "untrained": "untrained reranker",
}


# --------------------------------------------------------------------------------------------- shared inputs


def prepare_first_stage(
    dataset: Any,
    params: Mapping[str, Any],
    out: Path,
    *,
    emb_dir: Path | None = None,
    reduced_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Embeddings (cached), PCA, and the dense + BM25 runs for the dev and test queries, computed once."""
    from hardneg.embed import embed_dataset
    from hardneg.evaluate import first_stage_runs
    from hardneg.reduce import load_reduced, reduce_embeddings
    from hardneg.retrieve import save_run

    emb = Path(emb_dir) if emb_dir else out / "embeddings"
    red = Path(reduced_dir) if reduced_dir else out / "reduced"
    t0 = time.perf_counter()
    if not (red / "corpus.npy").exists():
        if not (emb / "manifest.json").exists():
            embed_dataset(dataset, params, emb, progress=progress)
        reduce_embeddings(emb, params, red)
    D, doc_ids, Q, query_ids = load_reduced(red)
    runs = first_stage_runs(dataset, red, params)
    dense, bm25 = runs["dense"], runs["bm25"]
    save_run(dense, out / "first_stage" / "dense.json")
    save_run(bm25, out / "first_stage" / "bm25.json")
    return {
        "D": D,
        "doc_ids": doc_ids,
        "Q": Q,
        "query_ids": query_ids,
        "dense": dense,
        "bm25": bm25,
        "emb_dir": emb,
        "reduced_dir": red,
        "seconds": round(time.perf_counter() - t0, 1),
    }


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


def add_distances(
    rows: list[dict[str, Any]], D: np.ndarray, doc_ids: Sequence[str], Q: np.ndarray, query_ids: Sequence[str]
) -> None:
    """Fill ``d_qp``/``d_qn``/``d_pn`` (cosine distances in the shared PCA space) for rows that lack them, so all
    strategies are plotted in the same space."""
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


# ---------------------------------------------------------------------------------------------------- results


def _load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summarize(
    results: Mapping[str, Any],
    strategies: Sequence[str],
    best: str,
    metrics: Sequence[str] = ("mrr@3", "mrr@10", "ndcg@10", "recall@100"),
) -> dict[str, Any]:
    """Table rows (mean ± std over seeds per strategy) and paired tests of ``best`` vs every other row."""
    from hardneg.evaluate import paired_test

    arms = results.get("arms", {})
    refs = results.get("references", {})
    table: list[dict[str, Any]] = []
    per_query_primary: dict[str, dict[str, float]] = {}

    def pq_path(name: str) -> Path:
        return Path(results["out_dir"]) / "arms" / name / "per_query.json"

    order = list(REFERENCE_NAMES)
    for name, ref in sorted(
        refs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
    ):
        display = REFERENCE_NAMES.get(name, name)
        row = {"strategy": display, "kind": "reference", "n_seeds": 1}
        for sysname in ("first_stage", "rerank", "fusion"):
            if sysname in ref.get("systems", {}):
                for m in metrics:
                    row[f"{sysname}/{m}"] = {"mean": ref["systems"][sysname][m], "std": 0.0}
        table.append(row)
        p = pq_path(name)
        if p.exists():
            pq = json.loads(p.read_text(encoding="utf-8"))
            sysname = "fusion" if "fusion" in pq else "first_stage"
            per_query_primary[display] = pq[sysname][PRIMARY[1]]
    for s in strategies:
        done = [a for a in arms.values() if a.get("strategy") == s and a.get("status") == "done"]
        if not done:
            status = sorted({a.get("status", "") for a in arms.values() if a.get("strategy") == s}) or [
                "not run"
            ]
            table.append({"strategy": s, "kind": "trained", "n_seeds": 0, "status": ", ".join(status)})
            continue
        row = {
            "strategy": s,
            "kind": "trained",
            "n_seeds": len(done),
            "seeds": sorted(a["seed"] for a in done),
        }
        for sysname in ("rerank", "fusion"):
            for m in metrics:
                vals = [
                    a["metrics"]["systems"][sysname][m] for a in done if sysname in a["metrics"]["systems"]
                ]
                if vals:
                    row[f"{sysname}/{m}"] = {
                        "mean": float(np.mean(vals)),
                        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                        "values": vals,
                    }
        row["fusion_weights"] = [a["metrics"].get("fusion_weight") for a in done]
        row["train_seconds"] = float(np.mean([a["train"]["seconds"] for a in done]))
        row["negatives"] = done[0].get("negatives", {})
        table.append(row)
        # per-query primary metric averaged over seeds (the paired unit is the query)
        pqs = []
        for a in done:
            p = pq_path(a["name"])
            if p.exists():
                pqs.append(json.loads(p.read_text(encoding="utf-8"))[PRIMARY[0]][PRIMARY[1]])
        if pqs:
            common = set.intersection(*(set(x) for x in pqs))
            per_query_primary[s] = {q: float(np.mean([x[q] for x in pqs])) for q in common}
    tests = {}
    if best in per_query_primary:
        for other, pq in per_query_primary.items():
            if other != best:
                tests[other] = paired_test(per_query_primary[best], pq)
    return {"table": table, "paired_tests": {"best": best, "metric": "/".join(PRIMARY), "vs": tests}}


def results_markdown(results: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    def fmt(cell: Any) -> str:
        if not cell:
            return "—"
        return f"{cell['mean']:.4f} ± {cell['std']:.4f}" if cell.get("std") else f"{cell['mean']:.4f}"

    cfg = results.get("config", {})
    lines = [
        f"# Negative-strategy comparison on {results.get('dataset', '?')}",
        "",
        f"Base model `{cfg.get('base_model')}`, loss `{cfg.get('loss')}`, {cfg.get('max_steps')} steps x {cfg.get('queries_per_step')} queries x "
        f"group {cfg.get('group_size')}, lr {cfg.get('lr')}, max_length {cfg.get('max_length')}, seeds {cfg.get('seeds')}; "
        f"test split, rerank depth {cfg.get('rerank_depth')}, fusion weight tuned on dev. Mean ± std over seeds.",
        "",
        "| strategy | seeds | served MRR@10 (fusion) | MRR@3 (fusion) | nDCG@10 (fusion) | R@100 | reranker alone MRR@10 | p vs best (t / rand.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tests = summary["paired_tests"]["vs"]
    best = summary["paired_tests"]["best"]
    for row in summary["table"]:
        s = row["strategy"]
        if row["kind"] == "reference" and "fusion/mrr@10" not in row:
            main, m3, nd, r100, rr = (
                row.get(f"first_stage/{m}") for m in ("mrr@10", "mrr@3", "ndcg@10", "recall@100", "x")
            )
        else:
            main, m3, nd, r100, rr = (
                row.get(k)
                for k in (
                    "fusion/mrr@10",
                    "fusion/mrr@3",
                    "fusion/ndcg@10",
                    "fusion/recall@100",
                    "rerank/mrr@10",
                )
            )
        t = tests.get(s)
        pv = (
            f"{t['p_ttest']:.3g} / {t['p_randomization']:.3g} ({t['diff']:+.4f})"
            if t
            else ("(best)" if s == best else "—")
        )
        if row.get("status"):
            pv = f"{pv} ({row['status']})"
        lines.append(
            f"| {s}{' (hardneg best)' if s == best else ''} | {row.get('n_seeds', 0)} | {fmt(main)} | {fmt(m3)} | {fmt(nd)} | {fmt(r100)} | {fmt(rr)} | {pv} |"
        )
    lines += [
        "",
        f"p-values: paired over test queries of `{best}` vs the row (per-query {summary['paired_tests']['metric']} averaged over seeds); "
        "t = paired t-test, rand. = sign-flip randomization test; in brackets the mean difference best - row.",
        "",
        f"Total time {results.get('seconds_total', '?')} s.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- main


def compare_config(
    params: Mapping[str, Any],
    *,
    seeds: Sequence[int] | None = None,
    max_steps: int | None = None,
    strategies: Sequence[str] | None = None,
) -> dict[str, Any]:
    c = dict(params.get("compare", {}))
    t = dict(params["train"])
    cfg = {
        "strategies": list(
            strategies
            or c.get("strategies")
            or ["random", "bm25", "st-default", "st-margin", "paper", "hybrid"]
        ),
        "best": str(c.get("best", "hybrid")),
        "seeds": [int(s) for s in (seeds or c.get("seeds") or [13, 14, 15])],
        "max_steps": int(max_steps or c.get("max_steps") or t["max_steps"]),
        "max_length": int(c.get("max_length") or t["max_length"]),
        "rerank_depth": int(c.get("rerank_depth") or params["retrieve"]["rerank_depth"]),
        "time_budget_min": float(c.get("time_budget_min") or 0),
        "num_negatives": int(c.get("num_negatives") or params["mine"]["num_negatives"]),
        "st_relative_margin": float(c.get("st_relative_margin", 0.05)),
        "keep_models": bool(c.get("keep_models", False)),
        "total_budget_min": float(c.get("total_budget_min") or 0),
        "torch_threads": t.get("torch_threads"),
        "base_model": t["base_model"],
        "loss": t["loss"],
        "lr": t["lr"],
        "group_size": t["group_size"],
        "queries_per_step": t["queries_per_step"],
    }
    if cfg["best"] not in cfg["strategies"]:
        raise ConfigError(f"compare.best '{cfg['best']}' is not in compare.strategies {cfg['strategies']}")
    return cfg


def run_compare(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    seeds: Sequence[int] | None = None,
    max_steps: int | None = None,
    strategies: Sequence[str] | None = None,
    emb_dir: str | os.PathLike | None = None,
    reduced_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole matrix; returns the summary. Writes compare_results.{json,md} and report.html."""
    from hardneg.data import load_dataset
    from hardneg.evaluate import CrossEncoderScorer, evaluate_reranker, write_evaluation
    from hardneg.mine import POLICIES, mine_negatives
    from hardneg.train import apply_torch_threads, train_reranker

    apply_torch_threads(params)
    t_all = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = compare_config(params, seeds=seeds, max_steps=max_steps, strategies=strategies)
    for s in cfg["strategies"]:
        if s not in POLICIES and s not in ST_STRATEGIES:
            raise ConfigError(
                f"unknown strategy '{s}': use mining policies {list(POLICIES)} or {list(ST_STRATEGIES)}"
            )
    ds = load_dataset(data_dir)
    res_path = out / RESULTS_JSON
    results = _load_results(res_path)
    # may change between resumed runs (time_budget_min is a safety cap: arms record the steps they trained)
    free = ("seeds", "strategies", "total_budget_min", "keep_models", "time_budget_min")
    if results.get("config") and {k: v for k, v in results["config"].items() if k not in free} != {
        k: v for k, v in cfg.items() if k not in free
    }:
        log.warning("%s was written with another configuration: starting over", res_path)
        results = {}
    results.setdefault("arms", {})
    results.setdefault("references", {})
    results.update({"dataset": str(data_dir), "out_dir": str(out), "config": cfg})
    prev_seconds = float(results.get("seconds_total") or 0.0)

    def save() -> None:
        results["seconds_total"] = round(prev_seconds + time.perf_counter() - t_all, 1)
        _save_json(res_path, results)

    params_eval = {
        **dict(params),
        "retrieve": {**dict(params["retrieve"]), "rerank_depth": cfg["rerank_depth"]},
    }
    train_over = {
        "max_steps": cfg["max_steps"],
        "max_length": cfg["max_length"],
        "eval_every": 0,
        "time_budget_min": cfg["time_budget_min"],
    }

    log.info("compare: first stage (embeddings cached, PCA, dense + BM25 runs)")
    fs = prepare_first_stage(
        ds,
        params,
        out,
        emb_dir=Path(emb_dir) if emb_dir else None,
        reduced_dir=Path(reduced_dir) if reduced_dir else None,
        progress=progress,
    )
    results["first_stage_seconds"] = fs["seconds"]
    if (Path(fs["reduced_dir"]) / "reduce.json").exists():
        results["reduce"] = json.loads((Path(fs["reduced_dir"]) / "reduce.json").read_text(encoding="utf-8"))

    def evaluate_arm(model: Any, name: str) -> Any:
        """Rerank the dense candidates with ``model`` (a CrossEncoder or its folder); written to arms/<name>."""
        scorer = CrossEncoderScorer(
            model, cfg["max_length"], bf16=use_bf16(params["train"].get("bf16", "auto"))
        )
        ev = evaluate_reranker(ds, scorer, fs["dense"], params_eval)
        write_evaluation(ev, out / "arms" / name)
        return ev

    # references: first stages alone, then the untrained reranker
    if "first_stage" not in results["references"]:
        ev = evaluate_reranker(ds, None, fs["dense"], params_eval, extra_first_stages={"bm25": fs["bm25"]})
        write_evaluation(ev, out / "arms" / "first_stage")
        results["references"]["first_stage"] = {
            "systems": {"first_stage": ev.metrics["systems"]["first_stage"]}
        }
        results["references"]["bm25"] = {"systems": {"first_stage": ev.metrics["systems"]["bm25"]}}
        d = out / "arms" / "bm25"
        d.mkdir(parents=True, exist_ok=True)
        _save_json(d / "per_query.json", {"first_stage": ev.per_query["bm25"]})
        save()
    if "untrained" not in results["references"]:
        import torch
        from sentence_transformers import CrossEncoder

        from hardneg.models import resolve_model

        torch.manual_seed(cfg["seeds"][0])
        ce = CrossEncoder(
            resolve_model(str(cfg["base_model"])).path,
            num_labels=1,
            max_length=cfg["max_length"],
            device="cpu",
        )
        t0 = time.perf_counter()
        ev = evaluate_arm(ce, "untrained")
        results["references"]["untrained"] = {
            "systems": ev.metrics["systems"],
            "fusion_weight": ev.metrics.get("fusion_weight"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        del ce
        save()

    # negatives, once per strategy
    neg_dir = out / "negatives"
    train_split = params.get("data", {}).get("train_split", "train")
    negatives: dict[str, list[dict[str, Any]]] = {}
    for s in cfg["strategies"]:
        f = neg_dir / s / "negatives.jsonl"
        if f.exists():
            negatives[s] = [
                json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
            continue
        t0 = time.perf_counter()
        if s in ST_STRATEGIES:
            rm = cfg["st_relative_margin"] if ST_STRATEGIES[s] else None
            rows, st = st_negatives(
                ds,
                train_split,
                params,
                Path(fs["emb_dir"]),
                out / "st_cache",
                relative_margin=rm,
                num_negatives=cfg["num_negatives"],
                strategy=s,
            )
        else:
            over: dict[str, Any] = {"num_negatives": cfg["num_negatives"]}
            if s == "paper":
                over["paper_num_negatives"] = cfg["num_negatives"]
            rows, st = mine_negatives(
                ds,
                fs["D"],
                fs["doc_ids"],
                fs["Q"],
                fs["query_ids"],
                train_split,
                params,
                bm25_run=None,
                policy=s,
                **over,
            )
        add_distances(rows, fs["D"], fs["doc_ids"], fs["Q"], fs["query_ids"])
        (neg_dir / s).mkdir(parents=True, exist_ok=True)
        _save_json(neg_dir / s / "mine_stats.json", {k: v for k, v in st.items() if k != "histograms"})
        tmp = f.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, f)
        negatives[s] = rows
        results.setdefault("negatives", {})[s] = {
            "pairs": len(rows),
            "pairs_without_negative": sum(1 for r in rows if not r["negative_ids"]),
            "negatives_per_pair": round(float(np.mean([len(r["negative_ids"]) for r in rows])), 3)
            if rows
            else 0.0,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save()

    # the matrix: seed-major, so a partial run has every strategy at the first seeds
    for seed in cfg["seeds"]:
        for s in cfg["strategies"]:
            name = f"{s}-s{seed}"
            arm = results["arms"].get(name)
            if arm and (
                arm.get("status") == "no_negatives"
                or (arm.get("status") == "done" and (out / "arms" / name / "per_query.json").exists())
            ):
                continue
            spent = [
                a["seconds"] for a in results["arms"].values() if a.get("status") == "done" and "seconds" in a
            ]
            elapsed = time.perf_counter() - t_all
            if (
                cfg["total_budget_min"]
                and spent
                and elapsed + float(np.mean(spent)) > cfg["total_budget_min"] * 60
            ):
                log.warning(
                    "compare: total budget %.0f min reached after %.0f s: %s and later arms not run (rerun to resume)",
                    cfg["total_budget_min"],
                    elapsed,
                    name,
                )
                results["stopped_by_budget"] = name
                break
            log.info("compare: arm %s", name)
            mdir = out / "models" / name
            t0 = time.perf_counter()
            if not any(r["negative_ids"] for r in negatives[s]):
                log.warning("compare: %s has no pair with a negative: nothing to train", s)
                results["arms"][name] = {
                    "name": name,
                    "strategy": s,
                    "seed": seed,
                    "status": "no_negatives",
                    "negatives": results.get("negatives", {}).get(s, {}),
                }
                save()
                continue
            train_reranker(
                ds,
                negatives[s],
                mdir,
                params,
                progress=progress,
                overrides={**train_over, "seed": seed},
                negatives_file=neg_dir / s / "negatives.jsonl",
            )
            tm = json.loads((mdir / "train_metrics.json").read_text(encoding="utf-8"))
            t1 = time.perf_counter()
            ev = evaluate_arm(mdir, name)
            results["arms"][name] = {
                "name": name,
                "strategy": s,
                "seed": seed,
                "status": "done",
                "metrics": ev.metrics,
                "train": {k: tm[k] for k in ("steps", "seconds", "pairs_per_s", "stopped_by", "groups")},
                "train_loss_first_last": [
                    float(np.mean(tm["loss_curve"][:10])),
                    float(np.mean(tm["loss_curve"][-10:])),
                ],
                "eval_seconds": round(time.perf_counter() - t1, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "negatives": results.get("negatives", {}).get(s, {}),
            }
            if not cfg["keep_models"]:
                shutil.rmtree(mdir, ignore_errors=True)
            save()
            _write_outputs(out, results, cfg)
        else:
            continue
        break
    summary = _write_outputs(out, results, cfg, final=True)
    save()
    return summary


def _write_outputs(
    out: Path, results: dict[str, Any], cfg: Mapping[str, Any], final: bool = False
) -> dict[str, Any]:
    from hardneg.report import write_report

    summary = summarize(results, cfg["strategies"], cfg["best"])
    results["summary"] = summary
    (out / RESULTS_MD).write_text(results_markdown(results, summary), encoding="utf-8")
    if final:
        write_report(out, results, summary)
    return summary


def regenerate(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Rewrite compare_results.md and report.html from an existing compare_results.json (no training)."""
    out = Path(out_dir)
    results = _load_results(out / RESULTS_JSON)
    if not results.get("config"):
        raise HardnegError(f"no {RESULTS_JSON} in {out}: run `hardneg compare` first")
    results["out_dir"] = str(out)
    summary = _write_outputs(out, results, results["config"], final=True)
    _save_json(out / RESULTS_JSON, results)
    return summary
