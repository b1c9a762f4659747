#!/usr/bin/env bash
# The default-config quality run on SciFact (params.yaml as `make run` uses it): mine (hybrid) -> train (<= 15 min)
# -> evaluate on test: first stage alone vs reranked vs fused with the dev-tuned weight, reranking the dense
# (PCA-ensemble) candidates (the default) and, for reference, the BM25 candidates; paired tests in *_summary.json.
# Usage: nohup benchmarks/quality_default.sh > benchmarks/results/quality_default.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
H=.venv/bin/hardneg
R=${RUNS:-runs/scifact}
D=${DATA:-data/scifact}
B=benchmarks/results
[ -f "$R/reduced/corpus.npy" ] || { $H embed --data-dir "$D" --out "$R/embeddings" --no-progress; $H reduce --emb-dir "$R/embeddings" --out "$R/reduced"; }
[ -z "${REMINE:-}" ] || rm -f "$R/mined/negatives.jsonl"
[ -f "$R/mined/negatives.jsonl" ] || $H mine --data-dir "$D" --reduced-dir "$R/reduced" --out "$R/mined" --no-progress
$H train --data-dir "$D" --negatives "$R/mined" --reduced-dir "$R/reduced" --out "$R/model" --no-progress
$H evaluate --data-dir "$D" --model-dir "$R/model" --reduced-dir "$R/reduced" --out "$R/eval-bm25" --first-stage bm25
$H evaluate --data-dir "$D" --model-dir "$R/model" --reduced-dir "$R/reduced" --out "$R/eval"  # last: its fusion.json stays
cp "$R/model/train_metrics.json" $B/quality_default_train_metrics.json
for e in eval eval-bm25; do
  .venv/bin/python - "$R/$e" "$B/quality_default_${e//-/_}_summary.json" <<'PY'
import json, sys
from hardneg.evaluate import paired_test
ev, dst = sys.argv[1], sys.argv[2]
m = json.load(open(f"{ev}/metrics.json"))
pq = json.load(open(f"{ev}/per_query.json"))
others = [k for k in pq if k not in ("first_stage", "rerank", "fusion")]
out = {
    "metrics": m,
    "fusion_vs_first_stage": paired_test(pq["fusion"]["mrr@10"], pq["first_stage"]["mrr@10"]),
    "rerank_vs_first_stage": paired_test(pq["rerank"]["mrr@10"], pq["first_stage"]["mrr@10"]),
    **{f"fusion_vs_{o}": paired_test(pq["fusion"]["mrr@10"], pq[o]["mrr@10"]) for o in others},
}
json.dump(out, open(dst, "w"), indent=2)
print(ev, "first stage:", m.get("first_stage_name"), "fusion weight:", m.get("fusion_weight"))
for k, v in m["systems"].items():
    print(f"  {k:12s}", {a: round(b, 4) for a, b in v.items()})
for k, v in out.items():
    if k != "metrics":
        print(f"  {k}: diff {v['diff']:+.4f} p_t {v['p_ttest']:.3g} p_rand {v['p_randomization']:.3g} ci95 {v['ci95']}")
PY
done
echo done
