"""Serving benchmark (not a test). Writes benchmarks/results/serving.json after every measurement.

On SciFact texts, with a CrossEncoder built from the all-MiniLM-L6-v2 weights (num_labels=1, untrained head: throughput
and latency do not depend on the head) or a trained model (--model-dir), side by side in one run:

  1. export (hardneg.export: fp32 + int8 ONNX, parity gates) into --work-dir
  2. in-process: PyTorch CrossEncoder.predict vs ONNX fp32 vs ONNX int8 (hardneg.rerank.OnnxReranker), reranking
     1 query x 20 and 1 x 100 documents: pairs/s and p50/p95/p99 latency per request; achieved GFLOP/s
     (2 x non-embedding params x real tokens, attention score FLOPs ignored) against a torch fp32 matmul measured in
     the same run
  3. MRR@10 loss of int8 vs fp32 on dev candidates (only with --dev-run, a first-stage run.json)
  4. over HTTP: the real server process (`python -m serving`, int8, loopback) with 1, 8 and 32 concurrent clients
     (asyncio + httpx, V1 1 x 20 documents, --duration seconds each): latency percentiles, throughput, errors,
     server RSS after warm-up and at the end

Targets (reported met / not met): ONNX int8 >= 3x PyTorch pairs/s; p95 <= 150 ms for 1 x 20 at 8 clients;
zero HTTP errors; server RSS growth <= 10%.

Run: .venv/bin/python benchmarks/serving.py [--duration 60] [--model-dir DIR] [--dev-run RUN] \
        > benchmarks/results/serving.log 2>&1
"""

from __future__ import annotations

import argparse
import asyncio
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
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


class Results:
    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = path
        self.data: dict[str, Any] = {
            "benchmark": "serving",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "settings": settings,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_at_start": loadavg(),
                "note": (
                    "busy at start (1-min load average >= 0.5): other jobs may share the CPU; absolute numbers are noisy"
                    if loadavg()[0] >= 0.5
                    else "idle at start (1-min load average < 0.5); compare loadavg_at_end for what ran meanwhile"
                ),
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


# ---------------------------------------------------------------------------------------------------- workload


def load_texts(data_dir: Path, seed: int) -> tuple[list[str], list[str]]:
    from hardneg.data import iter_corpus, iter_queries

    queries = [q.text for q in iter_queries(data_dir / "queries.jsonl")]
    docs = [d.full_text for d in iter_corpus(data_dir / "corpus.jsonl")]
    rng = random.Random(seed)
    rng.shuffle(queries)
    rng.shuffle(docs)
    return queries, docs


def requests_for(
    queries: list[str], docs: list[str], n_docs: int, count: int, seed: int
) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed * 1000 + n_docs)
    return [(rng.choice(queries), rng.sample(docs, n_docs)) for _ in range(count)]


def build_model(args: argparse.Namespace, work: Path, max_length: int) -> tuple[Path, str]:
    if args.model_dir:
        return Path(args.model_dir), f"trained model {args.model_dir}"
    from sentence_transformers import CrossEncoder

    from hardneg.models import resolve_model

    out = work / "minilm-ce"
    if not (out / "config.json").exists():
        src = resolve_model(MODEL).path
        ce = CrossEncoder(src, num_labels=1, max_length=max_length, device="cpu")
        ce.save_pretrained(str(out))
    return out, f"CrossEncoder({MODEL} weights, num_labels=1, untrained head, max_length={max_length})"


def count_params(model_dir: Path) -> dict[str, int]:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model_dir), device="cpu")
    total = sum(p.numel() for p in ce.model.parameters())
    emb = sum(p.numel() for n, p in ce.model.named_parameters() if "embeddings" in n)
    return {"total": int(total), "embeddings": int(emb), "non_embedding": int(total - emb)}


