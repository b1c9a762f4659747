"""Mining-engine benchmark (not a test). Writes benchmarks/results/mining.json after every measurement.

Parts (select with --parts, default all):
  a  SciFact, all-MiniLM-L6-v2, same candidate depth and negatives: hardneg mining vs
     sentence_transformers.util.mine_hard_negatives (faiss on): wall time and peak RSS of the mining step with
     embeddings precomputed (both from their caches), and with embedding included (cold caches, both bf16 autocast).
  b  scale: synthetic normalised vectors (10k / 100k / 1M docs x 384 dims, 10,000 queries), hybrid policy.
  c  embedding throughput per model and backend on a SciFact sample (torch fp32 / torch bf16 / ONNX fp32 /
     ONNX int8) in docs/s, and mean cosine agreement with torch fp32 of the same model.
  d  re-mining with a new threshold after a full embed -> reduce -> mine run (CLI, cache hit), as a fraction of the
     first run's wall time.
  e  many positives per query (NFCorpus-shaped synthetic set: 3.6k docs x 128 dims, 2,590 train queries x 43
     positives, ~111k pairs): wall time and pairs with a negative of paper and hybrid under both
     mine.positive_reading values. Writes benchmarks/results/mining_scale.json (--parts e --out that file).

Every measurement that reports memory runs in its own subprocess (peak RSS = the child's ru_maxrss).
Run: .venv/bin/python benchmarks/mining.py [--parts a,b,c,d] > benchmarks/results/mining.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "all-MiniLM-L6-v2"
BENCH_CACHE = REPO / ".hardneg-cache" / "bench"  # git-ignored
TOP_K = 100  # candidate depth for both tools (ST: range_max)
NUM_NEG = 7
PERC_POS = 0.95  # ours; ST relative_margin = 1 - PERC_POS (the same TopK-PercPos filter)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def rss_now_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ================================================================================================ children


def _scifact(data_dir: str):
    from hardneg.data import load_dataset

    ds = load_dataset(data_dir)
    train = ds.split_qrels("train")
    qids = sorted(train)
    return ds, train, qids


def _guard_violations(ds, rows_q_negids) -> dict:
    """How many mined negatives are labelled positives of their query (any split) or dev/test positives."""
    allpos = ds.all_positives()
    evalpos = {
        d for s in ("dev", "test") if s in ds.qrels for docs in ds.split_qrels(s).values() for d in docs
    }
    n = lab = ev = 0
    for qid, negs in rows_q_negids:
        for d in negs:
            n += 1
            lab += d in allpos.get(qid, ())
            ev += d in evalpos
    return {"negatives_checked": n, "labelled_positive_of_query": lab, "eval_positive": ev}


def child_st(spec: dict) -> dict:
    """sentence-transformers mine_hard_negatives on SciFact train pairs (faiss, same depth/negatives)."""
    import contextlib

    ds, train, qids = _scifact(spec["data_dir"])
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from hardneg.models import resolve_model

    anchors, positives = [], []
    for q in qids:
        for d in sorted(train[q]):
            anchors.append(ds.queries[q].text)
            positives.append(ds.corpus[d].full_text)
    corpus = [doc.full_text for doc in ds.corpus.values()]
    model = SentenceTransformer(resolve_model(MODEL).path, device="cpu")
    model.max_seq_length = 256
    data = Dataset.from_dict({"anchor": anchors, "positive": positives})
    rss_setup = rss_now_mb()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if spec.get("bf16") else contextlib.nullcontext()
    t = time.perf_counter()
    with ctx:
        out = mine_hard_negatives(
            data,
            model,
            corpus=corpus,
            range_max=TOP_K,
            num_negatives=NUM_NEG,
            relative_margin=1 - PERC_POS,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=64,
            use_faiss=True,
            verbose=False,
            cache_folder=spec["cache"],
        )
    wall = time.perf_counter() - t
    text2ids: dict[str, list[str]] = {}
    for d in ds.corpus.values():
        text2ids.setdefault(d.full_text, []).append(d.id)
    q_by_text: dict[str, list[str]] = {}
    for q in qids:
        q_by_text.setdefault(ds.queries[q].text, []).append(q)
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    checks = []
    for row in out:
        ids = [i for c in neg_cols for i in text2ids.get(row[c], [])]
        for q in q_by_text.get(row["anchor"], []):
            checks.append((q, ids))
    return {
        "wall_s": round(wall, 2),
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "pairs_in": len(anchors),
        "rows_out": len(out),
        "negatives_per_row": len(neg_cols),
        "guard_check": _guard_violations(ds, checks),
    }


def child_ours(spec: dict) -> dict:
    """hardneg: embed (cache) corpus + train queries with MiniLM, then mine_negatives on the raw model space."""
    ds, train, qids = _scifact(spec["data_dir"])
    from hardneg.embed import embed_texts
    from hardneg.mine import mine_negatives

    cfg = {"name": MODEL, "max_length": 256, "batch_size": 64, "query_prompt": "", "document_prompt": ""}
    doc_ids = list(ds.corpus)
    doc_texts = [ds.corpus[d].full_text for d in doc_ids]
    params = {
        "mine": {"top_k": TOP_K, "num_negatives": NUM_NEG, "perc_pos": PERC_POS},
        "data": {"dev_split": "dev", "test_split": "test"},
    }
    rss_setup = rss_now_mb()
    t = time.perf_counter()
    st_d: dict = {}
    D = embed_texts(
        doc_texts, cfg, spec["cache"], "document", progress=False, bf16=spec.get("bf16", True), stats=st_d
    )
    Q = embed_texts(
        [ds.queries[q].text for q in qids],
        cfg,
        spec["cache"],
        "query",
        progress=False,
        bf16=spec.get("bf16", True),
    )
    t_embed = time.perf_counter() - t
    rows, stats = mine_negatives(ds, D, doc_ids, Q, qids, "train", params, policy=spec["policy"])
    wall = time.perf_counter() - t
    return {
        "wall_s": round(wall, 2),
        "embed_or_cache_load_s": round(t_embed, 2),
        "mine_s": stats["seconds"]["total"],
        "rows_encoded": st_d.get("rows_encoded"),
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "pairs": stats["pairs"],
        "pairs_with_negatives": stats["pairs_with_negatives"],
        "negatives_per_pair": stats["negatives_per_pair"],
        "rescans": stats["rescans"],
        "search_s": stats["seconds"]["search"],
        "select_s": stats["seconds"]["select"],
        "rejected": {k: v for k, v in stats["rejected"].items() if v},
        "guard_check": _guard_violations(ds, [(r["query_id"], r["negative_ids"]) for r in rows]),
    }


def child_scale(spec: dict) -> dict:
    """Synthetic clustered unit vectors; time + peak RSS of mine_negatives (hybrid) over n_docs x dim."""
    import numpy as np

    from hardneg.data import BeirDataset, Document, Query
    from hardneg.mine import mine_negatives

    n, nq, dim = int(spec["n_docs"]), int(spec["n_queries"]), int(spec["dim"])
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    n_clusters = max(10, n // 1000)
    C = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    D = np.empty((n, dim), np.float32)
    labels = rng.integers(0, n_clusters, size=n)
    for s in range(0, n, 100_000):  # in blocks: no float64 temporaries of the whole matrix
        x = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32) * np.float32(0.06)
        x += C[labels[s : s + 100_000]]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        D[s : s + 100_000] = x
    n_test = max(1, nq // 20)
    need = nq + n_test + nq // 10
    # small corpora: some documents are positives of several queries
    pos = rng.choice(n, size=need, replace=need > n)
    # a query sits between its positive and the positive's cluster centre (so cluster-mates compete with it)
    qpos = pos[: nq + n_test]
    Q = (
        D[qpos]
        + C[labels[qpos]]
        + rng.standard_normal((nq + n_test, dim), dtype=np.float32) * np.float32(0.04)
    )
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    doc_ids = [str(i) for i in range(n)]
    query_ids = [f"q{i}" for i in range(nq + n_test)]
    train = {query_ids[i]: {doc_ids[pos[i]]: 1} for i in range(nq)}
    for j, i in enumerate(range(0, nq // 10)):  # 10% of queries get a second positive (same cluster area)
        train[query_ids[i]][doc_ids[pos[nq + n_test + j]]] = 1
    test = {query_ids[nq + i]: {doc_ids[pos[nq + i]]: 1} for i in range(n_test)}
    ds = BeirDataset(
        root=Path("."),
        corpus={d: Document(d, f"synthetic document {d}") for d in doc_ids},
        queries={q: Query(q, q) for q in query_ids},
        qrels={"train": train, "test": test},
    )
    gen_s = time.perf_counter() - t
    rss_setup = rss_now_mb()
    params = {
        "mine": {"policy": spec.get("policy", "hybrid"), "top_k": TOP_K, "num_negatives": NUM_NEG},
        "data": {"dev_split": "dev", "test_split": "test"},
    }
    t = time.perf_counter()
    rows, stats = mine_negatives(ds, D, doc_ids, Q, query_ids, "train", params)
    wall = time.perf_counter() - t
    return {
        "n_docs": n,
        "n_queries_mined": stats["queries_mined"],
        "dim": dim,
        "policy": stats["policy"],
        "generate_s": round(gen_s, 2),
        "mine_wall_s": round(wall, 2),
        "search_s": stats["seconds"]["search"],
        "select_s": stats["seconds"]["select"],
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "pairs": stats["pairs"],
        "negatives_per_pair": stats["negatives_per_pair"],
        "rescans": stats["rescans"],
        "targets": {"wall_s_max_1M": 300, "peak_rss_mb_max_1M": 6144},
    }


def many_positives_dataset(
    n_docs: int, n_queries: int, n_pos: int, dim: int, seed: int = 0, n_heavy: int = 0, heavy_pos: int = 0
):
    """Synthetic corpus shaped like a public BEIR set with many graded positives per query (NFCorpus-like: 3.6k
    docs, ~43 positives per training query): topic clusters of ``n_docs / n_topics`` documents; a query sits near its
    topic centre and its positives are ``n_pos`` random documents of that topic, so the other topic members compete
    with the positives. ``n_heavy`` queries get ``heavy_pos`` extra positives from anywhere in the corpus (public
    sets have a few queries with hundreds of positives; they set the candidate depth ``top_k + guards``). Returns ``(dataset, D, doc_ids, Q, query_ids)`` (unit vectors)."""
    import numpy as np

    from hardneg.data import BeirDataset, Document, Query

    rng = np.random.default_rng(seed)
    per_topic = max(n_pos + 10, int(n_pos * 1.4))
    n_topics = max(1, n_docs // per_topic)
    C = rng.standard_normal((n_topics, dim)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    topic = np.arange(n_docs) % n_topics
    D = C[topic] + rng.standard_normal((n_docs, dim)).astype(np.float32) * np.float32(1.0 / np.sqrt(dim))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    qt = rng.integers(0, n_topics, n_queries)
    Q = C[qt] + rng.standard_normal((n_queries, dim)).astype(np.float32) * np.float32(0.8 / np.sqrt(dim))
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    members = [np.flatnonzero(topic == t) for t in range(n_topics)]
    train = {}
    for i, t in enumerate(qt):
        pos = rng.choice(members[t], size=min(n_pos, len(members[t])), replace=False)
        train[query_ids[i]] = {doc_ids[j]: int(rng.integers(1, 3)) for j in pos}  # graded 1..2
        train[query_ids[i]][doc_ids[int(rng.choice(members[(t + 1) % n_topics]))]] = (
            0  # a judged non-relevant
        )
    for i in range(min(n_heavy, n_queries)):
        for j in rng.choice(n_docs, size=min(heavy_pos, n_docs), replace=False):
            train[query_ids[i]].setdefault(doc_ids[j], 1)
    ds = BeirDataset(
        root=Path("."),
        corpus={d: Document(d, f"synthetic document {d}") for d in doc_ids},
        queries={q: Query(q, q) for q in query_ids},
        qrels={"train": train},
    )
    return ds, D, doc_ids, Q.astype(np.float32), query_ids


def child_readings(spec: dict) -> dict:
    """Selection time and yield of one policy under both ``mine.positive_reading`` values on
    :func:`many_positives_dataset` (~100k (query, positive) pairs)."""
    from hardneg.mine import mine_negatives

    t = time.perf_counter()
    ds, D, doc_ids, Q, query_ids = many_positives_dataset(
        int(spec["n_docs"]),
        int(spec["n_queries"]),
        int(spec["n_pos"]),
        int(spec["dim"]),
        n_heavy=int(spec.get("n_heavy", 0)),
        heavy_pos=int(spec.get("heavy_pos", 0)),
    )
    gen_s = time.perf_counter() - t
    out = {"generate_s": round(gen_s, 2)}
    for reading in spec["readings"]:
        params = {"mine": {"policy": spec["policy"], "top_k": TOP_K, "num_negatives": NUM_NEG}}
        over = {"positive_reading": reading} if reading != "legacy" else {}
        t = time.perf_counter()
        rows, stats = mine_negatives(ds, D, doc_ids, Q, query_ids, "train", params, progress=False, **over)
        wall = time.perf_counter() - t
        out[reading] = {
            "mine_wall_s": round(wall, 2),
            "search_s": stats["seconds"]["search"],
            "select_s": stats["seconds"]["select"],
            "pairs": stats["pairs"],
            "pairs_with_negatives": stats["pairs_with_negatives"],
            "queries_mined": stats["queries_mined"],
            "queries_without_negative": stats["queries_without_negative"],
            "rescans": stats["rescans"],
            "candidate_depth": stats["candidate_depth"],
            "readings": stats.get("readings"),
            "peak_rss_mb": peak_rss_mb(),
            "loadavg": loadavg(),
        }
        log(f"readings {spec['policy']} {reading}: {out[reading]}")
    return out


def child_throughput(spec: dict) -> dict:
    """docs/s per model x backend on a SciFact sample; cosine agreement with torch fp32 of the same model."""
    import numpy as np

    from hardneg import embed as E
    from hardneg.data import load_dataset
    from hardneg.models import ResolvedModel, resolve_model

    ds = load_dataset(spec["data_dir"])
    docs = list(ds.corpus.values())
    rng = np.random.default_rng(0)
    texts = [
        docs[i].full_text
        for i in rng.choice(len(docs), size=min(int(spec["sample"]), len(docs)), replace=False)
    ]
    tmp = Path(spec["tmp"])
    minilm_onnx = tmp / "minilm-fp32-onnx"
    try:
        _export_minilm_onnx(resolve_model(MODEL).path, minilm_onnx)
        onnx_fp32 = ResolvedModel(
            "all-MiniLM-L6-v2 (onnx fp32, exported here)",
            str(minilm_onnx / "model.onnx"),
            "onnx",
            tokenizer_path=str(minilm_onnx),
            onnx_output="last_hidden_state",
            pooling="mean",
        )
    except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
        log(f"ONNX fp32 export of {MODEL} failed: {e}")
        onnx_fp32 = None
    runs = [
        (MODEL, "torch fp32", resolve_model(MODEL), False),
        (MODEL, "torch bf16", resolve_model(MODEL), True),
        (MODEL, "onnx fp32", onnx_fp32, False),
        (MODEL, "onnx int8", resolve_model("all-MiniLM-L6-v2-int8-onnx"), False),
        ("sre-MiniLM-L6", "torch fp32", resolve_model("sre-MiniLM-L6"), False),
        ("sre-MiniLM-L6", "torch bf16", resolve_model("sre-MiniLM-L6"), True),
        ("paraphrase-MiniLM-L3-v2", "onnx fp32", resolve_model("paraphrase-MiniLM-L3-v2-onnx"), False),
    ]
    out, ref = [], {}
    for model, backend, resolved, bf16 in runs:
        if resolved is None:
            out.append({"model": model, "backend": backend, "error": "not available"})
            continue
        enc = E.load_encoder(resolved, 256, bf16)
        enc.encode(texts[:4], "", 4)  # warm-up (session / kernels)
        t = time.perf_counter()
        v = E._encode_sorted(enc, texts, "", 32, _NoBar())
        dt = time.perf_counter() - t
        row = {
            "model": model,
            "backend": backend,
            "docs": len(texts),
            "seconds": round(dt, 2),
            "docs_per_s": round(len(texts) / dt, 1),
            "loadavg": loadavg(),
        }
        if backend == "torch fp32":
            ref[model] = v
        elif model in ref:
            cos = (v * ref[model]).sum(axis=1)
            row["cosine_vs_torch_fp32"] = {
                "mean": round(float(cos.mean()), 5),
                "min": round(float(cos.min()), 5),
            }
        out.append(row)
        log(f"throughput {model} {backend}: {row['docs_per_s']} docs/s {row.get('cosine_vs_torch_fp32', '')}")
        E.clear_encoders()
    return {"sample_docs": len(texts), "max_length": 256, "batch_size": 32, "runs": out}


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _export_minilm_onnx(model_dir: str, out: Path) -> None:
    import torch
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    m = AutoModel.from_pretrained(model_dir).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 16), dtype=torch.long)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrap(m),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                n: {0: "b", 1: "s"}
                for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
            },
            opset_version=17,
            dynamo=False,
        )
    shutil.copy(Path(model_dir) / "tokenizer.json", out / "tokenizer.json")


CHILDREN = {
    "st": child_st,
    "ours": child_ours,
    "scale": child_scale,
    "throughput": child_throughput,
    "readings": child_readings,
}


# ================================================================================================= parent


def run_child(kind: str, spec: dict, timeout: int = 1200) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec)]
    t = time.perf_counter()
    la = loadavg()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=str(REPO))
    wall = round(time.perf_counter() - t, 2)
    result = None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line, flush=True)
    if p.returncode != 0 or result is None:
        return {"error": f"child {kind} exited {p.returncode}", "process_wall_s": wall, "loadavg_before": la}
    return {**result, "process_wall_s": wall, "loadavg_before": la}


class Results:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.data["meta"] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2-core CPU shared with other developers: wall times are noisy; loadavg recorded per measurement",
        }
        self.save()

    def put(self, part: str, key: str, value) -> None:
        self.data.setdefault(part, {})[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def part_a(res: Results, args, tmp: Path) -> None:
    part = "a_scifact_vs_sentence_transformers"
    res.put(
        part,
        "setup",
        {
            "model": MODEL,
            "range_max_top_k": TOP_K,
            "num_negatives": NUM_NEG,
            "perc_pos": PERC_POS,
            "st_relative_margin": round(1 - PERC_POS, 4),
            "max_length": 256,
            "split": "train",
            "faiss": "IndexFlatIP (both)",
        },
    )
    # caches outside the temp folder, so `--a-warm-only` can re-measure the mining step without re-embedding
    st_cache, our_cache = BENCH_CACHE / "st", BENCH_CACHE / "ours"
    st_spec = {"data_dir": args.data_dir, "cache": str(st_cache), "bf16": True}

    def our_spec(policy: str) -> dict:
        return {"data_dir": args.data_dir, "cache": str(our_cache), "bf16": True, "policy": policy}

    if not args.a_warm_only:
        # 1) embedding included (cold caches), both with bf16 autocast on CPU
        shutil.rmtree(st_cache, ignore_errors=True)
        shutil.rmtree(our_cache, ignore_errors=True)
        log("a: ST mine_hard_negatives, cold cache (embedding included, bf16 autocast)")
        res.put(part, "st_with_embedding_bf16", run_child("st", st_spec))
        log("a: hardneg embed + mine (hybrid), cold cache (embedding included, bf16)")
        res.put(part, "hardneg_with_embedding_bf16_hybrid", run_child("ours", our_spec("hybrid")))
    else:
        for kind, spec, cache in (("st", st_spec, st_cache), ("ours", our_spec("hybrid"), our_cache)):
            if not (cache.exists() and any(cache.rglob("*.npy"))):
                log(f"a: warming the {kind} cache (not recorded)")
                run_child(kind, spec)
    # 2) mining step only (embeddings precomputed: both load them from their cache)
    log("a: ST mining step (warm cache)")
    res.put(part, "st_mining_only", run_child("st", st_spec))
    for pol in ("positive-aware", "hybrid", "paper"):
        log(f"a: hardneg mining step (warm cache), policy {pol}")
        res.put(part, f"hardneg_mining_only_{pol}", run_child("ours", our_spec(pol)))


def part_b(res: Results, args, tmp: Path) -> None:
    part = "b_scale_synthetic"
    for n in args.scale_sizes:
        log(f"b: scale {n} docs x {args.dim} dims, {args.scale_queries} queries")
        res.put(
            part,
            f"{n}",
            run_child(
                "scale", {"n_docs": n, "n_queries": args.scale_queries, "dim": args.dim, "policy": "hybrid"}
            ),
        )


def part_c(res: Results, args, tmp: Path) -> None:
    log(f"c: embedding throughput on {args.sample} SciFact docs")
    res.put(
        "c_embedding_throughput",
        "result",
        run_child("throughput", {"data_dir": args.data_dir, "sample": args.sample, "tmp": str(tmp)}),
    )


def part_d(res: Results, args, tmp: Path) -> None:
    import yaml

    part = "d_remine_after_threshold_change"
    cache = tmp / "d-cache"
    model = {
        "name": MODEL,
        "weight": 1.0,
        "max_length": 256,
        "batch_size": 64,
        "query_prompt": "",
        "document_prompt": "",
    }
    p1 = {
        "embed": {"cache_dir": str(cache), "bf16": True, "models": [model]},
        "mine": {"policy": "hybrid", "perc_pos": 0.95},
    }
    p2 = {**p1, "mine": {"policy": "hybrid", "perc_pos": 0.90}}
    res.put(
        part,
        "setup",
        {
            "models": [MODEL],
            "note": "one model (cold embedding of 3 models would take most of the budget); full CLI runs in fresh processes",
            "first": p1["mine"],
            "second": p2["mine"],
        },
    )
    hn = str(REPO / ".venv" / "bin" / "hardneg")
    runs = {}
    for name, prm in (("first_run_cold_cache", p1), ("rerun_new_threshold", p2)):
        pf = tmp / f"{name}.yaml"
        pf.write_text(yaml.safe_dump(prm))
        steps = {}
        for step, extra in (
            ("embed", ["--data-dir", args.data_dir, "--out", str(tmp / "d-emb"), "--no-progress"]),
            ("reduce", ["--emb-dir", str(tmp / "d-emb"), "--out", str(tmp / "d-red")]),
            (
                "retrieve",
                [
                    "--data-dir",
                    args.data_dir,
                    "--reduced-dir",
                    str(tmp / "d-red"),
                    "--out",
                    str(tmp / "d-ret"),
                ],
            ),
            (
                "mine",
                [
                    "--reduced-dir",
                    str(tmp / "d-red"),
                    "--retrieved-dir",
                    str(tmp / "d-ret"),
                    "--out",
                    str(tmp / f"d-mined-{name}"),
                    "--data-dir",
                    args.data_dir,
                    "--no-progress",
                ],
            ),
        ):
            log(f"d: {name}: hardneg {step}")
            t = time.perf_counter()
            p = subprocess.run(
                [hn, "-c", str(pf), step, *extra],
                cwd=str(REPO),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            steps[step] = round(time.perf_counter() - t, 2)
            if p.returncode != 0:
                print(p.stdout[-3000:], flush=True)
                steps["error"] = f"{step} exited {p.returncode}"
                break
        steps["total_s"] = round(sum(v for k, v in steps.items() if k in ("embed", "reduce", "mine")), 2)
        runs[name] = steps
        res.put(part, name, steps)
    if "error" not in runs["first_run_cold_cache"] and "error" not in runs["rerun_new_threshold"]:
        res.put(
            part,
            "rerun_fraction_of_first",
            round(runs["rerun_new_threshold"]["total_s"] / runs["first_run_cold_cache"]["total_s"], 4),
        )


def part_e(res: Results, args, tmp: Path) -> None:
    part = "e_many_positives_per_query"
    spec = {"n_docs": 3600, "n_queries": 2590, "n_pos": 43, "dim": 128}
    res.put(part, "setup", {**spec, "top_k": TOP_K, "num_negatives": NUM_NEG, "paper_num_negatives": 1})
    for policy in ("paper", "hybrid"):
        log(f"e: {policy}, both positive readings")
        res.put(
            part,
            policy,
            run_child("readings", {**spec, "policy": policy, "readings": ["per-pair", "all-positives"]}),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c,d", help="comma-separated subset of a,b,c,d,e")
    ap.add_argument("--data-dir", default=str(REPO / "data" / "scifact"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mining.json"))
    ap.add_argument("--scale-sizes", default="10000,100000,1000000")
    ap.add_argument("--scale-queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--sample", type=int, default=256, help="docs for the throughput part")
    ap.add_argument(
        "--a-warm-only", action="store_true", help="part a: only the mining step (reuse/warm the caches)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = CHILDREN[args.child](json.loads(args.spec))
        print("RESULT " + json.dumps(result), flush=True)
        return
    args.scale_sizes = [int(x) for x in args.scale_sizes.split(",") if x]
    res = Results(Path(args.out))
    tmp = Path(tempfile.mkdtemp(prefix="hardneg-bench-"))
    t0 = time.perf_counter()
    try:
        for p in [x.strip() for x in args.parts.split(",") if x.strip()]:
            t = time.perf_counter()
            {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}[p](res, args, tmp)
            log(f"part {p} done in {time.perf_counter() - t:.0f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        res.data["meta"]["total_s"] = round(time.perf_counter() - t0, 1)
        res.data["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        res.save()
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
