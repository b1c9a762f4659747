"""The quality study, one command, resumable (rerun to finish): no-training baselines, every negative strategy x seed at
equal steps, significance, and the README table. See hardneg/quality.py for the protocol.

    python benchmarks/quality.py [--arms in-batch,random,paper] [--seeds 13,14,15] [--readme-only]

Reads the embeddings of `hardneg embed` (runs/embeddings; run it first, or `make run`), writes runs/quality/ and copies
quality.json, quality_per_query.json and quality_report.html to benchmarks/results/, then rewrites README.md's quality
block from quality.json (tests/test_readme_numbers.py checks that they agree).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=None)
    ap.add_argument("--seeds", default=None)
    ap.add_argument("--emb-dir", default=str(ROOT / "runs" / "embeddings"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    ap.add_argument(
        "--readme-only", action="store_true", help="only rewrite README's block from the committed JSON"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss", "bm25s", "sentence_transformers", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from hardneg.config import load_params
    from hardneg.quality import PER_QUERY_JSON, QUALITY_JSON, REPORT_HTML, run_study
    from hardneg.study_report import readme_table, replace_readme_block

    if not args.readme_only:
        params = load_params(ROOT / "params.yaml")
        # the evaluate stage's cross-validated dev report (evaluate.gate_cv_folds) changes no arm's number and would
        # add about a minute to each arm's evaluation: off
        params["evaluate"]["gate_cv_folds"] = 0
        run_study(
            ROOT / params["data"]["dir"],
            args.emb_dir,
            args.out,
            params,
            arms=args.arms.split(",") if args.arms else None,
            seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        for name in (QUALITY_JSON, PER_QUERY_JSON, REPORT_HTML):
            shutil.copy(Path(args.out) / name, RESULTS / name)
    q = json.loads((RESULTS / QUALITY_JSON).read_text(encoding="utf-8"))
    readme = ROOT / "README.md"
    readme.write_text(
        replace_readme_block(readme.read_text(encoding="utf-8"), readme_table(q)), encoding="utf-8"
    )
    print(readme_table(q))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