def matmul_gflops(seconds: float = 3.0, n: int = 1024) -> dict[str, Any]:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    it, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        it += 1
    dt = time.perf_counter() - t0
    return {
        "n": n,
        "iterations": it,
        "seconds": round(dt, 3),
        "gflops": round(2 * n**3 * it / dt / 1e9, 2),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------- in-process


def bench_backend(
    score_fn, reqs: list[tuple[str, list[str]]], min_seconds: float, min_reps: int
) -> dict[str, Any]:
    score_fn(*reqs[0])  # warm-up (allocations, first-run graph work)
    lat, pairs, i = [], 0, 0
    t0 = time.perf_counter()
    while i < min_reps or time.perf_counter() - t0 < min_seconds:
        q, d = reqs[(i + 1) % len(reqs)]
        s = time.perf_counter()
        score_fn(q, d)
        lat.append(time.perf_counter() - s)
        pairs += len(d)
        i += 1
        if i >= len(reqs) * 4:
            break
    wall = time.perf_counter() - t0
    return {
        "requests": i,
        "pairs": pairs,
        "seconds": round(wall, 3),
        "pairs_per_s": round(pairs / wall, 2),
        **pct(lat),
    }


def tokens_per_request(tokenizer_path: Path, max_length: int, reqs: list[tuple[str, list[str]]]) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length, strategy="longest_first")
    tok.no_padding()
    n = [sum(len(e.ids) for e in tok.encode_batch([(q, x) for x in d])) for q, d in reqs[:20]]
    return float(np.mean(n))


def in_process(
    args, res: Results, model_dir: Path, export_dir: Path, queries, docs, n_params: int
) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder

    from hardneg.rerank import OnnxReranker

    ce = CrossEncoder(str(model_dir), device="cpu")
    max_length = int(ce.max_seq_length)
    default_threads = torch.get_num_threads()

    def torch_one_thread(q: str, d: list[str]) -> Any:
        # torch's OpenMP threads degrade badly when the CPU is oversubscribed (shared VM): also report 1 thread and
        # compare ONNX against the faster of the two
        torch.set_num_threads(1)
        try:
            return ce.predict([(q, x) for x in d], batch_size=32, show_progress_bar=False)
        finally:
            torch.set_num_threads(default_threads)

    backends = {
        "pytorch": lambda q, d: ce.predict([(q, x) for x in d], batch_size=32, show_progress_bar=False),
        "pytorch_1thread": torch_one_thread,
        "onnx_fp32": OnnxReranker(export_dir, "fp32").score,
        "onnx_int8": OnnxReranker(export_dir, "int8").score,
    }
    out: dict[str, Any] = {
        "torch_threads": default_threads,
        "onnxruntime_threads": "default",
        "max_length": max_length,
    }
    res["in_process"] = out
    for n_docs in args.sizes:
        reqs = requests_for(queries, docs, n_docs, 50, args.seed)
        toks = tokens_per_request(export_dir / "tokenizer.json", max_length, reqs)
        size: dict[str, Any] = {"tokens_per_request_mean": round(toks, 1)}
        out[f"1x{n_docs}"] = size
        for name, fn in backends.items():
            log(f"in-process {name} 1x{n_docs} ...")
            r = bench_backend(fn, reqs, args.inproc_seconds, args.min_reps)
            r["achieved_gflops"] = round(2 * n_params * toks * r["requests"] / r["seconds"] / 1e9, 2)
            size[name] = r
            log(f"  {name}: {r['pairs_per_s']} pairs/s, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms")
            res.save()
        best = max(size["pytorch"]["pairs_per_s"], size["pytorch_1thread"]["pairs_per_s"])
        size["pytorch_best_pairs_per_s"] = best
        size["speedup_int8_vs_pytorch"] = round(size["onnx_int8"]["pairs_per_s"] / best, 2)
        size["speedup_fp32_vs_pytorch"] = round(size["onnx_fp32"]["pairs_per_s"] / best, 2)
        size["speedup_int8_vs_fp32"] = round(
            size["onnx_int8"]["pairs_per_s"] / size["onnx_fp32"]["pairs_per_s"], 2
        )
        res.save()

    return out


def dev_mrr(args, res: Results, export_dir: Path) -> None:
    from hardneg.export import DevSet, _score_dev, mrr_at_k
    from hardneg.rerank import OnnxReranker

    dev = DevSet.from_beir(
        args.data_dir, args.dev_split, run=args.dev_run, depth=args.dev_depth, max_queries=args.dev_queries
    )
    log(f"dev MRR@10 on {len(dev.candidates)} queries x {args.dev_depth} ...")
    m = {}
    for v in ("fp32", "int8"):
        m[v] = mrr_at_k(_score_dev(OnnxReranker(export_dir, v).scorer, dev), dev)
    res["dev_mrr@10"] = {
        "source": dev.source,
        "queries": len(dev.candidates),
        "pairs": dev.n_pairs,
        "fp32": round(m["fp32"], 4),
        "int8": round(m["int8"], 4),
        "loss_int8_vs_fp32": round(m["fp32"] - m["int8"], 4),
    }


