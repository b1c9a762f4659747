"""Stage runners: folder in, folder out, one function per pipeline stage.

These are what the KFP components (``components/``) and ``dvc.yaml`` call; each is a few lines of glue over the
module that owns the logic (validate, embed, reduce, retrieve, mine, train, evaluate, export, release) and
returns a small JSON-able dict that the component copies into its output artifact's metadata (lineage included), so
KFP caching and the UI follow content. ``settings`` is always the typed :class:`hardneg.settings.Settings`, built once
at the door (the CLI, a KFP component) by :func:`hardneg.settings.settings`; the modules below that still read a
params dict get ``settings.params`` (the validated dict the settings were built from, defaults merged).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardneg.artifacts import FUSION_FILE
from hardneg.errors import DataValidationError, GateFailedError, HardnegError
from hardneg.settings import Settings

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
    data_dir: str | os.PathLike,
    settings: Settings,
    report_path: str | os.PathLike | None = None,
    *,
    json_out: str | os.PathLike | None = None,
    data_docs_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Validate the data; write the Markdown report (``report_path``), the JSON report (``json_out``) and GX Data
    Docs (``data_docs_dir``) when asked; raise DataValidationError (with the report as ``summary``; it stops the
    pipeline before embedding) when a check fails. Returns the data version, stats, warnings and the report."""
    from hardneg.lineage import data_version
    from hardneg.validate import validate_dataset

    report = validate_dataset(data_dir, settings.params, data_docs_dir=data_docs_dir)
    summary = report.to_dict()
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(validation_markdown(summary), encoding="utf-8")
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not report.success:
        lines = [
            f"{f.file}: {f.check}: {f.message} ({f.count} rows; e.g. {', '.join(map(str, f.examples[:3]))})"
            for f in report.failures
        ]
        raise DataValidationError(
            f"{data_dir} failed validation: {len(report.failures)} check(s) failed:\n  " + "\n  ".join(lines),
            summary,
        )
    return {
        "data_version": data_version(),
        "stats": summary.get("stats", {}),
        "warnings": len(summary.get("warnings", [])),
        "report": summary,
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


def embed_items(settings: Settings) -> list[dict[str, Any]]:
    """The fan-out of the embed stage: one item per (model, corpus shard); ``embed.shards`` > 1 splits the corpus."""
    shards = settings.embed.shards
    if shards < 1:
        raise HardnegError(f"embed.shards must be >= 1, got {shards} (params.yaml)")
    return [
        {"model": dict(m), "shard": s, "num_shards": shards}
        for m in settings.params["embed"]["models"]
        for s in range(shards)
    ]


def embed_stage(
    data_dir: str | os.PathLike,
    settings: Settings,
    item: Mapping[str, Any] | None,
    out_dir: str | os.PathLike,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Embed one model on one contiguous corpus shard (queries go with shard 0; an ``item`` of :func:`embed_items`),
    or, with ``item=None``, every model of ``embed.models`` on the whole corpus (the CLI / dvc). Writes the
    ``hardneg embed`` layout; returns the item's summary, or ``{"manifest": <top manifest>}`` for all models."""
    from hardneg.data import BeirDataset, load_dataset
    from hardneg.embed import embed_dataset

    ds = load_dataset(data_dir)
    if item is None:
        return {"manifest": embed_dataset(ds, settings.params, out_dir, progress=progress)}
    shard, n = int(item.get("shard", 0)), int(item.get("num_shards", 1))
    if not 0 <= shard < n:
        raise HardnegError(f"embed shard {shard} out of range for {n} shards")
    if n > 1:
        ids = list(ds.corpus)
        lo, hi = len(ids) * shard // n, len(ids) * (shard + 1) // n
        ds = BeirDataset(
            ds.root, {d: ds.corpus[d] for d in ids[lo:hi]}, ds.queries if shard == 0 else {}, ds.qrels
        )
    p = settings.params
    p["embed"]["models"] = [dict(item["model"])]
    top = embed_dataset(ds, p, out_dir, progress=progress)
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

    from hardneg.artifacts import atomic_save_npy, atomic_write_json, verify_checksums, write_checksums
    from hardneg.lineage import Lineage, read_lineage, write_lineage

    by_slug: dict[str, list[tuple[int, Path, dict]]] = {}
    order: list[str] = []
    for d in map(Path, shard_dirs):
        verify_checksums(d, "hardneg embed")  # a half-written or modified shard is refused
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
    write_checksums(out)
    return out


# -------------------------------------------------------------------------------------------------------- reduce


def reduce_stage(
    emb_dirs: Sequence[str | os.PathLike], settings: Settings, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """PCA over the concatenated model vectors. ``emb_dirs``: one ``hardneg embed`` folder (all models) or the
    per-(model, shard) folders of the pipeline's fan-out, merged first. Returns the reduce stats (reduce.json)."""
    from hardneg.reduce import reduce_embeddings

    if len(emb_dirs) == 1 and not (Path(emb_dirs[0]) / EMBED_SHARD_FILE).exists():
        # already one folder: nothing to merge
        return reduce_embeddings(emb_dirs[0], settings.params, out_dir)
    merged = Path(out_dir).parent / (Path(out_dir).name + ".merged-embeddings")
    try:
        merge_embedding_shards(emb_dirs, merged)
        return reduce_embeddings(merged, settings.params, out_dir)
    finally:
        shutil.rmtree(merged, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ retrieve


def retrieve_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    settings: Settings,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """The splits (dev carved / topped up from train) and the first stage of the dev and test queries, decided
    once (:mod:`hardneg.first_stage`): every later stage reads this folder. Returns ``first_stage.json`` + the split
    record."""
    from hardneg.data import load_dataset_for
    from hardneg.first_stage import write_retrieved

    params = settings.params
    ds, record = load_dataset_for(data_dir, params)
    summary = write_retrieved(ds, record, reduced_dir, params, out_dir)
    return {**summary, "splits": record}


def _split_dataset(data_dir: str | os.PathLike, retrieved: Any, settings: Settings) -> tuple[Any, dict]:
    """The dataset with the retrieve stage's train / dev split (never carved again)."""
    from hardneg.data import load_dataset_for

    return load_dataset_for(data_dir, settings.params, splits=retrieved.splits)


def _retrieved(retrieved_dir: str | os.PathLike) -> Any:
    from hardneg.first_stage import Retrieved

    return Retrieved.load(retrieved_dir)


# ---------------------------------------------------------------------------------------------------------- mine


def mine_stage(
    data_dir: str | os.PathLike,
    reduced_dir: str | os.PathLike,
    retrieved_dir: str | os.PathLike,
    settings: Settings,
    out_dir: str | os.PathLike,
    progress: bool = False,
) -> dict[str, Any]:
    """Mine negatives for the train split (the retrieve stage's) with ``mine.policy``: a :mod:`hardneg.mine` policy
    over the reduced vectors, or ``st-default`` (sentence-transformers ``mine_hard_negatives`` defaults with the
    reranker's base model, whose vectors come from the embedding cache). ``progress``: a progress bar."""
    from hardneg.lineage import read_lineage, sha256_file
    from hardneg.mine import write_outputs
    from hardneg.reduce import load_reduced

    ds, _ = _split_dataset(data_dir, _retrieved(retrieved_dir), settings)
    vectors = load_reduced(reduced_dir)
    try:
        inputs = dict(read_lineage(reduced_dir).inputs)
    except HardnegError:
        inputs = {}
    corpus_file = Path(data_dir) / "corpus.jsonl"
    want = inputs.get("corpus_sha256")
    if want and corpus_file.exists() and sha256_file(corpus_file) != want:
        raise HardnegError(
            f"{reduced_dir} was embedded from another corpus than {corpus_file}: rerun `hardneg embed` and `hardneg reduce`"
        )
    rows, stats = mine_rows(ds, vectors, settings, Path(out_dir), progress)
    write_outputs(out_dir, rows, stats, settings.params, inputs)
    return stats  # = mine_stats.json


def mine_rows(
    ds: Any,
    vectors: tuple[Any, list[str], Any, list[str]],
    settings: Settings,
    work: Path,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The negatives rows and stats of ``mine.policy`` for the train split, over the reduced ``vectors`` (D,
    doc_ids, Q, query_ids): a :mod:`hardneg.mine` policy, or ``st-default`` (its distances added in the same space).
    ``work``: scratch space for sentence-transformers' miner."""
    import numpy as np

    from hardneg.mine import mine_negatives

    D, doc_ids, Q, query_ids = vectors
    split = settings.data.train_split
    if settings.mine.policy != "st-default":
        return mine_negatives(
            ds, np.asarray(D), doc_ids, np.asarray(Q), query_ids, split, settings.params, progress=progress
        )
    from hardneg.anchors import add_distances

    rows, stats = _st_default_negatives(ds, settings, split, work)
    add_distances(rows, np.asarray(D), doc_ids, np.asarray(Q), query_ids)
    stats.update(
        split=split,
        pairs_with_negatives=sum(1 for r in rows if r["negative_ids"]),
        queries_without_negative=len(
            {r["query_id"] for r in rows} - {r["query_id"] for r in rows if r["negative_ids"]}
        ),
        negatives_per_pair_mean=round(sum(len(r["negative_ids"]) for r in rows) / max(1, len(rows)), 4),
    )
    return rows, stats


def _st_default_negatives(ds: Any, settings: Settings, split: str, out_dir: Path) -> tuple[list, dict]:
    """sentence-transformers' miner with its defaults and ``mine.num_negatives``, on the reranker's base model (the
    quality study's ``st-default`` arm); its vectors come from the embedding cache (computed by `hardneg embed` when
    the base model is an embed model; otherwise embedded once and cached)."""
    import shutil

    from hardneg.anchors import st_negatives
    from hardneg.embed import embed_texts

    name = settings.train.base_model
    mcfg = next((m for m in settings.params["embed"]["models"] if str(m["name"]) == name), {"name": name})
    from hardneg.hw import use_bf16

    emb = settings.embed
    cache, bf16 = emb.cache_dir, use_bf16(emb.bf16)
    doc_ids, query_ids = list(ds.corpus), list(ds.queries)
    D = embed_texts([ds.corpus[d].full_text for d in doc_ids], mcfg, cache, "document", False, bf16=bf16)
    Q = embed_texts([ds.queries[q].text for q in query_ids], mcfg, cache, "query", False, bf16=bf16)
    st_cache = out_dir / ".st-cache"
    try:
        return st_negatives(
            ds,
            split,
            settings.params,
            None,
            st_cache,
            relative_margin=None,
            num_negatives=settings.mine.num_negatives,
            strategy="st-default",
            vectors=(D, doc_ids, Q, query_ids),
            model_name=name,
        )
    finally:
        shutil.rmtree(st_cache, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------- train


def train_stage(
    data_dir: str | os.PathLike,
    retrieved_dir: str | os.PathLike,
    mined_dir: str | os.PathLike,
    settings: Settings,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Train the reranker of ``train.kind`` on the mined negatives (train split; dev, with the retrieve stage's
    first-stage candidates, only for checkpoint choice)."""
    from hardneg.mine import NEGATIVES_FILE, read_negatives

    retrieved = _retrieved(retrieved_dir)
    ds, split_record = _split_dataset(data_dir, retrieved, settings)
    rows = read_negatives(mined_dir)
    kind = settings.train.kind
    dev_split = settings.data.dev_split
    if kind == "bi-encoder":
        fs_dev, _ = retrieved.first_stage(ds, [dev_split])
        model_dir = _train_biencoder(ds, rows, fs_dev, settings, out_dir, Path(mined_dir) / NEGATIVES_FILE)
    elif kind == "cross-encoder":
        from hardneg.train import train_reranker

        dev = retrieved.first_stage(ds, [dev_split])[1]["runs"]["dense"]
        model_dir = train_reranker(
            ds,
            rows,
            out_dir,
            settings.params,
            dev_candidates=dev,
            negatives_file=Path(mined_dir) / NEGATIVES_FILE,
            progress=False,
        )
    else:
        raise HardnegError(f"train.kind must be bi-encoder or cross-encoder, got {kind!r} (params.yaml)")
    tm = json.loads((Path(model_dir) / "train_metrics.json").read_text(encoding="utf-8"))
    out = {k: tm[k] for k in ("steps", "stopped_by", "seconds", "best_dev_mrr@10", "best_step") if k in tm}
    return {"kind": kind, **out, "dev_queries": split_record["top_up"]["dev_queries"]}


def _dev_eval(ds, fs, settings, cfg, fixed):
    """``model -> dev MRR@10`` of the model alone over the first stage's (``fs``, dev queries) top ``eval_depth``
    (checkpoint choice)."""
    from hardneg.biencoder import encode
    from hardneg.evaluate import evaluate_run, top_candidates

    dev_q = ds.split_qrels(settings.data.dev_split)
    cand = top_candidates(fs, cfg.eval_depth, sorted(dev_q))
    docs = sorted({d for c in cand.values() for d in c})
    pos = {d: i for i, d in enumerate(docs)}
    D_fixed = None
    if fixed is not None:  # tune: query: the candidates' vectors never change during training
        di = {d: i for i, d in enumerate(fixed[1])}
        D_fixed = fixed[0][[di[d] for d in docs]]

    def dev_eval(model: Any) -> float:
        if D_fixed is not None:
            D = D_fixed
        else:
            D = encode(model, [ds.corpus[d].full_text for d in docs], bf16=cfg.bf16)
        Q = encode(model, [ds.queries[q].text for q in cand], bf16=cfg.bf16)
        run = {q: {d: float(Q[i] @ D[pos[d]]) for d in c} for i, (q, c) in enumerate(cand.items())}
        return float(evaluate_run(run, dev_q, ("mrr@10",)).mean["mrr@10"])

    return dev_eval


def _train_biencoder(ds, rows, fs_dev, settings, out_dir, negatives_file: Path) -> Path:
    from hardneg.biencoder import BiEncoderConfig, document_vectors, train_biencoder
    from hardneg.lineage import sha256_file

    cfg = BiEncoderConfig.from_params(settings)
    cache_dir = settings.embed.cache_dir
    fixed = document_vectors(ds, cfg, cache_dir) if cfg.tune == "query" else None
    return train_biencoder(
        ds,
        rows,
        out_dir,
        cfg,
        train_split=settings.data.train_split,
        dev_eval=_dev_eval(ds, fs_dev, settings, cfg, fixed) if cfg.eval_every else None,
        lineage_extra={"negatives_sha256": sha256_file(negatives_file)},
        params_for_hash=settings.params,
        doc_vectors=fixed,
    )


def make_scorer(model_dir: str | os.PathLike, settings: Settings, dataset: Any) -> Any:
    """The torch scorer of a trained model folder, by its model card: cosine for a bi-encoder (documents through the
    base model's cached vectors when it was trained with ``tune: query``), sigmoid for a cross-encoder; both truncate
    at the card's max_length (what the model was trained with)."""
    from hardneg.model_card import BI_ENCODER, TUNE_QUERY, read_card

    card = read_card(model_dir)
    if card.kind == BI_ENCODER:
        from hardneg.biencoder import BiEncoderConfig, BiEncoderScorer, document_vectors

        cfg = BiEncoderConfig.from_params(settings, base_model=card.base_model, max_length=card.max_length)
        scorer = BiEncoderScorer(model_dir, max_length=card.max_length, bf16=cfg.bf16)
        if card.tune == TUNE_QUERY:
            D, ids = document_vectors(dataset, cfg, settings.embed.cache_dir)
            scorer.preload([dataset.corpus[d].full_text for d in ids], D)
        return scorer
    from hardneg.scoring import CrossEncoderScorer
    from hardneg.train import CrossEncoderConfig

    cfg = CrossEncoderConfig.from_params(settings)
    return CrossEncoderScorer(model_dir, max_length=card.max_length, bf16=cfg.bf16)


# ------------------------------------------------------------------------------------------------------ evaluate


def evaluate_stage(
    data_dir: str | os.PathLike,
    retrieved_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: Settings,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Evaluate the first stage (the no-training baseline), the reranker and the served fusion on the test split
    (fusion weight, gate and depth chosen on dev); write ``metrics.json``, ``per_query.json`` and ``fusion.json``
    (what export serves) into ``out_dir``, never into the model folder. Returns the headline metrics and the gate."""
    from hardneg.evaluate import evaluate_reranker, write_evaluation
    from hardneg.lineage import read_lineage

    retrieved = _retrieved(retrieved_dir)
    ds, split_record = _split_dataset(data_dir, retrieved, settings)
    d = settings.data
    run, info = retrieved.first_stage(ds, [d.dev_split, d.test_split])
    ev = evaluate_reranker(
        ds, make_scorer(model_dir, settings, ds), run, settings.params, extra_first_stages=info["runs"]
    )
    from hardneg.model_card import read_card

    ev.metrics["score"] = read_card(model_dir).score
    ev.metrics["first_stage_name"] = info["name"]
    ev.metrics["first_stage_bm25_weight"] = info["bm25_weight"]
    ev.metrics["splits"] = split_record
    write_evaluation(ev, out_dir, lineage=read_lineage(model_dir))
    return headline(ev.metrics, settings)


def headline(metrics: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Flatten the metrics to the numbers a pipeline run reports, and apply the quality gate:
    served (fusion) MRR@10 on test >= first stage + ``pipeline.min_gain_mrr10``."""
    systems = metrics["systems"]
    first = systems["first_stage"]["mrr@10"]
    served_name = "fusion" if "fusion" in systems else "rerank"
    served = systems[served_name]["mrr@10"]
    min_gain = settings.pipeline.min_gain_mrr10
    out: dict[str, Any] = {
        "first_stage": metrics.get("first_stage_name", "dense"),
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
    # seen / unseen test queries (hardneg.generalization): a relevant document was / was not a training positive
    for name, by_part in (metrics.get("parts") or {}).get("test", {}).items():
        for part in ("seen", "unseen"):
            row = by_part.get(part, {})
            out[f"n/{part}"] = row.get("n", 0)
            for k in ("mrr@10", "ndcg@10"):
                if k in row:
                    out[f"{name}/{part}/{k}"] = round(float(row[k]), 4)
    # the served choice re-made without each dev fold's queries and scored on them (report only)
    for name in ("first_stage", "served"):
        for part, row in (metrics.get("gate_cv") or {}).get(name, {}).items():
            if "mrr@10" in row:
                out[f"dev_cv/{name}/{part}/mrr@10"] = round(float(row["mrr@10"]), 4)
    return out


# -------------------------------------------------------------------------------------------------------- export


def export_stage(
    data_dir: str | os.PathLike,
    retrieved_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    evaluation_dir: str | os.PathLike | None,
    settings: Settings,
    out_dir: str | os.PathLike,
    version: str | None = None,
    *,
    dev: bool = True,
) -> dict[str, Any]:
    """ONNX fp32 + int8 with parity gates (raises GateFailedError) of the model folder, serving the fusion that the
    evaluate stage chose (``evaluation_dir/fusion.json``: required; ``evaluation_dir=None`` says explicitly "no
    fusion": reranker scores only); the int8 MRR@10 gate reranks the served first stage's dev candidates at that
    depth (``dev=False``: no dev set, that gate is skipped and recorded). A ``tune: query`` bi-encoder ships the
    corpus's document vectors (params ``export.corpus_vectors``; from the embedding cache, as the evaluate stage
    scored with them: :func:`export_corpus_vectors`)."""
    from hardneg.export import DevSet, export_from_params, read_fusion_file

    fusion_file = Path(evaluation_dir) / FUSION_FILE if evaluation_dir is not None else None
    # a missing or invalid file is an error naming `hardneg evaluate`, never a silent "no fusion"
    fusion = read_fusion_file(fusion_file) if fusion_file is not None else {}
    dev_set = None
    ds = None
    if dev:
        retrieved = _retrieved(retrieved_dir)
        ds, _ = _split_dataset(data_dir, retrieved, settings)
        dev_split = settings.data.dev_split
        depth = int(fusion.get("depth") or settings.retrieve.rerank_depth)
        run, _ = retrieved.first_stage(ds, [dev_split])  # the served first stage's dev candidates
        max_queries = settings.export.parity_dev_queries
        dev_set = DevSet.from_dataset(ds, split=dev_split, run=run, depth=depth, max_queries=max_queries)
    corpus, skipped = export_corpus_vectors(data_dir, model_dir, settings, ds)
    res = export_from_params(
        model_dir,
        out_dir,
        settings.params,
        dev_set,
        model_name=settings.serve.model_name,
        version=version,
        fusion_file=fusion_file,
        corpus_vectors=corpus,
        corpus_vectors_skipped=skipped,
    )
    return {"export_dir": str(res.out_dir), "parity": res.parity, "metadata": res.metadata}


def export_corpus_vectors(
    data_dir: str | os.PathLike, model_dir: str | os.PathLike, settings: Settings, dataset: Any = None
) -> tuple[Any, str | None]:
    """The corpus vectors a ``tune: query`` bi-encoder's export ships (:class:`hardneg.export.CorpusVectors`) or
    ``None`` and why not (params ``export.corpus_vectors``, :func:`hardneg.export.corpus_vectors_decision`). They
    are the base model's document vectors of every corpus document (``Document.full_text``, the text evaluation and
    served evaluation send), read from the embedding cache exactly as :func:`make_scorer` preloads them for the
    evaluate stage. ``auto`` ships only what costs nothing: the corpus is readable, fits ``serve.doc_cache_size``
    and the cache holds every vector (``hardneg embed``, train and evaluate put them there); ``true`` embeds what
    the cache lacks (logged) and fails without a corpus."""
    from hardneg.embed import NotCachedError
    from hardneg.export import CorpusVectors, corpus_vectors_decision, portable_name
    from hardneg.model_card import read_card

    card = read_card(model_dir)
    policy = settings.export.corpus_vectors
    if policy is False:
        return None, "export.corpus_vectors: false"
    if dataset is None and card.separate_document_encoder:
        if policy == "auto" and not (Path(data_dir) / "corpus.jsonl").is_file():
            why = f"auto: no corpus at {portable_name(data_dir)}"
            log.info("no corpus vectors shipped: %s", why)
            return None, why
        from hardneg.data import load_dataset

        dataset = load_dataset(data_dir)
    n_docs = len(dataset.corpus) if dataset is not None else 0
    ship, why = corpus_vectors_decision(policy, card, n_docs, settings.serve.doc_cache_size)
    if not ship:
        log.info("no corpus vectors shipped: %s", why)
        return None, why
    from hardneg.biencoder import BiEncoderConfig, document_vectors

    cfg = BiEncoderConfig.from_params(settings, base_model=card.document_encoder, max_length=card.max_length)
    stats: dict[str, Any] = {}
    try:
        vectors, ids = document_vectors(
            dataset, cfg, settings.embed.cache_dir, stats=stats, cached_only=policy == "auto"
        )
    except NotCachedError as e:
        log.info("no corpus vectors shipped: %s", e)
        # parity.json names no path of the machine that built it
        model = portable_name(str(card.document_encoder))
        return None, (
            f"auto: the embedding cache lacks corpus vectors of {model} at max_length {card.max_length} "
            "(export.corpus_vectors: true embeds them here)"
        )
    if stats.get("rows_encoded"):
        log.warning(
            "corpus vectors: %d of %d documents were not in the embedding cache and were embedded now",
            stats["rows_encoded"],
            len(ids),
        )
    source = {
        "model": portable_name(str(card.document_encoder)),
        "model_fingerprint": stats.get("fingerprint"),
        "max_length": card.max_length,
        "precision": stats.get("precision"),
        "backend": stats.get("backend"),
        "documents": len(ids),
        "from_cache": len(ids) - int(stats.get("rows_encoded") or 0),
        "text": "Document.full_text (title + ' ' + text)",
    }
    return CorpusVectors([dataset.corpus[d].full_text for d in ids], vectors, source), None


def served_evaluation_stage(
    data_dir: str | os.PathLike,
    retrieved_dir: str | os.PathLike,
    export_dir: str | os.PathLike,
    settings: Settings,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Evaluate what is served on the test split: the export's ``served_variant`` through
    hardneg.rerank, fused with the first stage by the export's recorded fusion (weight, per-query gate, depth: not
    re-tuned, so the dev split is not rescored)."""
    from hardneg.evaluate import (
        combine,
        doc_texts_of,
        evaluate_run,
        query_texts_of,
        rerank_scores,
        restrict,
        top_candidates,
    )
    from hardneg.generalization import parts, split_ids, training_positives
    from hardneg.scoring import OnnxScorer

    # verified export; its served_variant and recorded fusion weight; a bi-encoder's document cache as params
    # serve.doc_cache_size sizes the server's, holding the export's corpus vectors when it ships them
    scorer = OnnxScorer(export_dir, doc_cache_size=settings.serve.doc_cache_size)
    variant, weight = scorer.reranker.variant, scorer.reranker.fusion_weight
    retrieved = _retrieved(retrieved_dir)
    ds, _ = _split_dataset(data_dir, retrieved, settings)
    test_qrels = ds.split_qrels(settings.data.test_split)
    fusion = scorer.reranker.metadata.get("fusion") or {}
    depth = int(fusion.get("depth") or settings.retrieve.rerank_depth)  # what evaluation chose on dev
    run, info = retrieved.first_stage(ds, [settings.data.test_split])
    fs = restrict(run, test_qrels)
    scores = rerank_scores(
        scorer,
        query_texts_of(ds),
        doc_texts_of(ds),
        top_candidates(fs, depth),
    )
    systems = {"first_stage": fs, "rerank": combine(fs, scores, depth)}
    if weight is not None:  # the served weight of each query (the export's per-query gate)
        dtext = doc_texts_of(ds)
        per_q = {}
        for q, docs in top_candidates(fs, depth).items():
            if docs:
                per_q[q] = scorer.reranker.query_weight(
                    [scores[q][d] for d in docs], [dtext[d] for d in docs]
                )
        systems["fusion"] = combine(fs, scores, depth, per_q)
    results = {name: evaluate_run(run, test_qrels) for name, run in systems.items()}
    train_split = settings.data.train_split
    ids = split_ids(test_qrels, training_positives(ds, train_split) if train_split in ds.qrels else set())
    metrics: dict[str, Any] = {
        "split": settings.data.test_split,
        "rerank_depth": depth,
        "fusion_weight": weight,
        "first_stage_name": info["name"],
        "first_stage_bm25_weight": info["bm25_weight"],
        "evaluated": f"{export_dir} ({variant})",
        # bi-encoder: where the documents' vectors came from (shipped corpus vectors: cache hits, as served)
        "doc_cache": scorer.reranker.cache_stats(),
        "systems": {name: r.mean for name, r in results.items()},
        "parts": {"test": {name: parts(r.per_query, ids) for name, r in results.items()}},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"variant": variant, **headline(metrics, settings)}


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
    export_dir: str | os.PathLike, settings: Settings, version: str, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Render the canary rollout of ``version`` (kustomize overlay + lineage annotations) into ``out_dir``; the
    release history lives under the pipeline root (``<pipeline_root>/releases``)."""
    import dataclasses

    from hardneg.release import ReleaseSettings, release

    releases = Path(settings.pipeline.pipeline_root).resolve() / "releases"
    params = settings.params
    chosen = dataclasses.replace(ReleaseSettings.from_params(params), releases_dir=releases)
    res = release(version=version, model_dir=export_dir, out=out_dir, params=params, settings=chosen)
    return {
        "release_dir": str(res.out_dir),
        "version": version,
        "traffic": res.release.traffic,
        "rendered": res.rendered,
    }
