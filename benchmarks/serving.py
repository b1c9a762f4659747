"""Serving benchmark (not a test): the served bi-encoder export, every runtime side by side, then the real server.

One command (writes benchmarks/results/serving.json after every step; the README's serving numbers come from it):

    nice .venv/bin/python benchmarks/serving.py [--export-dir DIR] > runs/benchmarks/serving.log 2>&1

1. the export: ``--export-dir`` (a ``hardneg export`` folder: metadata.json + graphs), else the newest one under
   local_outputs/*/export-onnx/ , else all-MiniLM-L6-v2 (offline weights, hardneg.models) exported as a
   bi-encoder. It is COPIED into --work-dir first (never modified) and its checksums verified.
2. matmul peaks (``peaks``, GOP/s), measured now with the served thread count, one per precision: fp32
   (numpy/OpenBLAS and torch when present, the best of the two), int8 (onnxruntime MatMulInteger, u8 x s8, the op
   the int8 graphs use) and bf16 (OpenVINO MatMul under the bf16 hint and torch bf16, the best of the two) where the
   CPU has native bf16; a precision without a peak is absent, with the reason in ``peaks_absent``.
3. ``selection``: what the server does at load under params ``serve.runtime`` (``auto``: the export's gated
   candidates timed on this machine, :func:`hardneg.runtime_choice.load_reranker`, the fastest chosen).
4. in-process, the same 1 query x 20 SciFact documents at the served max_length, for onnxruntime fp32, onnxruntime
   int8, OpenVINO f32, OpenVINO int8 (OpenVINO bf16 only where the CPU has native bf16): the miss path (document
   embeddings computed: doc cache off) and the hit path (every document cached: only the query is embedded).
   GOP/s = 2 x non-embedding parameters of the graph (ONNX initializers, minus the embedding tables) x real
   (unpadded) tokens per second (attention-score FLOPs ignored); fraction_of_peak = that / the peak of its own
   precision (bf16 by the bf16 peak). Also a probe of batching concurrent requests (8 queries in one graph call vs
   8 calls).
5. the real server (``python -m serving``, loopback, ``--runtime`` = params serve.runtime) with 1, 8 and 32 concurrent clients
   (httpx, V1, 1 x 20 documents): ``clients`` = hit path (documents drawn from a pool warmed into the cache),
   ``clients_miss`` = miss path (every request brings 20 documents never seen); latency percentiles, throughput,
   errors; server RSS at every step (growth on the hit path = leak check; the miss path grows the cache by design).
   The server batches concurrent requests (params ``serve.batch_window_ms``, ``serving/batcher.py``).
6. ``--compare-batching``: the miss path again on two fresh servers, batching across requests off (window 0) and on
   (params ``serve.batch_window_ms``), the same requests, side by side: ``batching.miss.off|on."1"|"8"|"32"``,
   ``batching.miss_8_vs_1_off|on``, and the batches each server counted (``batching.server_batches``); off/on
   alternate ``--compare-rounds`` times (default 3) and each level reports its median round.

Report contract (``--out``, default benchmarks/results/serving.json): ``peaks.{fp32,bf16,int8}`` (GOP/s; absent
where unsupported, reason in ``peaks_absent``), ``served.{runtime,precision,variant,fraction_of_peak (of its own
precision),inproc_miss_p50_ms}``, ``selection`` (``{"candidates": {key: {"p50_ms", ...} | {"skipped"}}, "chosen",
"seconds", ...}``), ``clients`` / ``clients_miss`` ``."1"|"8"|"32".throughput_pairs_s`` (and latencies), ``cpu``
(:func:`hardneg.hw.cpu_info`: model name and the matrix flags that matter); ``runtimes`` has every runtime x
precision side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SERVED_NAME = "hardneg-reranker"
N_DOCS = 20
LEVELS = (1, 8, 32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(lat_s: list[float]) -> dict[str, float]:
    a = np.asarray(lat_s) * 1000.0
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "mean_ms": round(float(a.mean()), 2),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "max_ms": round(float(a.max()), 2),
    }


class Results:
    def __init__(self, path: Path, settings: dict[str, Any]):
        from hardneg.hw import cpu_info, cpu_limit
        from hardneg.runtime_choice import native_bf16

        self.path = path
        cpu = cpu_info()
        self.data: dict[str, Any] = {
            "benchmark": "serving",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "settings": settings,
            "cpu": {**cpu, "native_bf16": native_bf16(cpu)},
            "machine": {
                "cpu_limit": cpu_limit(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_at_start": loadavg(),
            },
        }
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()


# ------------------------------------------------------------------------------------------------------ export


def find_export(args: argparse.Namespace) -> Path | None:
    if args.export_dir:
        return Path(args.export_dir)
    found = sorted(
        (REPO / "local_outputs").glob("*/export-onnx/*/metadata.json"), key=lambda p: p.stat().st_mtime
    )
    return found[-1].parent if found else None


def export_base_model(work: Path) -> Path:
    """all-MiniLM-L6-v2 (offline weights) exported as a bi-encoder (``tune: both``), when no export is around."""
    from hardneg.export import export_model
    from hardneg.model_card import ModelCard, write_card
    from hardneg.models import resolve_model

    src = work / "minilm-bi"
    if not src.exists():
        shutil.copytree(resolve_model(MODEL).path, src)
        write_card(src, ModelCard.bi_encoder(256, MODEL, "both"))
    out = work / "export-base"
    export_model(src, out, None, model_name=SERVED_NAME)
    return out


def graph_params(onnx_path: Path) -> dict[str, int]:
    """Parameters of an ONNX graph from its initializers; the embedding tables (Gather lookups, no FLOPs) apart."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    gathered = {n.input[0] for n in m.graph.node if n.op_type == "Gather"}
    total = emb = 0
    for init in m.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        total += n
        if init.name in gathered and n > 10_000:
            emb += n
    return {"total": total, "embeddings": emb, "non_embedding": total - emb}