# ------------------------------------------------------------------------------------------------------- HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serving", "--model_dir", str(export_dir), "--http_port", str(port)]
    cmd += ["--host", "127.0.0.1", "--model_name", SERVED_NAME, "--variant", "int8"]
    fh = open(log_path, "ab")
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
    url: str, bodies: list[bytes], concurrency: int, duration: float, timeout: float
) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        end = time.perf_counter() + duration

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                body = bodies[i % len(bodies)]
                i += concurrency
                s = time.perf_counter()
                try:
                    r = await client.post(url, content=body)
                    ok = r.status_code == 200
                    key = None if ok else f"http_{r.status_code}"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                if key is None:
                    lat.append(time.perf_counter() - s)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    n_ok = len(lat)
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "ok": n_ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "requests_per_s": round(n_ok / wall, 2),
        **pct(lat),
    }


def http_bench(args, res: Results, export_dir: Path, queries, docs, work: Path) -> dict[str, Any]:
    import httpx
    import psutil

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{SERVED_NAME}:predict"
    proc = start_server(export_dir, port, work / "server.log")
    out: dict[str, Any] = {
        "server": "python -m serving (int8, 127.0.0.1)",
        "payload_docs": args.http_docs,
        "levels": [],
    }
    res["http"] = out
    try:
        out["ready_after_s"] = round(wait_ready(base, proc), 2)
        server = psutil.Process(proc.pid)
        out["rss_ready_mb"] = round(server.memory_info().rss / 2**20, 1)
        reqs = requests_for(queries, docs, args.http_docs, 200, args.seed + 7)
        bodies = [json.dumps({"instances": [{"query": q, "documents": d}]}).encode() for q, d in reqs]
        for b in bodies[:10]:  # warm-up: onnxruntime arenas and KServe paths reach steady state
            httpx.post(url, content=b, timeout=60).raise_for_status()
        out["rss_start_mb"] = round(server.memory_info().rss / 2**20, 1)
        for c in args.concurrency:
            log(f"HTTP {c} client(s) x {args.duration}s ...")
            level = asyncio.run(load_level(url, bodies, c, args.duration, args.client_timeout))
            level["pairs_per_s"] = round(level["requests_per_s"] * args.http_docs, 1)
            level["server_rss_mb"] = round(server.memory_info().rss / 2**20, 1)
            level["loadavg"] = loadavg()
            out["levels"].append(level)
            log(
                f"  {c}: {level['requests_per_s']} req/s, p50 {level.get('p50_ms')} ms, p95 {level.get('p95_ms')} ms, errors {level['errors']}"
            )
            res.save()
        out["rss_end_mb"] = round(server.memory_info().rss / 2**20, 1)
        out["rss_growth"] = round(out["rss_end_mb"] / out["rss_start_mb"] - 1, 4)
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        out["server_counters"] = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith(("hardneg_requests_total", "hardneg_errors_total"))
        ]
        res.save()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out


# ------------------------------------------------------------------------------------------------------- main


