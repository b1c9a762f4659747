"""Bring your own corpus, as a new user would: `hardneg pipeline run --data DIR` (= `make run DATA=DIR`) on a BEIR
folder with the quirks of published datasets, in a throwaway clone of this checkout; records what the terminal
showed, the run summary and the time in ``benchmarks/results/byo_run.json``.

``--dataset scifact-public`` (default): the bundled SciFact the way public BEIR sets are distributed: CRLF line
endings in every file, no dev split (train + test only; hardneg carves a dev split from train), and two empty
documents (dropped with a warning, ``validate.empty_documents: drop``). SciFact has no graded relevance and about one
positive per query, and we do not invent labels for it, so:

``--dataset nfcorpus``: NFCorpus exactly as BEIR publishes it (``../shared/data/nfcorpus``, or ``--nfcorpus DIR``:
CRLF, graded 1-2, ~43 positives per training query, its own dev split), copied as it is. Writes
``byo_run_nfcorpus.json``.

``--dataset public-quirks``: the synthetic collection of tests/test_public_beir.py (``make_public_beir``: CRLF, graded
qrels 0-4, 30 positives per query, empty documents, no dev split) with the real default models: it shows the plumbing
end to end (its texts are synthetic: the quality numbers mean nothing). Writes ``byo_run_public_quirks.json``.

    python benchmarks/byo_run.py [--dataset scifact-public|nfcorpus|public-quirks] [--clone /tmp/hardneg-byo] [--keep]

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


def public_quirks(dst: Path) -> dict:
    """tests/test_public_beir.py's public-collection fixture, written by its own generator (one definition)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("public_beir", REPO / "tests" / "test_public_beir.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("public_beir", mod)
    spec.loader.exec_module(mod)
    made = mod.make_public_beir(dst)
    grades = sorted({s for rows in made["qrels"].values() for _, _, s in rows})
    return {
        "crlf": True,
        "splits": sorted(made["qrels"]),
        "grades": grades,
        "positives_per_query": mod.POSITIVES,
        "empty_documents": len(mod.EMPTY_DOCS),
        "docs": len(made["docs"]),
        "queries": len(made["queries"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dataset", choices=["scifact-public", "nfcorpus", "public-quirks"], default="scifact-public"
    )
    ap.add_argument("--nfcorpus", type=Path, default=REPO.parent / "shared" / "data" / "nfcorpus")
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
    data = clone.parent / args.dataset
    shutil.rmtree(data, ignore_errors=True)
    if args.dataset == "scifact-public":
        quirks = public_layout(REPO / "data" / "scifact", data)
    elif args.dataset == "nfcorpus":
        shutil.copytree(args.nfcorpus, data)
        quirks = {
            "as_published": str(args.nfcorpus),
            "splits": sorted(p.stem for p in (data / "qrels").glob("*.tsv")),
        }
    else:
        quirks = public_quirks(data)
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [str(clone / ".venv" / "bin" / "hardneg"), "pipeline", "run", "--data", str(data)]
    cmd += ["--name", args.dataset, "--summary-json", "summary.json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    summary = json.loads((clone / "summary.json").read_text()) if (clone / "summary.json").exists() else None
    status = subprocess.run(["git", "status", "--short"], cwd=clone, capture_output=True, text=True).stdout
    result = {
        "command": f"hardneg pipeline run --data <folder> --name {args.dataset} (= make run DATA=<folder>)",
        "dataset": args.dataset,
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
    out = (
        OUT
        if args.dataset == "scifact-public"
        else OUT.with_name(f"byo_run_{args.dataset.replace('-', '_')}.json")
    )
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(p.stdout)
    print(f"exit {p.returncode} in {seconds} s; wrote {out}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
