"""Bring your own corpus, as a new user would: `hardneg pipeline run --data DIR` (= `make run DATA=DIR`) on a BEIR
folder with the quirks of published datasets, in a throwaway clone of this checkout; records what the terminal
showed, the run summary and the time in ``benchmarks/results/byo_run.json``.

The folder is built from the bundled SciFact the way public BEIR sets are distributed: CRLF line endings in every file,
no dev split (train + test only; hardneg carves a dev split from train), and two empty documents (dropped with a
warning, ``validate.empty_documents: drop``). Graded relevance and tens of positives per query are exercised on the
fixtures of tests/test_public_beir.py and tests/test_mine_readings.py (SciFact has neither; we do not invent labels).

    python benchmarks/byo_run.py [--clone /tmp/hardneg-byo] [--keep]

The embedding cache of this checkout (``.hardneg-cache``) is linked into the clone when present (the run then only
embeds what the cache lacks); the time is reported with that flag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "byo_run.json"


def public_layout(src: Path, dst: Path) -> dict:
    """SciFact as public BEIR sets ship: CRLF everywhere, no dev split, two empty documents appended."""
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus += [json.dumps({"_id": f"empty-{i}", "title": "", "text": ""}) for i in (1, 2)]
    (dst / "corpus.jsonl").write_bytes(("\r\n".join(corpus) + "\r\n").encode("utf-8"))
    queries = (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    (dst / "queries.jsonl").write_bytes(("\r\n".join(queries) + "\r\n").encode("utf-8"))
    for split in ("train", "test"):
        rows = (src / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (dst / "qrels" / f"{split}.tsv").write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8"))
    return {"crlf": True, "splits": ["train", "test"], "empty_documents_added": 2, "docs": len(corpus)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clone", type=Path, default=Path("/tmp/hardneg-byo"))
    ap.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = ap.parse_args()
    clone = args.clone
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    os.symlink(REPO / ".venv", clone / ".venv")
    cache = REPO / ".hardneg-cache"
    if cache.is_dir():
        os.symlink(cache, clone / ".hardneg-cache")
    data = clone.parent / "scifact-public"
    shutil.rmtree(data, ignore_errors=True)
    quirks = public_layout(REPO / "data" / "scifact", data)
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [str(clone / ".venv" / "bin" / "hardneg"), "pipeline", "run", "--data", str(data)]
    cmd += ["--name", "scifact-public", "--summary-json", "summary.json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    summary = json.loads((clone / "summary.json").read_text()) if (clone / "summary.json").exists() else None
    status = subprocess.run(["git", "status", "--short"], cwd=clone, capture_output=True, text=True).stdout
    result = {
        "command": "hardneg pipeline run --data <folder> --name scifact-public (= make run DATA=<folder>)",
        "commit": commit,
        "data": quirks,
        "exit_code": p.returncode,
        "seconds": seconds,
        "embedding_cache_linked": cache.is_dir(),
        "terminal": {
            "stdout_lines": len(p.stdout.splitlines()),
            "stdout": p.stdout,
            "stderr": p.stderr[-4000:],
        },
        "files_to_commit": status.splitlines(),
        "summary": summary,
        "load_avg": os.getloadavg(),
    }
    OUT.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(p.stdout)
    print(f"exit {p.returncode} in {seconds} s; wrote {OUT}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
