"""One configuration end to end, in memory (mine, train, evaluate the tuned and the untuned model), for the
generalisation benchmark (``benchmarks/generalization.py``): the document-disjoint folds and the choice of defaults
under the selection rule of :mod:`hardneg.generalization`. Uses the stages' own functions (first stage, miner,
trainer, evaluation), so what is measured is what ``make run`` does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hardneg.generalization import drop_candidates, exclude_documents


def _bi_scorer(model: Any, cfg: Any, fixed: tuple[Any, Sequence[str]] | None, dataset: Any) -> Any:
    from hardneg.biencoder import BiEncoderScorer

    scorer = BiEncoderScorer(model, max_length=cfg.max_length, bf16=cfg.bf16)
    if fixed is not None:
        scorer.preload([dataset.corpus[d].full_text for d in fixed[1]], fixed[0])
    return scorer


# long: one configuration end to end (first stage, mining, training, evaluation of tuned and untuned) in sequence
def run_configuration(
    dataset: Any,
    reduced_dir: str | Any,
    params: Mapping[str, Any],
    work_dir: Any,
    *,
    held_out: Iterable[str] = (),
    ignore: Mapping[str, Iterable[str]] | None = None,
    untuned: bool = True,
) -> dict[str, Any]:
    """Mine (``mine.policy``), train (``train.*``) and evaluate one configuration on ``dataset``'s splits as every
    stage sees them (dev carved / topped up from train). ``held_out`` documents are never trained on (folds);
    ``ignore``: per query, documents left out of its candidates. Returns ``{"dev": {system: parts},
    "test": {system: parts}, "fusion_weight", "train": {...}}`` with systems ``no_training`` (the first stage),
    ``tuned_alone`` (the tuned model reranking the first stage's candidates), ``served`` (fused, weight on dev) and,
    with ``untuned``, ``untuned_alone`` / ``untuned_served``."""
    import json
    import shutil
    import time
    from pathlib import Path

    from hardneg.biencoder import BiEncoderConfig, document_vectors, load_biencoder, train_biencoder
    from hardneg.data import prepare_splits
    from hardneg.evaluate import evaluate_reranker
    from hardneg.first_stage import compute as first_stage
    from hardneg.settings import section

    t0 = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ds, record = prepare_splits(dataset, params)
    d = section(params, "data")
    run, info = first_stage(ds, reduced_dir, params, [d.dev_split, d.test_split])
    if ignore:
        run = drop_candidates(run, ignore)
    cfg = BiEncoderConfig.from_params(params)
    fixed = document_vectors(ds, cfg, section(params, "embed").cache_dir) if cfg.tune == "query" else None
    rows = _mine(ds, reduced_dir, params, work)
    rows = exclude_documents(rows, held_out)
    mdir = work / "model"
    train_biencoder(ds, rows, mdir, cfg, train_split=d.train_split, doc_vectors=fixed, exclude_docs=held_out)
    tm = json.loads((mdir / "train_metrics.json").read_text(encoding="utf-8"))
    out: dict[str, Any] = {
        "splits": record,
        "first_stage": {"name": info["name"], "bm25_weight": info["bm25_weight"]},
        "train": {
            k: tm[k] for k in ("steps", "planned_steps", "train_seconds", "s_per_step", "training_set")
        },
    }
    systems = {"first_stage": "no_training", "rerank": "tuned_alone", "fusion": "served"}
    ev = evaluate_reranker(ds, _bi_scorer(load_biencoder(mdir, cfg.max_length), cfg, fixed, ds), run, params)
    _collect(out, ev.metrics, systems)
    out["fusion_weight"] = ev.metrics.get("fusion_weight")
    out["fusion_gate"] = ev.metrics.get("fusion_gate")
    out["per_query"] = {systems[k]: v["mrr@10"] for k, v in ev.per_query.items() if k in systems}
    if untuned:
        base = load_biencoder(cfg.base_model, cfg.max_length)
        ev0 = evaluate_reranker(ds, _bi_scorer(base, cfg, fixed, ds), run, params)
        _collect(out, ev0.metrics, {"rerank": "untuned_alone", "fusion": "untuned_served"})
        out["per_query"].update(
            {
                n: ev0.per_query[k]["mrr@10"]
                for k, n in (("rerank", "untuned_alone"), ("fusion", "untuned_served"))
            }
        )
    shutil.rmtree(mdir, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _collect(out: dict[str, Any], metrics: Mapping[str, Any], names: Mapping[str, str]) -> None:
    for split in ("dev", "test"):
        for sys_name, by_part in (metrics.get("parts") or {}).get(split, {}).items():
            if sys_name in names:
                out.setdefault(split, {})[names[sys_name]] = by_part


def _mine(ds: Any, reduced_dir: Any, params: Mapping[str, Any], work: Any) -> list[dict[str, Any]] | None:
    """The negatives of ``mine.policy`` for the train split: the mine stage's own :func:`hardneg.stages.mine_rows`."""
    from pathlib import Path

    from hardneg.reduce import load_reduced
    from hardneg.settings import settings
    from hardneg.stages import mine_rows

    rows, _ = mine_rows(ds, load_reduced(reduced_dir), settings(params), Path(work), progress=False)
    return rows