# ------------------------------------------------------------------------------------------------- matmul peaks


def _timed(fn, seconds: float) -> tuple[int, float]:
    for _ in range(3):
        fn()
    it, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        it += 1
    return it, time.perf_counter() - t0


def matmul_peaks(threads: int, seconds: float = 3.0, n: int = 1024) -> dict[str, Any]:
    """``{"peaks": {precision: GOP/s}, "peaks_absent": {precision: why}, "peaks_detail": {...}}``: an n x n matmul
    per precision, in the op its graphs run: fp32 (numpy and torch, the best), int8 (onnxruntime MatMulInteger) and,
    only where the CPU has native bf16, bf16 (OpenVINO MatMul under the bf16 hint and torch bf16, the best)."""
    from hardneg.hw import cpu_info
    from hardneg.runtime_choice import cpu_skip_reason, native_bf16

    detail: dict[str, Any] = {"n": n, "threads": threads}
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    it, dt = _timed(lambda: a @ b, seconds)
    fp32 = {"numpy_gflops": round(2 * n**3 * it / dt / 1e9, 2)}
    bf16: dict[str, float] = {}
    cpu = cpu_info()
    try:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        it, dt = _timed(lambda: ta @ tb, seconds)
        fp32["torch_gflops"] = round(2 * n**3 * it / dt / 1e9, 2)
        if native_bf16(cpu):
            ha, hb = ta.bfloat16(), tb.bfloat16()
            it, dt = _timed(lambda: ha @ hb, seconds)
            bf16["torch_gops"] = round(2 * n**3 * it / dt / 1e9, 2)
    except ImportError:
        pass
    peaks = {"fp32": max(fp32.values())}
    detail["fp32"] = fp32
    detail["int8"] = {"onnxruntime_matmulinteger_gops": _int8_peak(threads, seconds, n)}
    peaks["int8"] = detail["int8"]["onnxruntime_matmulinteger_gops"]
    absent: dict[str, str] = {}
    if native_bf16(cpu):
        ov = _bf16_peak_openvino(threads, seconds, n)
        if isinstance(ov, str):
            detail["openvino_bf16"] = ov
        else:
            bf16["openvino_gops"] = ov
    if bf16:
        detail["bf16"] = bf16
        peaks["bf16"] = max(bf16.values())
    else:
        from hardneg.runtime_choice import Candidate

        absent["bf16"] = (
            cpu_skip_reason(Candidate("openvino", "fp32", "bf16"), cpu)
            or f"no bf16 matmul ran here ({detail.get('openvino_bf16', 'no torch, no OpenVINO')})"
        )
    return {"peaks": peaks, "peaks_absent": absent, "peaks_detail": detail}


