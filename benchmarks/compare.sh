#!/usr/bin/env bash
# The negative-strategy matrix on SciFact (params.yaml compare section; CONFIG=file to override), reusing the
# embeddings/PCA of the default run. Resumable: rerun the same command to finish missing arms.
# Usage: nohup benchmarks/compare.sh > benchmarks/results/compare.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
R=${RUNS:-runs/scifact}
OUT=${OUT:-runs/compare-scifact}
H=(.venv/bin/hardneg ${CONFIG:+-c "$CONFIG"})
mkdir -p benchmarks/results
# partial results are copied as arms finish (the JSON is rewritten after each arm)
( while sleep 30; do cp "$OUT/compare_results.json" benchmarks/results/compare_results.json 2>/dev/null || true
  cp "$OUT/compare_results.md" benchmarks/results/compare_results.md 2>/dev/null || true; done ) &
COPIER=$!
trap 'kill $COPIER 2>/dev/null || true' EXIT
"${H[@]}" compare --data-dir "${DATA:-data/scifact}" --out "$OUT" --emb-dir "$R/embeddings" --reduced-dir "$R/reduced" --no-progress "$@"
cp "$OUT/compare_results.json" benchmarks/results/compare_results.json
cp "$OUT/compare_results.md" benchmarks/results/compare_results.md
cp "$OUT/report.html" benchmarks/results/compare_report.html
echo done
