"""What shipping the corpus's document vectors costs (params ``export.corpus_vectors``), measured on a synthetic
file and extrapolated to 1M documents.

    python benchmarks/corpus_vectors.py [--n 100000] [--dim 384] [--out benchmarks/results/corpus_vectors.json]

Writes ``n`` random unit vectors of ``dim`` dimensions under distinct texts with the export's writer
(:func:`hardneg.rerank.write_corpus_vectors`: fp16 records keyed by the text's sha256), then times what a server does
at start: sha256 of the file (its checksum is verified with the rest of the export), reading it and putting every
vector into the document cache (:meth:`hardneg.rerank.EmbeddingCache.preload`), and measures the memory that adds
(RSS and tracemalloc). Per-document numbers are scaled linearly to 1M documents (reading and inserting are linear;
the file is a fixed .npy header + ``32 + 2 x dim`` bytes per document).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/corpus_vectors.json"))
    args = ap.parse_args()
    from hardneg import hw
    from hardneg.lineage import sha256_file
    from hardneg.rerank import EmbeddingCache, read_corpus_vectors, write_corpus_vectors

    n, dim = args.n, args.dim
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    texts = [f"synthetic document {i}" for i in range(n)]
    out: dict = {
        "n": n,
        "dim": dim,
        "cpu": {k: hw.cpu_info()[k] for k in ("model", "cpus")},
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus_vectors.npy"
        t = time.perf_counter()
        write_corpus_vectors(path, texts, v)
        out["write_s"] = time.perf_counter() - t
        out["file_bytes"] = path.stat().st_size
        del v, texts
        gc.collect()
        t = time.perf_counter()
        sha256_file(path)
        out["sha256_s"] = time.perf_counter() - t
        proc = psutil.Process()
        rss0 = proc.memory_info().rss
        t = time.perf_counter()
        cache = EmbeddingCache(n)
        keys, vectors, total = read_corpus_vectors(path, cache.capacity, dim=dim)
        loaded = cache.preload(keys, vectors)
        out["load_s"] = time.perf_counter() - t
        out["loaded"] = loaded
        out["rss_added_bytes"] = proc.memory_info().rss - rss0
        assert loaded == total == n
        del cache, keys, vectors
        gc.collect()
        tracemalloc.start()  # a second load, traced (tracemalloc slows allocation: not timed)
        cache = EmbeddingCache(n)
        keys, vectors, _ = read_corpus_vectors(path, cache.capacity, dim=dim)
        cache.preload(keys, vectors)
        out["traced_bytes"], _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # the served path reads them back: one lookup of 20 documents, as a request does
        t = time.perf_counter()
        found = cache.get_many(keys[:20])
        out["lookup_20_ms"] = (time.perf_counter() - t) * 1000
        assert len(found) == 20
    per_doc = {k: out[k] / n for k in ("file_bytes", "rss_added_bytes", "traced_bytes", "load_s", "sha256_s")}
    m = 1_000_000
    out["per_document"] = per_doc
    out["at_1M"] = {
        "file_bytes": out["file_bytes"] - n * (32 + 2 * dim) + m * (32 + 2 * dim),  # + the .npy header
        "vectors_bytes": m * 2 * dim,
        "rss_bytes": round(per_doc["rss_added_bytes"] * m),
        "traced_bytes": round(per_doc["traced_bytes"] * m),
        "load_s": round(per_doc["load_s"] * m, 2),
        "sha256_s": round(per_doc["sha256_s"] * m, 2),
        "note": "extrapolated linearly from the n-document run; the server needs serve.doc_cache_size >= 1M to "
        "hold them all (the default, 50000, loads the first 50000)",
    }
    out["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