def _bf16_peak_openvino(threads: int, seconds: float, n: int) -> float | str:
    """GOP/s of an n x n MatMul compiled by OpenVINO with INFERENCE_PRECISION_HINT bf16, or why it did not run bf16."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as e:
        return f"openvino unavailable: {e}"
    from hardneg.rerank import ov_type_name

    x = ops.parameter([n, n], ov.Type.f32, name="A")
    w = ops.constant(np.random.rand(n, n).astype(np.float32))
    model = ov.Model([ops.matmul(x, w, False, False)], [x], "matmul")
    config = {
        "INFERENCE_PRECISION_HINT": "bf16",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    compiled = ov.Core().compile_model(model, "CPU", config)
    ran = ov_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if ran != "bf16":
        return f"OpenVINO ran the bf16 hint in {ran}"
    req = compiled.create_infer_request()
    feed = {0: np.random.rand(n, n).astype(np.float32)}
    it, dt = _timed(lambda: req.infer(feed), seconds)
    return round(2 * n**3 * it / dt / 1e9, 2)


def _int8_peak(threads: int, seconds: float, n: int) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.randint(-64, 64, (n, n), dtype=np.int8), "W")
    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["Y"])],
        "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        [w],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"A": np.random.randint(0, 255, (n, n), dtype=np.uint8)}
    it, dt = _timed(lambda: s.run(None, x), seconds)
    del onnx
    return round(2 * n**3 * it / dt / 1e9, 2)


# ------------------------------------------------------------------------------------------------- in-process


def load_texts(data_dir: Path, seed: int) -> tuple[list[str], list[str]]:
    from hardneg.data import iter_corpus, iter_queries

    queries = [q.text for q in iter_queries(data_dir / "queries.jsonl")]
    docs = [d.full_text for d in iter_corpus(data_dir / "corpus.jsonl")]
    rng = random.Random(seed)
    rng.shuffle(queries)
    rng.shuffle(docs)
    return queries, docs


def make_scorer(
    export_dir: Path, variant: str, runtime: str, precision: str | None, cache: int, threads: int
):
    """The served scoring classes on one variant/runtime, built directly: OnnxReranker refuses an int8 that failed
    its export gate, which is still measured here for reference."""
    from hardneg.rerank import (
        DOC_TOKENIZER_CONFIG_FILE,
        TOKENIZER_FILE,
        VARIANT_FILES,
        CosineScorer,
        TextEncoder,
        document_graph,
        read_metadata,
    )

    meta = read_metadata(export_dir)
    ml = int(meta["max_length"])
    kw = {"runtime": runtime, "precision": precision, "intra_op_threads": threads}
    q = TextEncoder(export_dir / VARIANT_FILES[variant], export_dir / TOKENIZER_FILE, ml, **kw)
    doc = document_graph(meta, export_dir)
    d = None
    if doc is not None:
        d = TextEncoder(
            export_dir / doc["variants"][variant],
            export_dir / doc["tokenizer"],
            ml,
            tokenizer_config_path=export_dir / (doc.get("tokenizer_config") or DOC_TOKENIZER_CONFIG_FILE),
            **kw,
        )
    return CosineScorer(q, cache, d)


def tokens(scorer, reqs: list[tuple[str, list[str]]]) -> tuple[float, float]:
    """Mean real tokens per request: (query only, query + documents)."""
    q = [len(scorer.encoder.tokenizer.encode(r[0]).ids) for r in reqs]
    d = [sum(len(e.ids) for e in scorer.doc_encoder.tokenizer.encode_batch(r[1])) for r in reqs]
    return float(np.mean(q)), float(np.mean(q) + np.mean(d))


def bench(fn, reqs, min_seconds: float, min_reps: int, max_reps: int) -> dict[str, Any]:
    fn(*reqs[0])  # warm-up
    lat: list[float] = []
    t0 = time.perf_counter()
    i = 0
    while (i < min_reps or time.perf_counter() - t0 < min_seconds) and i < max_reps:
        q, d = reqs[(i + 1) % len(reqs)]
        s = time.perf_counter()
        fn(q, d)
        lat.append(time.perf_counter() - s)
        i += 1
    wall = time.perf_counter() - t0
    return {"requests": i, "seconds": round(wall, 3), "pairs_per_s": round(i * N_DOCS / wall, 2), **pct(lat)}


def in_process(
    args, res: Results, export_dir: Path, queries, docs, peaks, n_params, threads
) -> dict[str, Any]:
    from hardneg.hw import cpu_info
    from hardneg.runtime_choice import Candidate, cpu_skip_reason

    configs = [
        ("onnxruntime_fp32", "fp32", "onnxruntime", None),
        ("onnxruntime_int8", "int8", "onnxruntime", None),
        ("openvino_fp32", "fp32", "openvino", "fp32"),
        ("openvino_int8", "int8", "openvino", None),
    ]
    out: dict[str, Any] = {"threads": threads}
    no_bf16 = cpu_skip_reason(Candidate("openvino", "fp32", "bf16"), cpu_info())
    if no_bf16 is None:
        configs.append(("openvino_bf16", "fp32", "openvino", "bf16"))
    else:
        out["openvino_bf16"] = {"skipped": f"not sensible here: {no_bf16}"}
    res["runtimes"] = out
    rng = random.Random(args.seed)
    reqs = [(rng.choice(queries), rng.sample(docs, N_DOCS)) for _ in range(40)]
    pool_reqs = reqs[: args.hit_pool]  # hit path: a fixed set of documents, all cached after the warm-up
    ref = None
    for name, variant, runtime, precision in configs:
        log(f"in-process {name} ...")
        miss = make_scorer(export_dir, variant, runtime, precision, 0, threads)
        q_tok, all_tok = tokens(miss, reqs)
        out["tokens_per_request_mean"] = {"query": round(q_tok, 1), "query_plus_20_docs": round(all_tok, 1)}
        s = miss.score(*reqs[0])
        ref = s if ref is None else ref
        r: dict[str, Any] = {"variant": variant, "runtime": runtime, "precision": precision or variant}
        peak = peaks.get(r["precision"])  # each precision by its own peak (absent: no fraction)
        r["max_abs_cosine_diff_vs_onnxruntime_fp32"] = float(np.abs(s - ref).max())
        m = bench(miss.score, reqs, args.inproc_seconds, 3, 40)
        m["gops"] = round(2 * n_params * all_tok * m["requests"] / m["seconds"] / 1e9, 2)
        m["fraction_of_peak"] = round(m["gops"] / peak, 3) if peak else None
        r["miss"] = m
        hit = make_scorer(export_dir, variant, runtime, precision, 100_000, threads)
        for q, d in pool_reqs:
            hit.score(q, d)
        h = bench(hit.score, pool_reqs, args.inproc_seconds / 2, 20, 2000)
        h["gops"] = round(2 * n_params * q_tok * h["requests"] / h["seconds"] / 1e9, 2)
        h["fraction_of_peak"] = round(h["gops"] / peak, 3) if peak else None
        r["hit"] = h
        if name == "openvino_fp32" or name == "onnxruntime_fp32":
            r["batching_probe"] = batching_probe(hit.encoder, [q for q, _ in reqs[:8]])
        out[name] = r
        log(f"  miss p50 {m['p50_ms']} ms ({m['fraction_of_peak']} of peak), hit p50 {h['p50_ms']} ms")
        res.save()
        del miss, hit
    return out


def batching_probe(encoder, queries: list[str], reps: int = 30) -> dict[str, Any]:
    """Would batching concurrent requests raise throughput? 8 queries embedded one call each vs in one call."""
    encoder.embed(queries)
    t0 = time.perf_counter()
    for _ in range(reps):
        for q in queries:
            encoder.embed([q])
    one = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        encoder.embed(queries)
    batched = (time.perf_counter() - t0) / reps
    return {
        "queries": len(queries),
        "separate_ms": round(one * 1000, 2),
        "one_batch_ms": round(batched * 1000, 2),
        "speedup": round(one / batched, 2),
    }


# ------------------------------------------------------------------------------------------------------- HTTP


def unseen_documents(docs: list[str]):
    """The documents, then (a small corpus runs out) numbered copies of them: every one new to the cache."""
    if not docs:
        raise ValueError(
            "no documents left for the miss path: lower --hit-pool (it takes hit_pool x 20 documents)"
        )
    yield from docs
    for k in itertools.count(1):
        yield from (f"{d} [{k}]" for d in docs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    export_dir: Path, port: int, runtime: str, log_path: Path, batch_window_ms: float | None = None
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serving", "--model_dir", str(export_dir), "--http_port", str(port)]
    cmd += ["--host", "127.0.0.1", "--model_name", SERVED_NAME, "--runtime", runtime]
    if batch_window_ms is not None:
        cmd += ["--batch_window_ms", str(batch_window_ms)]
    fh = open(log_path, "ab")  # noqa: SIM115 - the server outlives this function
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server not ready in time")


async def load_level(
    url: str, bodies: list[bytes], concurrency: int, duration: float | None, total: int | None, timeout: float
) -> dict[str, Any]:
    """``concurrency`` clients send bodies back to back for ``duration`` s, or until ``total`` were sent."""
    import httpx

    lat: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        end = time.perf_counter() + (duration or 1e9)

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < end and (total is None or sent < total):
                body = bodies[sent % len(bodies)]
                sent += 1
                s = time.perf_counter()
                try:
                    r = await client.post(url, content=body)
                    key = None if r.status_code == 200 else f"http_{r.status_code}"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                if key is None:
                    lat.append(time.perf_counter() - s)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "ok": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "throughput_pairs_s": round(len(lat) * N_DOCS / wall, 2),
        **pct(lat),
    }


def http_bench(
    args, res: Results, export_dir: Path, runtime: str, queries, docs, work: Path
) -> dict[str, Any]:
    import httpx
    import psutil

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{SERVED_NAME}:predict"
    proc = start_server(export_dir, port, runtime, work / "server.log")
    out: dict[str, Any] = {
        "server": f"python -m serving --runtime {runtime} (127.0.0.1)",
        "payload_docs": N_DOCS,
    }
    res["http"] = out
    rss = lambda: round(server.memory_info().rss / 2**20, 1)  # noqa: E731
    try:
        out["ready_after_s"] = round(wait_ready(base, proc), 2)
        server = psutil.Process(proc.pid)
        out["rss_ready_mb"] = rss()
        rng = random.Random(args.seed + 7)
        pool = docs[: args.hit_pool * N_DOCS]  # hit path documents: warmed into the cache first
        hit_bodies = [
            json.dumps(
                {"instances": [{"query": rng.choice(queries), "documents": rng.sample(pool, N_DOCS)}]}
            ).encode()
            for _ in range(300)
        ]
        for i in range(0, len(pool), N_DOCS):  # warm-up: every pool document cached, arenas at steady state
            body = {"instances": [{"query": queries[0], "documents": pool[i : i + N_DOCS]}]}
            httpx.post(url, json=body, timeout=300).raise_for_status()
        for b in hit_bodies[:20]:
            httpx.post(url, content=b, timeout=60).raise_for_status()
        out["rss_hit_start_mb"] = rss()
        hit: dict[str, Any] = {}
        for c in LEVELS:
            log(f"HTTP hit path, {c} client(s) x {args.duration}s ...")
            lv = asyncio.run(load_level(url, hit_bodies, c, args.duration, None, args.client_timeout))
            lv["server_rss_mb"] = rss()
            hit[str(c)] = lv
            out["clients"] = hit
            log(f"  p50 {lv.get('p50_ms')} ms, {lv['throughput_pairs_s']} pairs/s, errors {lv['errors']}")
            res.save()
        out["rss_hit_end_mb"] = rss()
        out["rss_growth_hit"] = round(out["rss_hit_end_mb"] / out["rss_hit_start_mb"] - 1, 4)
        # miss path: every request brings 20 documents never sent before (the rest of the corpus)
        out["rss_miss_start_mb"] = rss()
        bodies = miss_bodies(args, rng, queries, unseen_documents(docs[len(pool) :]))
        out["clients_miss"] = {}
        miss_path(url, bodies, args, out["clients_miss"], rss, res.save)
        out["rss_end_mb"] = rss()
        out["rss_growth_miss"] = round(out["rss_end_mb"] / out["rss_miss_start_mb"] - 1, 4)
        out["rss_growth_run"] = round(out["rss_end_mb"] / out["rss_hit_start_mb"] - 1, 4)
        meta = httpx.get(f"{base}/v2/models/{SERVED_NAME}", timeout=30).json()["parameters"]
        out["server_reports"] = {
            k: meta.get(k) for k in ("runtime", "precision", "threads", "variant", "doc_cache", "selection")
        }
        res.save()
    finally:
        stop_server(proc)
    return out


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def miss_bodies(args, rng: random.Random, queries: list[str], fresh) -> dict[int, list[bytes]]:
    """Per client level, its miss-path requests: a query and 20 documents never sent before, each."""
    out: dict[int, list[bytes]] = {}
    for c in LEVELS:
        n = max(c, args.miss_requests) if c > 1 else args.miss_requests
        out[c] = [
            json.dumps(
                {
                    "instances": [
                        {"query": rng.choice(queries), "documents": [next(fresh) for _ in range(N_DOCS)]}
                    ]
                }
            ).encode()
            for _ in range(n)
        ]
    return out


def miss_path(
    url: str, bodies: dict[int, list[bytes]], args, out: dict[str, Any], rss=None, save=None
) -> None:
    """The miss path at 1, 8 and 32 clients into ``out`` (saved after each level)."""
    for c in LEVELS:
        n = len(bodies[c])
        log(f"HTTP miss path, {c} client(s) x {n} requests ...")
        lv = asyncio.run(load_level(url, bodies[c], c, None, n, args.client_timeout))
        if rss is not None:
            lv["server_rss_mb"] = rss()
        out[str(c)] = lv
        log(f"  p50 {lv.get('p50_ms')} ms, {lv['throughput_pairs_s']} pairs/s, errors {lv['errors']}")
        if save is not None:
            save()


def batching_compare(
    args, res: Results, export_dir: Path, runtime: str, queries, docs, work: Path, window_ms: float
) -> dict[str, Any]:
    """The HTTP miss path with batching across requests off (``--batch_window_ms 0``) and on (params
    ``serve.batch_window_ms``), side by side in this run: fresh servers, the same requests (documents never seen by
    either), off then on, ``--compare-rounds`` times (on shared cores one round is noisy). ``miss.off|on.<clients>``:
    the round with the median throughput at that level; ``rounds``: every round's throughputs; ``server_batches``:
    the batches each server counted in the last round (``parameters.batching``)."""
    import httpx

    rng = random.Random(args.seed + 11)
    bodies = miss_bodies(args, rng, queries, unseen_documents(list(reversed(docs))))
    out: dict[str, Any] = {"window_ms": window_ms, "payload_docs": N_DOCS, "rounds": [], "server_batches": {}}
    res["batching"] = out
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(max(1, args.compare_rounds)):
        for label, window in (("off", 0.0), ("on", window_ms)):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            url = f"{base}/v1/models/{SERVED_NAME}:predict"
            log(f"batching {label} (--batch_window_ms {window}), round {r + 1} ...")
            proc = start_server(export_dir, port, runtime, work / f"server-batching-{label}.log", window)
            try:
                wait_ready(base, proc)
                warm = {"instances": [{"query": queries[0], "documents": docs[:N_DOCS]}]}
                httpx.post(url, json=warm, timeout=300).raise_for_status()
                levels: dict[str, Any] = {}
                miss_path(url, bodies, args, levels)
                runs[label].append(levels)
                meta = httpx.get(f"{base}/v2/models/{SERVED_NAME}", timeout=30).json()["parameters"]
                out["server_batches"][label] = meta.get("batching")
            finally:
                stop_server(proc)
        out["rounds"].append(
            {label: {c: lv["throughput_pairs_s"] for c, lv in runs[label][-1].items()} for label in runs}
        )
        res.save()
    out["miss"] = {
        label: {c: _median_level([lv[c] for lv in levels]) for c in levels[0]}
        for label, levels in runs.items()
    }
    for label, lvls in out["miss"].items():
        one = lvls["1"]["throughput_pairs_s"]
        out[f"miss_8_vs_1_{label}"] = round(lvls["8"]["throughput_pairs_s"] / one, 3) if one else None
    off8 = out["miss"]["off"]["8"]["throughput_pairs_s"]
    out["miss_8_on_vs_off"] = round(out["miss"]["on"]["8"]["throughput_pairs_s"] / off8, 3) if off8 else None
    res.save()
    return out


def _median_level(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The level whose throughput is the median of ``levels`` (the lower middle one for an even count)."""
    ranked = sorted(levels, key=lambda lv: lv["throughput_pairs_s"])
    return ranked[(len(ranked) - 1) // 2]


# ------------------------------------------------------------------------------------------------------- main


def targets(data: dict[str, Any]) -> dict[str, Any]:
    served, clients = data.get("served", {}), data.get("clients", {})
    out: dict[str, Any] = {}
    f = served.get("fraction_of_peak")
    out["served_>=50%_of_peak"] = {"value": f, "met": f is not None and f >= 0.5}
    p50 = clients.get("1", {}).get("p50_ms")
    out["biencoder_warm_cache_p50_<=20ms"] = {"value_ms": p50, "met": p50 is not None and p50 <= 20}
    for path, levels in (("hit", clients), ("miss", data.get("clients_miss", {}))):
        one = levels.get("1", {}).get("throughput_pairs_s")
        for c in ("8", "32"):
            v = levels.get(c, {}).get("throughput_pairs_s")
            ratio = round(v / one, 3) if v and one else None
            out[f"{path}_{c}_clients_throughput_>=90%_of_1"] = {
                "ratio": ratio,
                "met": ratio is not None and ratio >= 0.9,
            }
    miss = data.get("clients_miss", {})
    one, eight = (miss.get(c, {}).get("throughput_pairs_s") for c in ("1", "8"))
    ratio = round(eight / one, 3) if one and eight else None
    out["miss_8_clients_>=2x_of_1"] = {"ratio": ratio, "met": ratio is not None and ratio >= 2.0}
    errs = sum(lv.get("errors", 0) for lv in [*clients.values(), *data.get("clients_miss", {}).values()])
    out["zero_errors"] = {"value": errs, "met": errs == 0}
    g = data.get("http", {}).get("rss_growth_hit")
    out["rss_growth_<10%_(hit_path)"] = {"value": g, "met": g is not None and g < 0.10}
    return out


# ------------------------------------------------------------------------------------------------------ README

README_START, README_END = "<!-- serving-numbers:start -->", "<!-- serving-numbers:end -->"


RUNTIME_NAMES = {
    "onnxruntime_fp32": "onnxruntime fp32",
    "onnxruntime_int8": "onnxruntime int8",
    "openvino_fp32": "OpenVINO f32",
    "openvino_int8": "OpenVINO int8",
    "openvino_bf16": "OpenVINO bf16",
}


def write_readme(d: dict[str, Any], readme_path: Path) -> str:
    """The README's serving block from the results (every number printed next to its JSON key; a test checks them)."""
    import re

    def v(key: str) -> Any:
        x: Any = d
        for part in re.findall(r'"[^"]+"|[^.]+', key):
            x = x[part.strip('"')]
        return x

    def n(key: str) -> str:
        return f"`{key}` = {v(key)}"

    served, sel, t, cpu = d["served"], d["selection"], d["targets"], d["cpu"]
    measured = [k for k in RUNTIME_NAMES if "miss" in d["runtimes"].get(k, {})]
    timed = [k for k, c in sel["candidates"].items() if c.get("p50_ms") is not None]
    skipped = [f"{k} ({c['skipped']})" for k, c in sel["candidates"].items() if "skipped" in c]
    peaks = ", ".join(f"{p} {n(f'peaks.{p}')}" for p in ("fp32", "bf16", "int8") if p in d["peaks"])
    absent = "; ".join(f"no {p} peak: {why}" for p, why in d.get("peaks_absent", {}).items())

    def fraction(k: str, path: str) -> str:
        f = d["runtimes"][k][path]["fraction_of_peak"]
        return (
            f" ({n(f'runtimes.{k}.{path}.fraction_of_peak')} of its precision's peak)"
            if f is not None
            else ""
        )

    miss = ",\n      ".join(
        f"{RUNTIME_NAMES[k]} {n(f'runtimes.{k}.miss.p50_ms')} ms{fraction(k, 'miss')}" for k in measured
    )
    hit = ", ".join(f"{RUNTIME_NAMES[k]} {n(f'runtimes.{k}.hit.p50_ms')} ms" for k in measured)
    cand_key = 'selection.candidates."{}".p50_ms'.format  # a quoted key (no nested quotes in 3.11 f-strings)
    timings = ", ".join(f"{k} {n(cand_key(k))} ms" for k in timed) or "nothing timed"
    probes = " / ".join(
        f"{n(f'runtimes.{k}.batching_probe.speedup')} ({RUNTIME_NAMES[k]})"
        for k in measured
        if "batching_probe" in d["runtimes"][k]
    )
    frac = (
        f"{n('served.fraction_of_peak')} of the {served['precision']} matmul peak"
        if served["fraction_of_peak"] is not None
        else f"no {served['precision']} peak measured"
    )
    met = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    batching = ""
    if "batching" in d and set(d["batching"].get("miss", {})) == {"off", "on"}:
        off, on = (
            'batching.miss.off."{}".throughput_pairs_s'.format,
            'batching.miss.on."{}".throughput_pairs_s'.format,
        )
        batching = (
            f";\n* batching across requests, cache miss over HTTP, the same requests on two fresh servers: off (window 0) "
            f"1 client {n(off(1))} / 8 clients {n(off(8))} pairs/s; on (params serve.batch_window_ms, "
            f"{n('batching.window_ms')} ms) 1 client {n(on(1))} / 8 clients {n(on(8))} pairs/s (8 vs 1: "
            f"{n('batching.miss_8_vs_1_off')} off, {n('batching.miss_8_vs_1_on')} on)"
        )
    block = f"""<!-- serving-numbers:start -->
    **Runtime.** `serve.runtime: auto` (the default, params.yaml): `hardneg export` gates every runtime x precision
    the server may choose (onnxruntime fp32 / int8, OpenVINO f32 / int8, and OpenVINO bf16 where the exporting CPU has
    native bf16; elsewhere it is recorded as skipped, with the reason) and records them in `metadata.json`
    `serving.candidates`. At load the server times those that passed and that its own CPU runs natively
    (`hardneg.runtime_choice`: 1 query + 20 documents, the cache-miss path, within `serve.select_seconds`) and serves
    the fastest; the choice, the timings and the CPU flags are logged in one line, shown in `GET /v2/models/<name>`
    (`parameters.selection`) and exported on `/metrics` (`hardneg_runtime_info`, `hardneg_runtime_candidate_p50_seconds`,
    `hardneg_cpu_info`). An explicit `--runtime` / `--precision` (or `serve.runtime: onnxruntime | openvino` at export)
    wins. OpenVINO's precision hint is always set (f32 unless bf16 was chosen). Threads follow the container's CPU
    limit (cgroup `cpu.max`, else the affinity mask); `--intra_op_threads` overrides.

    Numbers (`benchmarks/results/serving.json`, one run of `nice python benchmarks/serving.py --export-dir <export>`,
    the {d["model"].get("kind")} export, 1 query x 20 SciFact documents at max_length {d["model"].get("max_length")},
    {d["machine"]["cpu_limit"]} threads, on {cpu["model"]} (flags: {" ".join(cpu["flags"]) or "none of note"}); load
    average {d["machine"]["loadavg_at_start"][0]} at start):

    * selection at load, as the server makes it (p50 of 1 query + 20 documents): {timings}; served **{sel["chosen"]}**,
      chosen in {n("selection.seconds")} s{"; not candidates here: " + "; ".join(skipped) if skipped else ""};
    * matmul peaks of each precision in the same run (GOP/s): {peaks}{"; " + absent if absent else ""};
    * cache miss (query + 20 documents embedded), in-process p50: {miss};
    * warm document cache (only the query is embedded), in-process p50: {hit};
    * served ({served["runtime"]}, {served["precision"]}): {n("served.inproc_miss_p50_ms")} ms on the miss path, {frac};
    * over HTTP (`python -m serving`, V1, loopback), warm cache: 1 client p50 {n('clients."1".p50_ms')} ms / p95 {n('clients."1".p95_ms')} ms,
      {n('clients."1".throughput_pairs_s')} pairs/s; 8 clients {n('clients."8".throughput_pairs_s')} pairs/s; 32 clients {n('clients."32".throughput_pairs_s')} pairs/s;
      cache miss: 1 client {n('clients_miss."1".throughput_pairs_s')} pairs/s (p50 {n('clients_miss."1".p50_ms')} ms), 8 clients
      {n('clients_miss."8".throughput_pairs_s')} pairs/s, 32 clients {n('clients_miss."32".throughput_pairs_s')} pairs/s; errors {n("targets.zero_errors.value")}
      over all levels, server RSS growth on the warm-cache run {n("http.rss_growth_hit")};
    * batching probe (8 warm-cache queries in one graph call vs 8 calls), speedup {probes or "not measured"}{batching}.

    Targets (`targets` in the JSON): served >= 50% of its precision's peak {met(t["served_>=50%_of_peak"]["met"])};
    warm-cache p50 <= 20 ms over HTTP {met(t["biencoder_warm_cache_p50_<=20ms"]["met"])}; 8/32 clients >= 90% of
    1-client throughput {met(all(t[k]["met"] for k in t if "clients_throughput" in k))}; cache miss, 8 clients >= 2x
    1 client {met(t["miss_8_clients_>=2x_of_1"]["met"])} (ratio {t["miss_8_clients_>=2x_of_1"]["ratio"]}); zero errors
    {met(t["zero_errors"]["met"])}; RSS growth < 10% {met(t["rss_growth_<10%_(hit_path)"]["met"])}. Each peak is an n x n
    matmul on the same (possibly shared) cores, so "fraction of peak" is relative to what those cores gave during
    the run, not to the CPU's spec.
    <!-- serving-numbers:end -->"""
    block = "\n".join(ln[4:] if ln.startswith("    ") else ln for ln in block.splitlines())
    readme = readme_path.read_text()
    if README_START in readme:
        pre = readme.split(README_START)[0]
        post = readme.split(README_END)[1]
        readme = pre + block + post
    else:
        anchor = "[`serving/README.md`](serving/README.md).\n"
        i = readme.index(anchor, readme.index("## Serving")) + len(anchor)
        readme = readme[:i] + "\n" + block + "\n" + readme[i:]
    readme_path.write_text(readme)
    return block


def served_summary(
    selection: dict[str, Any], runtimes: dict[str, Any], peaks: dict[str, float], policy: str
) -> dict[str, Any]:
    """``served``: the candidate the server chose (``selection``), with its in-process numbers from ``runtimes``
    (``<runtime>_<precision>``) and its miss-path GOP/s as a fraction of the peak of its own precision."""
    rt, precision, variant = selection["runtime"], selection["precision"], selection["variant"]
    s = runtimes[f"{rt}_{precision}"]
    peak = peaks.get(precision)
    why = {
        "auto": "params serve.runtime auto: the fastest gated candidate timed at load on this machine (selection)",
        "explicit": f"params serve.runtime {policy}, at the export's served variant",
        "export": "the runtime the export recorded",
    }[selection["mode"]]
    return {
        "runtime": rt,
        "precision": precision,
        "variant": variant,
        "why": why,
        "fraction_of_peak": s["miss"]["fraction_of_peak"],
        "fraction_of_peak_basis": "in-process miss path (query + 20 documents embedded), "
        + (
            f"{s['miss']['gops']} GOP/s vs the {precision} matmul peak {peak}"
            if peak
            else f"no {precision} peak measured here"
        ),
        "fraction_of_peak_hit": s["hit"]["fraction_of_peak"],
        "inproc_miss_p50_ms": s["miss"]["p50_ms"],
        "inproc_hit_p50_ms": s["hit"]["p50_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--export-dir", default=None, help="a hardneg export folder (default: the newest local one)"
    )
    ap.add_argument("--data-dir", type=Path, default=REPO / "data" / "scifact")
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks" / "serving")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    ap.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="README whose serving block to rewrite (default: README.md when --out is the default)",
    )
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per HTTP hit-path level")
    ap.add_argument(
        "--miss-requests", type=int, default=8, help="requests per HTTP miss-path level (>= clients)"
    )
    ap.add_argument("--hit-pool", type=int, default=10, help="hit path: requests whose documents are cached")
    ap.add_argument("--inproc-seconds", type=float, default=10.0)
    ap.add_argument("--peak-seconds", type=float, default=3.0, help="seconds per matmul peak")
    ap.add_argument("--peak-n", type=int, default=1024, help="matmul size of the peaks")
    ap.add_argument("--client-timeout", type=float, default=600.0)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument(
        "--compare-batching",
        action="store_true",
        help="also run the HTTP miss path with batching across requests off (window 0) and on (params "
        "serve.batch_window_ms), side by side (`batching` in the JSON)",
    )
    ap.add_argument(
        "--compare-rounds", type=int, default=3, help="--compare-batching: off/on rounds (medians reported)"
    )
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--readme-only", action="store_true", help="only rewrite the README's block from --out")
    args = ap.parse_args(argv)
    default_out = args.out == REPO / "benchmarks" / "results" / "serving.json"
    readme = args.readme or (REPO / "README.md" if default_out else None)
    if args.readme_only:
        write_readme(json.loads(args.out.read_text(encoding="utf-8")), readme or REPO / "README.md")
        return 0

    from hardneg.config import load_params
    from hardneg.hw import cpu_limit
    from hardneg.rerank import VARIANT_FILES, verify_export_dir
    from hardneg.runtime_choice import load_reranker

    params = load_params(REPO / "params.yaml")
    runtime = str(params["serve"]["runtime"])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res = Results(args.out, settings)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = find_export(args)
        export_dir = work / "export"
        if src is None:
            log("no export found: exporting all-MiniLM-L6-v2 as a bi-encoder ...")
            src = export_base_model(work)
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(src, export_dir)
        meta = verify_export_dir(export_dir)
        n = graph_params(export_dir / VARIANT_FILES["fp32"])  # FLOPs do not depend on the precision
        res["model"] = {
            "export_source": str(src),
            "copied_to": str(export_dir),
            "kind": meta.get("kind"),
            "tune": meta.get("tune"),
            "base_model": meta.get("base_model"),
            "max_length": meta.get("max_length"),
            "served_variant": meta["served_variant"],
            "export_parity": meta.get("parity"),
            "export_serving": meta.get("serving"),
            "params": n,
        }
        threads = cpu_limit()
        log(f"matmul peaks ({threads} threads) ...")
        pk = matmul_peaks(threads, args.peak_seconds, args.peak_n)
        res.data.update(pk)
        peaks = pk["peaks"]
        log(f"  {peaks} (absent: {pk['peaks_absent']})")
        log(f"runtime selection as the server makes it (serve.runtime {runtime}) ...")
        reranker, sel = load_reranker(
            export_dir,
            runtime=runtime,
            budget_s=float(params["serve"]["select_seconds"]),
            intra_op_threads=threads,
            doc_cache_size=0,
        )
        del reranker
        res["selection"] = selection = sel.to_dict()
        log(f"  {sel.log_line()}")
        queries, docs = load_texts(args.data_dir, args.seed)
        rt = in_process(args, res, export_dir, queries, docs, peaks, n["non_embedding"], threads)
        res["served"] = served_summary(selection, rt, peaks, runtime)
        if not args.skip_http:
            http = http_bench(args, res, export_dir, runtime, queries, docs, work)
            res.data["clients"] = http.get("clients", {})
            res.data["clients_miss"] = http.get("clients_miss", {})
            if args.compare_batching:
                window = float(params["serve"]["batch_window_ms"])
                batching_compare(args, res, export_dir, runtime, queries, docs, work, window)
        res["targets"] = targets(res.data)
        res.data["status"] = "finished"
        res.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res.data["machine"]["loadavg_at_end"] = loadavg()
        res.save()
        log(f"targets: {json.dumps(res.data['targets'])}")
        if readme is not None and not args.skip_http:
            write_readme(res.data, readme)
    except BaseException as e:
        res.data["status"] = f"failed: {type(e).__name__}: {e}"
        res.save()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