def analysis(data: dict[str, Any]) -> dict[str, Any]:
    """What the measurements imply (derived only from numbers in ``data``)."""
    out: dict[str, Any] = {
        "gflops_definition": "2 x non-embedding params x real (unpadded) tokens per second; attention-score FLOPs "
        "ignored. int8 runs integer GEMMs, so its fraction of the fp32 matmul reference can exceed 1.",
    }
    n = data.get("model", {}).get("params", {}).get("non_embedding")
    peak = data.get("matmul_reference", {}).get("gflops")
    size = data.get("in_process", {}).get("1x20", {})
    toks = size.get("tokens_per_request_mean")
    if n and peak and toks:
        gflop = 2 * n * toks / 1e9
        out["gflop_per_1x20_request"] = round(gflop, 1)
        out["best_case_1x20_latency_ms_at_fp32_matmul_peak"] = round(gflop / peak * 1000, 1)
        # 8 clients, one request scored at a time: a request waits for up to 7 others, so p95 ~ 8 x service time
        out["gflops_needed_for_p95_150ms_at_8_clients"] = round(gflop * 8 / 0.150, 1)
        out["p95_target_feasible_on_this_cpu"] = gflop * 8 / 0.150 <= peak * 4  # int8 at best ~4x fp32 peak
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model-dir", default=None, help="a trained CrossEncoder folder (default: MiniLM weights, new head)"
    )
    ap.add_argument("--data-dir", type=Path, default=REPO / "data" / "scifact")
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks" / "serving")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per HTTP concurrency level")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[20, 100],
        help="docs per query in-process",
    )
    ap.add_argument("--http-docs", type=int, default=20)
    ap.add_argument(
        "--client-timeout",
        type=float,
        default=300.0,
        help="seconds before a client gives up on a request (an error); queueing at 32 clients on 2 cores is long",
    )
    ap.add_argument(
        "--inproc-seconds", type=float, default=15.0, help="minimum seconds per in-process backend and size"
    )
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument(
        "--max-length", type=int, default=None, help="tokens per pair (default: params train.max_length)"
    )
    ap.add_argument(
        "--dev-run", type=Path, default=None, help="first-stage run.json for the int8 MRR@10 loss"
    )
    ap.add_argument("--dev-split", default="dev")
    ap.add_argument("--dev-depth", type=int, default=30)
    ap.add_argument("--dev-queries", type=int, default=None)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--reanalyze", action="store_true", help="only recompute the 'analysis' block of --out")
    args = ap.parse_args()
    if args.reanalyze:
        data = json.loads(args.out.read_text(encoding="utf-8"))
        data["analysis"] = analysis(data)
        args.out.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        return 0

    from hardneg.config import load_params

    params = load_params(REPO / "params.yaml")
    max_length = args.max_length or int(params["train"]["max_length"])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["max_length"] = max_length
    res = Results(args.out, settings)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir, model_desc = build_model(args, work, max_length)
        res["model"] = {
            "description": model_desc,
            "dir": str(model_dir),
            "params": (n := count_params(model_dir)),
        }

        from hardneg.export import export_model

        export_dir = work / "export"
        log(f"exporting {model_dir} -> {export_dir} ...")
        t0 = time.perf_counter()
        exp = export_model(model_dir, export_dir, None, model_name=SERVED_NAME)
        res["export"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "fp32_max_abs_diff_vs_pytorch": exp.parity["fp32"]["max_abs_diff"],
            "int8_max_abs_diff_vs_pytorch": exp.parity["int8"]["max_abs_diff"],
            "quant_pre_process": exp.parity["int8"]["quant_pre_process"],
            "bytes": {v: i["bytes"] for v, i in exp.metadata["variants"].items()},
        }
        log(f"export: {res.data['export']}")

        res["matmul_reference"] = mm = matmul_gflops()
        log(f"torch fp32 matmul: {mm['gflops']} GFLOP/s")

        queries, docs = load_texts(args.data_dir, args.seed)
        inproc = in_process(args, res, model_dir, export_dir, queries, docs, n["non_embedding"])
        for v in inproc.values():
            if isinstance(v, dict):
                for b in ("pytorch", "pytorch_1thread", "onnx_fp32", "onnx_int8"):
                    v[b]["fraction_of_matmul_peak"] = round(v[b]["achieved_gflops"] / mm["gflops"], 3)
        res.save()

        if args.dev_run:
            dev_mrr(args, res, export_dir)
        else:
            res["dev_mrr@10"] = {"skipped": "no --dev-run given (and the default model's head is untrained)"}

        http = None if args.skip_http else http_bench(args, res, export_dir, queries, docs, work)

        targets: dict[str, Any] = {}
        speedups = {k: v["speedup_int8_vs_pytorch"] for k, v in inproc.items() if isinstance(v, dict)}
        targets["int8_>=3x_pytorch_pairs_per_s"] = {
            "value": speedups,
            "met": all(s >= 3 for s in speedups.values()),
        }
        if http:
            at8 = [lv for lv in http["levels"] if lv["concurrency"] == 8]
            p95 = at8[0].get("p95_ms") if at8 else None
            targets["p95_<=150ms_1x20_at_8_clients"] = {
                "value_ms": p95,
                "met": p95 is not None and p95 <= 150 and args.http_docs == 20,
            }
            errs = sum(lv["errors"] for lv in http["levels"])
            targets["zero_errors"] = {"value": errs, "met": errs == 0}
            targets["rss_growth_<=10%"] = {
                "value": http.get("rss_growth"),
                "met": http.get("rss_growth", 1) <= 0.10,
            }
        res["targets"] = targets
        res["analysis"] = analysis(res.data)
        res.data["status"] = "finished"
        res.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res.data["machine"]["loadavg_at_end"] = loadavg()
        res.save()
        log(f"targets: {json.dumps(targets)}")
    except BaseException as e:
        res.data["status"] = f"failed: {type(e).__name__}: {e}"
        res.save()
        raise
    finally:
        shutil.rmtree(work / "export.partial", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
