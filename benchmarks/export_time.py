"""How long the pipeline's export takes on SciFact, before and after a change, side by side in one run.

    python benchmarks/export_time.py --before be6072d [--runs runs] [--data-dir data/scifact] \
        [--order before,after] [--out benchmarks/results/export_time.json]

What is timed is what the KFP ``export_onnx`` component runs: ``hardneg.stages.export_stage`` (graphs, int8, the
parity gates, every serving candidate under ``serve.runtime: auto``) then ``served_evaluation_stage`` (the export
evaluated on test as served), on the pipeline's outputs in ``--runs`` (``model``, ``retrieved``, ``eval``: written by
``hardneg train / retrieve / evaluate``). Each side runs in its own fresh process (imports and ranx's JIT included in
``process_s``), with ``PYTHONPATH`` at that side's code: ``--before REF`` is ``git archive REF`` unpacked in a temp
folder, "after" is this checkout. Both read the same data, the same embedding cache (``embed.cache_dir`` of the
side's params.yaml, relative to this checkout) and write to temp folders. The load average is recorded around each
side (the machine is shared: compare sides of one run, not runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import hardneg
from hardneg.config import load_params
from hardneg.stages import export_stage, served_evaluation_stage
params = load_params(sys.argv[1])
import inspect
if "settings" in inspect.signature(export_stage).parameters:  # stages take typed settings since 2026-12-07
    from hardneg.settings import settings
    params = settings(params)
data, runs, out = sys.argv[2], sys.argv[3], sys.argv[4]
t1 = time.perf_counter()
res = export_stage(data, f"{runs}/retrieved", f"{runs}/model", f"{runs}/eval", params, f"{out}/onnx_model", version="bench")
t2 = time.perf_counter()
served = served_evaluation_stage(data, f"{runs}/retrieved", f"{out}/onnx_model", params, f"{out}/served_evaluation")
t3 = time.perf_counter()
p = res["parity"]
served_metrics = json.load(open(f"{out}/served_evaluation/metrics.json"))
print("RESULT " + json.dumps({
    "import_s": t1 - t0, "export_s": t2 - t1, "served_evaluation_s": t3 - t2, "export_component_s": t3 - t1,
    "parity_seconds": p.get("seconds"), "parity_timings": p.get("timings"),
    "served_variant": p["served_variant"]["served"],
    "int8": {k: p["int8"].get(k) for k in ("mrr@10_fp32", "mrr@10_int8", "mrr@10_drop", "passed", "documents")},
    "corpus_vectors": {k: (p.get("corpus_vectors") or {}).get(k) for k in ("shipped", "count", "max_l2_diff", "max_abs_cosine_diff", "passed")},
    "candidates": {k: {kk: v.get(kk) for kk in ("passed", "pairs", "max_abs_diff", "mrr@10_drop", "skipped")} for k, v in p["serving"]["candidates"].items()},
    "served_mrr@10": served["served_mrr@10"], "first_stage_mrr@10": served["first_stage_mrr@10"],
    "files": sorted(res["metadata"].get("files", {})), "hardneg": hardneg.__file__,
    "served_doc_cache": served_metrics.get("doc_cache"),
}))
"""


def run_side(name: str, code_dir: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix=f"export-{name}-") as out:
        load0 = os.getloadavg()
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-P",  # not the working directory first on sys.path: PYTHONPATH decides which code runs
                "-c",
                CHILD,
                str(code_dir / "params.yaml"),
                str(args.data_dir),
                str(args.runs),
                out,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{name}: exit {proc.returncode}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    if not Path(res["hardneg"]).resolve().is_relative_to(code_dir.resolve()):
        raise SystemExit(f"{name}: ran {res['hardneg']}, not the code in {code_dir}")
    return {
        "code": str(code_dir),
        "process_s": round(wall, 2),
        **res,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git ref of the code to compare against")
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--data-dir", type=Path, default=Path("data/scifact"))
    ap.add_argument("--order", default="before,after")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/export_time.json"))
    args = ap.parse_args()
    args.runs, args.data_dir = args.runs.resolve(), args.data_dir.resolve()
    from hardneg import hw

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout
    out: dict = {
        "command": "python benchmarks/export_time.py " + " ".join(sys.argv[1:]),
        "cpu": hw.cpu_info(),
        "before_ref": args.before,
        "after_ref": head.stdout.strip() + ("-dirty" if dirty.strip() else ""),
        "order": args.order.split(","),
        "sides": {},
    }
    with tempfile.TemporaryDirectory(prefix="hardneg-before-") as tmp:
        archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        code = {"before": Path(tmp), "after": REPO}
        for side in out["order"]:
            print(f"== {side} ({code[side]})", flush=True)
            out["sides"][side] = run_side(side, code[side], args)
            print(json.dumps(out["sides"][side], indent=1), flush=True)
    b, a = out["sides"].get("before"), out["sides"].get("after")
    if b and a:
        out["speedup"] = {
            k: round(b[k] / a[k], 2)
            for k in ("export_s", "served_evaluation_s", "export_component_s", "process_s")
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: out[k] for k in ("speedup",) if k in out}, indent=1))


if __name__ == "__main__":
    main()
