"""Stage runners: folder in, folder out, one function per pipeline stage.

These are what the KFP components (``components/``) and ``dvc.yaml`` call; each is a few lines of glue over the
module that owns the logic (validate, embed, reduce, retrieve, mine, train, evaluate, export, release) and
returns a small JSON-able dict that the component copies into its output artifact's metadata (lineage included), so
KFP caching and the UI follow content. ``params`` is always the full params dict (``hardneg.config.load_params``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.errors import DataValidationError, GateFailedError, HardnegError
from hardneg.hw import use_bf16

log = logging.getLogger(__name__)

EMBED_SHARD_FILE = "shard.json"


# ------------------------------------------------------------------------------------ what every adapter does


def use_lineage(lineage_json: str) -> dict[str, Any]:
    """Pin the run's lineage in this process and return it: a component's container has no git checkout and no
    data.dvc, so hardneg.lineage reads ``HARDNEG_DATA_VERSION`` / ``HARDNEG_GIT_COMMIT`` instead."""
    lineage = json.loads(lineage_json)
    os.environ.update(
        {"HARDNEG_DATA_VERSION": lineage["data_version"], "HARDNEG_GIT_COMMIT": lineage["git_commit"]}
    )
    return lineage


def record_metrics(metrics: Any, values: Mapping[str, Any]) -> None:
    """Log the numeric ``values`` on a KFP ``Metrics`` artifact and write all of them to its file (KFP's local
    cache misses on a Metrics artifact whose file was never written)."""
    for k, v in values.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, v)
    with open(metrics.path, "w", encoding="utf-8") as fh:
        json.dump(values, fh)


# --------------------------------------------------------------------------------------------------------- fetch


def fetch_data_stage(
    dvc_repo: str, rev: str | None, path: str, out_dir: str | os.PathLike, expected_version: str | None = None
) -> dict[str, Any]:
    """Materialise the DVC-tracked dataset ``path`` of ``dvc_repo`` (a local checkout or a git URL) at ``rev``
    (None/"" = workspace) into ``out_dir``. The DVC remote's credentials come from the environment (a Kubernetes
    secret on a cluster). Returns the data version (md5 of the tracked output that contains ``path``)."""
    import dvc.api

    fs = dvc.api.DVCFileSystem(dvc_repo, rev=rev or None)
    top = path.strip("/").split("/")[0]
    try:
        info = fs.info(top)
        version = str((info.get("dvc_info") or {}).get("md5") or info.get("md5") or "untracked")
        fs.get(path, str(out_dir), recursive=True)
    except FileNotFoundError as e:
        raise HardnegError(
            f"{dvc_repo}@{rev or 'workspace'}: {path} not found in the DVC-tracked data ({e})"
        ) from None
    if expected_version and version != expected_version:
        raise HardnegError(
            f"data version mismatch: {dvc_repo}@{rev or 'workspace'} has {version}, the run expected {expected_version}"
        )
    return {"data_version": version, "dvc_repo": dvc_repo, "rev": rev or "workspace", "path": path}


# ------------------------------------------------------------------------------------------------------ validate


def validate_stage(
    data_dir: str | os.PathLike, params: Mapping[str, Any], report_path: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Validate the data; raise DataValidationError (stopping the pipeline before embedding) when it fails."""
    from hardneg.lineage import data_version
    from hardneg.validate import validate_dataset

    report = validate_dataset(data_dir, dict(params))
    summary = report.to_dict()
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(validation_markdown(summary), encoding="utf-8")
    if not report.success:
        lines = [
            f"{f.file}: {f.check}: {f.message} ({f.count} rows; e.g. {', '.join(map(str, f.examples[:3]))})"
            for f in report.failures
        ]
        raise DataValidationError(f"{data_dir} failed validation:\n  " + "\n  ".join(lines))
    return {
        "data_version": data_version(),
        "stats": summary.get("stats", {}),
        "warnings": len(summary.get("warnings", [])),
    }


def validation_markdown(summary: Mapping[str, Any]) -> str:
    rows = ["| file | check | rows | examples | message |", "|---|---|---|---|---|"]
    for f in list(summary.get("failures", [])) + list(summary.get("warnings", [])):
        rows.append(
            f"| {f['file']} | {f['check']} | {f['count']} | {', '.join(map(str, f['examples'][:3]))} | {f['message']} |"
        )
    status = "PASSED" if summary.get("success") else "FAILED"
    return (
        f"# Data validation: {status}\n\n"
        + "\n".join(rows)
        + f"\n\nStats: `{json.dumps(summary.get('stats', {}))}`\n"
    )


