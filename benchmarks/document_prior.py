"""Why tuning hurts unseen queries: does the tuned query tower pull every query toward the training positives?

    python benchmarks/document_prior.py [--configs default,no-wise] [--seed 13]

For each configuration (an entry of ``benchmarks/generalization_configs.yaml``: an override of params.yaml), the
shipped pipeline's negatives are mined and the query tower is trained (``hardneg.experiment``'s own mining and
``hardneg.biencoder.train_biencoder``), then the tuned and the untuned model each retrieve from the whole corpus
(the query tower against the base model's cached document vectors, as ``tune: query`` serves). Per dev / test part
(seen / unseen, ``hardneg.generalization.split_ids``) it records MRR@10 and the share of the top 10 that are
*training positives* (documents labelled relevant for a training query): a model that learned "these documents were
relevant before" rather than relevance raises that share on unseen queries, whose relevant documents are never
training positives. Labels read: training positives only (dev / test labels only score the result).
Writes ``benchmarks/results/document_prior.json`` with the CPU and commit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _offline import ROOT  # offline, quiet, this checkout importable

OUT = ROOT / "benchmarks" / "results" / "document_prior.json"


def _retrieval(q, d, ids, qs, qrels, is_tp, k: int = 10) -> dict:
    import numpy as np

    top = np.argsort(-(q @ d.T), axis=1)[:, :k]
    rr = []
    for i, qid in enumerate(qs):
        rel = {doc for doc, s in qrels[qid].items() if s > 0}
        rank = next((r + 1 for r, j in enumerate(top[i]) if ids[j] in rel), None)
        rr.append(1.0 / rank if rank else 0.0)
    return {
        "n": len(qs),
        "mrr@10": round(float(np.mean(rr)), 5),
        "top10_training_positive_share": round(float(is_tp[top].mean()), 5),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="default,no-wise")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--config", default=str(ROOT / "params.yaml"))
    ap.add_argument("--candidates", default=str(ROOT / "benchmarks" / "generalization_configs.yaml"))
    args = ap.parse_args()

    import numpy as np
    import yaml

    from hardneg.biencoder import BiEncoderConfig, document_vectors, encode, load_biencoder, train_biencoder
    from hardneg.config import load_params
    from hardneg.data import load_dataset, prepare_splits
    from hardneg.experiment import _mine
    from hardneg.generalization import split_ids, training_positives
    from hardneg.hw import cpu_info
    from hardneg.lineage import BENCHMARK_OUTPUTS, git_commit
    from hardneg.settings import merge_params, section, settings
    from hardneg.stages import embed_stage, reduce_stage

    base_params = load_params(Path(args.config))
    overrides = yaml.safe_load(Path(args.candidates).read_text(encoding="utf-8"))["configs"]
    s = settings(base_params)
    ds0 = load_dataset(
        ROOT / base_params["data"]["dir"],
        empty_documents=s.validate.empty_documents,
        empty_queries=s.validate.empty_queries,
    )
    out: dict = {
        "commit": git_commit(ROOT, ignore=BENCHMARK_OUTPUTS),
        "cpu": cpu_info(),
        "seed": args.seed,
        "configs": {},
    }
    with tempfile.TemporaryDirectory(prefix="hardneg-prior-") as tmp:
        work = Path(tmp)
        embed_stage(ROOT / base_params["data"]["dir"], s, None, work / "emb")
        reduce_stage([work / "emb"], s, work / "red")
        ds, _ = prepare_splits(ds0, base_params)
        d = section(base_params, "data")
        cfg0 = BiEncoderConfig.from_params(base_params)
        dvec, ids = document_vectors(ds, cfg0, section(base_params, "embed").cache_dir)
        tp = training_positives(ds, d.train_split)
        is_tp = np.array([i in tp for i in ids])
        out["training_positives"] = int(is_tp.sum())
        out["corpus"] = len(ids)
        base = load_biencoder(cfg0.base_model, cfg0.max_length)
        texts = {
            (split, part): (qs, [ds.queries[q].text for q in qs])
            for split in (d.dev_split, d.test_split)
            for part, qs in split_ids(ds.qrels[split], tp).items()
            if qs
        }
        out["untuned"] = {
            f"{split}/{part}": _retrieval(encode(base, t), dvec, ids, qs, ds.qrels[split], is_tp)
            for (split, part), (qs, t) in texts.items()
        }
        for name in args.configs.split(","):
            ov = {
                k: v
                for k, v in (overrides[name] or {}).items()
                if k not in ("screened_on_seeds", "reference")
            }
            p = merge_params(base_params, ov)
            p["train"]["seed"] = args.seed
            cfg = BiEncoderConfig.from_params(p)
            if cfg.tune != "query":
                raise SystemExit(f"{name}: tune: query only (documents keep the base model's vectors)")
            rows = _mine(ds, work / "red", p, work / name)
            train_biencoder(
                ds, rows, work / name / "model", cfg, train_split=d.train_split, doc_vectors=(dvec, ids)
            )
            tuned = load_biencoder(work / name / "model", cfg.max_length)
            out["configs"][name] = {
                "override": ov,
                "parts": {
                    f"{split}/{part}": _retrieval(encode(tuned, t), dvec, ids, qs, ds.qrels[split], is_tp)
                    for (split, part), (qs, t) in texts.items()
                },
            }
            print(name, json.dumps(out["configs"][name]["parts"]), flush=True)
    OUT.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
