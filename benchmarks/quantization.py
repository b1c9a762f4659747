"""Which dynamic-int8 settings keep a trained reranker's served ranking: fp32 vs int8 variants, side by side.

    python benchmarks/quantization.py --export-dir E --reduced-dir R [--data-dir data/scifact] [--out F]

E is an export folder (its model.onnx is re-quantised several ways), R the pipeline's reduce output (for the dense
dev first stage). Every variant reranks the same dev candidates (top rerank_depth of the dense run) through
hardneg.rerank; MRR@10 is reported on the reranker scores and on the served ranking (fused with the model's fusion
weight). Writes JSON as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "ort_defaults": {},
    "per_channel": {"per_channel": True},
    "matmul_only": {"op_types_to_quantize": ["MatMul"]},
    "matmul_only_per_channel": {"op_types_to_quantize": ["MatMul"], "per_channel": True},
    "per_channel_reduce_range": {"per_channel": True, "reduce_range": True},
    # the export's default since AVX2-only CPUs were found to saturate 8-bit weights (hardneg.export.INT8_OPTIONS)
    "matmul_only_per_channel_reduce_range": {
        "op_types_to_quantize": ["MatMul"],
        "per_channel": True,
        "reduce_range": True,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path, required=True)
    ap.add_argument("--reduced-dir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=Path("data/scifact"))
    ap.add_argument("--fusion-weight", type=float, default=None, help="default: the export's metadata")
    ap.add_argument("--max-length", type=int, default=None, help="default: the export's metadata")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quantization.json"))
    a = ap.parse_args()

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hardneg.config import load_params
    from hardneg.data import load_dataset
    from hardneg.evaluate import first_stage_runs
    from hardneg.export import DevSet, _score_dev, mrr_at_k
    from hardneg.rerank import PairScorer

    params = load_params()
    meta_file = a.export_dir / "metadata.json"
    # an export that failed its int8 gate has no metadata.json: then pass --fusion-weight and --max-length
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    weight = a.fusion_weight if a.fusion_weight is not None else (meta.get("fusion") or {}).get("weight")
    if not meta and (a.max_length is None or weight is None):
        ap.error(f"{meta_file} missing: pass --fusion-weight and --max-length")
    ds = load_dataset(a.data_dir)
    split = params["data"]["dev_split"]
    run = first_stage_runs(ds, a.reduced_dir, params, [split], bm25=False)["dense"]
    dev = DevSet.from_beir(a.data_dir, split=split, run=run, depth=int(params["retrieve"]["rerank_depth"]))
    tok, max_length = a.export_dir / "tokenizer.json", int(a.max_length or meta["max_length"])
    result = {
        "benchmark": "quantization",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "export_dir": str(a.export_dir),
        "dev": {"source": dev.source, "queries": len(dev.candidates), "pairs": dev.n_pairs},
        "fusion_weight": weight,
        "max_length": max_length,
        "variants": {},
    }

    def score(name: str, path: Path, options: dict | None) -> None:
        t = time.perf_counter()
        s = _score_dev(PairScorer(path, tok, max_length), dev)
        row = {
            "options": options,
            "mrr@10_rerank": mrr_at_k(s, dev),
            "mrr@10_served_fused": mrr_at_k(s, dev, fusion_weight=weight),
            "bytes": path.stat().st_size,
            "score_seconds": round(time.perf_counter() - t, 1),
        }
        result["variants"][name] = row
        fp32 = result["variants"].get("fp32")
        if fp32 and name != "fp32":
            row["served_drop_vs_fp32"] = fp32["mrr@10_served_fused"] - row["mrr@10_served_fused"]
        print(name, json.dumps(row), flush=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")

    score("fp32", a.export_dir / "model.onnx", None)
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS.items():
            dst = Path(tmp) / f"{name}.onnx"
            quantize_dynamic(
                str(a.export_dir / "model.onnx"), str(dst), weight_type=QuantType.QInt8, **options
            )
            score(name, dst, options)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