# --------------------------------------------------------------------------------------------------------- embed


def embed_items(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fan-out of the embed stage: one item per (model, corpus shard); ``embed.shards`` > 1 splits the corpus."""
    shards = max(1, int(params["embed"].get("shards", 1) or 1))
    return [
        {"model": dict(m), "shard": s, "num_shards": shards}
        for m in params["embed"]["models"]
        for s in range(shards)
    ]


def embed_stage(
    data_dir: str | os.PathLike,
    params: Mapping[str, Any],
    item: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Embed one model on one contiguous corpus shard (queries go with shard 0). Writes ``hardneg embed`` layout."""
    from hardneg.data import BeirDataset, load_dataset
    from hardneg.embed import embed_dataset

    ds = load_dataset(data_dir)
    shard, n = int(item.get("shard", 0)), int(item.get("num_shards", 1))
    if not 0 <= shard < n:
        raise HardnegError(f"embed shard {shard} out of range for {n} shards")
    if n > 1:
        ids = list(ds.corpus)
        lo, hi = len(ids) * shard // n, len(ids) * (shard + 1) // n
        ds = BeirDataset(
            ds.root, {d: ds.corpus[d] for d in ids[lo:hi]}, ds.queries if shard == 0 else {}, ds.qrels
        )
    p = copy.deepcopy(dict(params))
    p["embed"]["models"] = [dict(item["model"])]
    top = embed_dataset(ds, p, out_dir, progress=False)
    meta = {"shard": shard, "num_shards": n, "model": item["model"]["name"]}
    (Path(out_dir) / EMBED_SHARD_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return {
        **meta,
        "slug": top["models"][0],
        "fingerprint": top["entries"][0]["model_fingerprint"],
        "dim": top["entries"][0]["dim"],
    }


def merge_embedding_shards(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Join per-(model, shard) embed outputs into one ``hardneg embed`` folder (models in params order)."""
    import numpy as np

    from hardneg.embed import atomic_save_npy, atomic_write_json
    from hardneg.lineage import Lineage, read_lineage, write_lineage

    by_slug: dict[str, list[tuple[int, Path, dict]]] = {}
    order: list[str] = []
    for d in map(Path, shard_dirs):
        top = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        shard = (
            json.loads((d / EMBED_SHARD_FILE).read_text(encoding="utf-8"))
            if (d / EMBED_SHARD_FILE).exists()
            else {"shard": 0, "num_shards": 1}
        )
        slug = top["models"][0]
        if slug not in by_slug:
            order.append(slug)
        by_slug.setdefault(slug, []).append((int(shard["shard"]), d, top))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries, lineage = [], None
    for slug in order:
        parts = sorted(by_slug[slug], key=lambda t: t[0])
        if [s for s, *_ in parts] != list(range(len(parts))):
            raise HardnegError(f"embeddings of {slug}: shards {[s for s, *_ in parts]} are incomplete")
        docs, doc_ids = [], []
        for _, d, _ in parts:
            docs.append(np.load(d / slug / "corpus.npy"))
            doc_ids += json.loads((d / slug / "ids.json").read_text(encoding="utf-8"))["doc_ids"]
        first = parts[0][1] / slug
        query_ids = json.loads((first / "ids.json").read_text(encoding="utf-8"))["query_ids"]
        atomic_save_npy(out / slug / "corpus.npy", np.concatenate(docs))
        shutil.copyfile(first / "queries.npy", out / slug / "queries.npy")
        atomic_write_json(out / slug / "ids.json", {"doc_ids": doc_ids, "query_ids": query_ids})
        man = json.loads((first / "manifest.json").read_text(encoding="utf-8"))
        man["n_docs"] = len(doc_ids)
        atomic_write_json(out / slug / "manifest.json", man)
        entries.append(man)
        lin = read_lineage(parts[0][1])
        lineage = lin if lineage is None else lineage.derive(**lin.inputs)
    atomic_write_json(
        out / "manifest.json",
        {"models": order, "entries": entries, "corpus_sha256": entries[0].get("corpus_sha256")},
    )
    write_lineage(out, lineage or Lineage("untracked", "unknown", "none"))
    return out


# -------------------------------------------------------------------------------------------------------- reduce


def reduce_stage(
    emb_dirs: Sequence[str | os.PathLike], params: Mapping[str, Any], out_dir: str | os.PathLike
) -> dict[str, Any]:
    from hardneg.reduce import reduce_embeddings

    merged = Path(out_dir).parent / (Path(out_dir).name + ".merged-embeddings")
    try:
        merge_embedding_shards(emb_dirs, merged)
        stats = reduce_embeddings(merged, params, out_dir)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return {k: stats[k] for k in ("models", "n_components", "explained_variance_kept", "input_dim", "n_docs")}


# ---------------------------------------------------------------------------------------------- first stage


def dense_run(
    dataset, reduced_dir: str | os.PathLike, params: Mapping[str, Any], splits: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The dense first stage (exact inner product in the PCA space) for the queries of ``splits``."""
    from hardneg.evaluate import first_stage_runs

    return first_stage_runs(dataset, reduced_dir, params, splits=list(splits), bm25=False)["dense"]


# ---------------------------------------------------------------------------------------------------------- mine


def mine_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    import numpy as np

    from hardneg.data import load_dataset
    from hardneg.lineage import read_lineage
    from hardneg.mine import mine_negatives, write_outputs
    from hardneg.reduce import load_reduced

    ds = load_dataset(data_dir)
    D, doc_ids, Q, query_ids = load_reduced(reduced_dir)
    split = params["data"]["train_split"]
    rows, stats = mine_negatives(ds, np.asarray(D), doc_ids, np.asarray(Q), query_ids, split, params)
    try:
        inputs = read_lineage(reduced_dir).inputs
    except HardnegError:
        inputs = {}
    write_outputs(out_dir, rows, stats, params, inputs)
    keep = (
        "policy",
        "split",
        "pairs",
        "pairs_without_negative",
        "queries_without_negative",
        "negatives_per_pair_mean",
        "seconds",
    )
    return {k: stats[k] for k in keep if k in stats}


# --------------------------------------------------------------------------------------------------------- train


def train_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    mined_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    from hardneg.data import load_dataset
    from hardneg.mine import NEGATIVES_FILE, read_negatives
    from hardneg.train import train_reranker

    ds = load_dataset(data_dir)
    dev = dense_run(ds, reduced_dir, params, [params["data"]["dev_split"]])
    rows = read_negatives(mined_dir)
    model_dir = train_reranker(
        ds,
        rows,
        out_dir,
        params,
        dev_candidates=dev,
        negatives_file=Path(mined_dir) / NEGATIVES_FILE,
        progress=False,
    )
    tm = json.loads((Path(model_dir) / "train_metrics.json").read_text(encoding="utf-8"))
    return {k: tm[k] for k in ("steps", "seconds", "best_dev_mrr@10", "best_step") if k in tm}


# ------------------------------------------------------------------------------------------------------ evaluate


def evaluate_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Evaluate first stage, reranker and fusion on the test split (fusion weight tuned on dev), write
    ``metrics.json``/``per_query.json`` and the model's ``fusion.json``; returns the headline metrics and the gate."""
    from hardneg.data import load_dataset
    from hardneg.evaluate import CrossEncoderScorer, evaluate_reranker, write_evaluation
    from hardneg.lineage import read_lineage

    ds = load_dataset(data_dir)
    d = params["data"]
    run = dense_run(ds, reduced_dir, params, [d["dev_split"], d["test_split"]])
    scorer = CrossEncoderScorer(
        model_dir,
        max_length=int(params["train"]["max_length"]),
        bf16=use_bf16(params["train"].get("bf16", "auto")),
    )
    ev = evaluate_reranker(ds, scorer, run, params)
    write_evaluation(ev, out_dir, model_dir=model_dir, lineage=read_lineage(model_dir))
    return headline(ev.metrics, params)


def headline(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten the metrics to the numbers a pipeline run reports, and apply the quality gate:
    served (fusion) MRR@10 on test >= first stage + ``pipeline.min_gain_mrr10``."""
    systems = metrics["systems"]
    first = systems["first_stage"]["mrr@10"]
    served_name = "fusion" if "fusion" in systems else "rerank"
    served = systems[served_name]["mrr@10"]
    min_gain = float(params["pipeline"].get("min_gain_mrr10", 0.0))
    out: dict[str, Any] = {
        "first_stage_mrr@10": round(first, 4),
        "served_system": served_name,
        "served_mrr@10": round(served, 4),
        "gain_mrr@10": round(served - first, 4),
        "fusion_weight": metrics.get("fusion_weight"),
        "gate_min_gain": min_gain,
        "gate_passed": bool(served - first >= min_gain),
    }
    for name, m in systems.items():
        for k in ("mrr@3", "mrr@10", "ndcg@10", "recall@100"):
            if k in m:
                out[f"{name}/{k}"] = round(float(m[k]), 4)
    return out


# -------------------------------------------------------------------------------------------------------- export


def export_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    version: str | None = None,
) -> dict[str, Any]:
    """ONNX fp32 + int8 with parity gates on the dev first-stage candidates (raises GateFailedError)."""
    from hardneg.data import load_dataset
    from hardneg.export import DevSet, export_from_params

    ds = load_dataset(data_dir)
    dev_split = params["data"]["dev_split"]
    depth = int(params["retrieve"]["rerank_depth"])
    run = dense_run(ds, reduced_dir, params, [dev_split])
    dev = DevSet.from_beir(data_dir, split=dev_split, run=run, depth=depth)
    res = export_from_params(
        model_dir, out_dir, dict(params), dev, model_name=params["serve"]["model_name"], version=version
    )
    return {"export_dir": str(res.out_dir), "parity": res.parity}


def served_evaluation_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    export_dir: str | os.PathLike,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Evaluate what is served on the test split: the export's ``served_variant`` through
    hardneg.rerank, fused with the first stage at the weight recorded in the export's metadata (not re-tuned, so the
    dev split is not rescored)."""
    from hardneg.data import load_dataset
    from hardneg.evaluate import (
        OnnxScorer,
        combine,
        doc_texts_of,
        evaluate_run,
        query_texts_of,
        rerank_scores,
        restrict,
        top_candidates,
    )

    scorer = OnnxScorer(export_dir)  # verified export; its served_variant and recorded fusion weight
    variant, weight = scorer.reranker.variant, scorer.reranker.fusion_weight
    ds = load_dataset(data_dir)
    test_qrels = ds.split_qrels(params["data"]["test_split"])
    depth = int(params["retrieve"]["rerank_depth"])
    fs = restrict(dense_run(ds, reduced_dir, params, [params["data"]["test_split"]]), test_qrels)
    scores = rerank_scores(
        scorer,
        query_texts_of(ds),
        doc_texts_of(ds),
        top_candidates(fs, depth),
    )
    systems = {"first_stage": fs, "rerank": combine(fs, scores, depth)}
    if weight is not None:
        systems["fusion"] = combine(fs, scores, depth, float(weight))
    metrics: dict[str, Any] = {
        "split": params["data"]["test_split"],
        "rerank_depth": depth,
        "fusion_weight": weight,
        "evaluated": f"{export_dir} ({variant})",
        "systems": {name: evaluate_run(run, test_qrels).mean for name, run in systems.items()},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"variant": variant, **headline(metrics, params)}


def require_gate(summary: Mapping[str, Any]) -> None:
    if not summary.get("gate_passed", False):
        raise GateFailedError(
            f"quality gate failed: served MRR@10 {summary.get('served_mrr@10')} vs first stage "
            f"{summary.get('first_stage_mrr@10')} (need a gain >= {summary.get('gate_min_gain')})"
        )


def summary_markdown(summary: Mapping[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.items()]
    verdict = "PASSED" if summary.get("gate_passed") else "FAILED (model not exported)"
    return f"# Evaluation (test split)\n\nQuality gate: **{verdict}**\n\n" + "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------------------ register


def register_stage(
    export_dir: str | os.PathLike, params: Mapping[str, Any], version: str, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Render the canary rollout of ``version`` (kustomize overlay + lineage annotations) into ``out_dir``; the
    release history lives under the pipeline root (``<pipeline_root>/releases``)."""
    from hardneg.release import ReleaseSettings, release

    settings = ReleaseSettings.from_params(dict(params))
    settings.releases_dir = Path(params["pipeline"]["pipeline_root"]).resolve() / "releases"
    res = release(version=version, model_dir=export_dir, out=out_dir, params=dict(params), settings=settings)
    return {
        "release_dir": str(res.out_dir),
        "version": version,
        "traffic": res.release.traffic,
        "rendered": res.rendered,
    }
