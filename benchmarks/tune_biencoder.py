"""Choose the bi-encoder's learning rate and step count on DEV (never test): in-batch negatives only, so the choice
does not favour any mining policy. Writes benchmarks/results/tune_biencoder.json.

    python benchmarks/tune_biencoder.py [--configs LR:STEPS:LAYERS ...] [--tune query]

LAYERS = trainable top layers (``all`` = every layer).

Dev = the dev split topped up from train (data.dev_min_queries, seeded); the score is dev MRR@10 of the tuned model
alone (dense retrieval over the whole corpus). One seed (13): this is a coarse grid, not the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["2e-5:80:all", "1e-4:80:all", "1e-4:80:2", "3e-4:80:2"])
    ap.add_argument("--tune", default=None, help="query | both (default: params)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune_biencoder.json"))
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from hardneg.baselines import metrics_of
    from hardneg.biencoder import BiEncoderConfig, document_vectors, encode, load_biencoder, train_biencoder
    from hardneg.config import load_params
    from hardneg.data import load_dataset_for
    from hardneg.retrieve import dense_run

    params = load_params(ROOT / "params.yaml")
    ds, record = load_dataset_for(ROOT / params["data"]["dir"], params)
    dev = ds.split_qrels(params["data"]["dev_split"])
    base = BiEncoderConfig.from_params(params, **({"tune": args.tune} if args.tune else {}))
    fixed = document_vectors(ds, base, params["embed"].get("cache_dir"))
    qids = sorted(dev)

    def score(model) -> dict:
        D, ids = (
            fixed
            if base.tune == "query"
            else (encode(model, [ds.corpus[d].full_text for d in ds.corpus]), list(ds.corpus))
        )
        Q = encode(model, [ds.queries[q].text for q in qids])
        return metrics_of(dense_run(D, ids, Q, qids, qids, 100), dev)[0]

    write = _writer(args, base, dev, record, params)
    results = {"untuned": score(load_biencoder(base.base_model, base.max_length))}
    print("untuned dev", results["untuned"]["mrr@10"], flush=True)
    tmp = ROOT / "runs" / "tune_biencoder"
    prev = {}
    if Path(args.out).exists():  # resume: configurations already measured at this commit's params are kept
        prev = json.loads(Path(args.out).read_text(encoding="utf-8")).get("results", {})
    for spec in args.configs:
        lr_s, steps_s, layers_s = spec.split(":")
        lr, steps = float(lr_s), int(steps_s)
        layers = None if layers_s == "all" else int(layers_s)
        key = f"lr={lr:g},steps={steps},layers={layers_s}"
        if key in prev:
            results[key] = prev[key]
            continue
        # from_params ignores None overrides; replace sets them (layers None = all layers)
        cfg = BiEncoderConfig.from_params(
            params, lr=lr, max_steps=steps, eval_every=0, tune=base.tune
        ).replace(trainable_layers=layers)
        t0 = time.perf_counter()
        out = train_biencoder(ds, None, tmp / key.replace(",", "_"), cfg, doc_vectors=fixed)
        m = score(load_biencoder(out))
        results[key] = {**m, "seconds": round(time.perf_counter() - t0, 1)}
        print(key, "dev MRR@10", m["mrr@10"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
        write(results)
    write(results)
    print("best on dev:", json.loads(Path(args.out).read_text(encoding="utf-8"))["best_on_dev"])
    return 0


def _writer(args, base, dev, record, params):
    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage

    def write(results: dict) -> None:
        trained = [k for k in results if k != "untuned"]
        best = max(trained, key=lambda k: (results[k]["mrr@10"], results[k]["ndcg@10"])) if trained else None
        lin = current_lineage(None)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "what": "dev MRR@10 of the bi-encoder alone (in-batch negatives only, seed 13) per lr x steps x layers",
            "tune": base.tune,
            "dev_queries": len(dev),
            "splits": record,
            "commit": lin.git_commit,
            "params_hash": params_hash(params, ["data", "train"]),
            "results": results,
            "best_on_dev": best,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    return write


if __name__ == "__main__":
    raise SystemExit(main())
