"""Does the server leak on the hit path? A memory soak of the real server (not a test).

`benchmarks/serving.py` reads the server's RSS before and after its hit-path levels (1, 8 then 32 clients) and
flagged a 31% growth. Growth across *rising* concurrency is not a leak by itself: more requests in flight means more
live buffers and, with glibc, more malloc arenas (one per thread that allocates, up to 8 x cores), each keeping the
memory it freed. A leak keeps growing at a *constant* load. So this script, per allocator setting:

1. starts ``python -m serving`` on the export (loopback, params ``serve.*``), warms every pool document into the
   document cache (the hit path then embeds only the query), and reads RSS;
2. runs the serving benchmark's levels once (1, 8, 32 clients, ``--seconds`` each), reading RSS after each;
3. then ``--rounds`` more rounds at the top level (32 clients), reading RSS after each: the soak. ``soak_growth`` =
   RSS after the last round / after the first soak round - 1; ``leak`` = that growth above ``--leak-threshold``.

Each run is one server setting (``--ov-cache`` x ``--arenas``): OpenVINO's ``CPU_RUNTIME_CACHE_CAPACITY``
(params ``serve.openvino_runtime_cache``, set per server through ``HARDNEG_OPENVINO_RUNTIME_CACHE``; 5000 is
OpenVINO's own default, which the server used before), and glibc's allocator (``default``, or ``2`` =
``MALLOC_ARENA_MAX=2``, the usual container setting). Found with it: OpenVINO's per-shape kernel cache, not our
code, made RSS creep at constant load (a Python ``tracemalloc`` of the same requests in process stays flat, and
onnxruntime plateaus). Writes ``benchmarks/results/serving_memory.json`` (with the CPU, the export's model and the
request shape).

    python benchmarks/serving_memory.py --export-dir DIR [--rounds 12] [--seconds 8] [--ov-cache 5000,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import serving as bench  # noqa: E402  (benchmarks/serving.py: the server start, load generator and texts)


def soak(
    args: argparse.Namespace, arenas: str, ov_cache: str, queries: list[str], docs: list[str], work: Path
) -> dict[str, Any]:
    import httpx
    import psutil

    from hardneg.rerank import RUNTIME_CACHE_ENV

    env = {"MALLOC_ARENA_MAX": None if arenas == "default" else arenas, RUNTIME_CACHE_ENV: ov_cache}
    before = {k: os.environ.get(k) for k in env}
    for k, v in env.items():  # the server process inherits them
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{bench.SERVED_NAME}:predict"
    proc = bench.start_server(args.export_dir, port, args.runtime, work / f"server-{ov_cache}-{arenas}.log")
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out: dict[str, Any] = {
        "openvino_runtime_cache": int(ov_cache),
        "malloc_arena_max": arenas,
        "levels": [],
        "soak": [],
    }
    try:
        out["ready_after_s"] = round(bench.wait_ready(base, proc), 2)
        server = psutil.Process(proc.pid)

        def rss() -> float:
            return round(server.memory_info().rss / 2**20, 1)

        out["rss_ready_mb"] = rss()
        rng = random.Random(args.seed)
        pool = docs[: args.hit_pool * bench.N_DOCS]
        for i in range(0, len(pool), bench.N_DOCS):  # every pool document cached: the hit path from here on
            body = {"instances": [{"query": queries[0], "documents": pool[i : i + bench.N_DOCS]}]}
            httpx.post(url, json=body, timeout=300).raise_for_status()
        bodies = [
            json.dumps(
                {"instances": [{"query": rng.choice(queries), "documents": rng.sample(pool, bench.N_DOCS)}]}
            ).encode()
            for _ in range(300)
        ]
        out["rss_warm_mb"] = rss()

        def level(clients: int) -> dict[str, Any]:
            lv = asyncio.run(bench.load_level(url, bodies, clients, args.seconds, None, 120.0))
            row = {
                "clients": clients,
                "ok": lv["ok"],
                "errors": lv["errors"],
                "throughput_pairs_s": lv["throughput_pairs_s"],
                "rss_mb": rss(),
            }
            bench.log(
                f"cache {ov_cache}, arenas {arenas}: {clients} clients, {lv['ok']} requests -> RSS {row['rss_mb']} MB"
            )
            return row

        out["levels"] = [level(c) for c in bench.LEVELS]
        out["soak"] = [level(bench.LEVELS[-1]) for _ in range(args.rounds)]
        first, last = out["soak"][0]["rss_mb"], out["soak"][-1]["rss_mb"]
        out["levels_growth"] = round(out["levels"][-1]["rss_mb"] / out["rss_warm_mb"] - 1, 4)
        out["soak_growth"] = round(last / first - 1, 4)
        out["soak_requests"] = sum(r["ok"] for r in out["soak"][1:])
        out["leak"] = out["soak_growth"] > args.leak_threshold
        out["errors"] = sum(r["errors"] for r in out["levels"] + out["soak"])
    finally:
        bench.stop_server(proc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export-dir", type=Path, required=True, help="a `hardneg export` folder (read only)")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data" / "scifact")
    ap.add_argument("--runtime", default="auto", help="server --runtime (params serve.runtime: auto)")
    ap.add_argument(
        "--arenas", default="default", help="MALLOC_ARENA_MAX settings to compare (e.g. default,2)"
    )
    ap.add_argument(
        "--ov-cache", default="5000,64", help="OpenVINO CPU_RUNTIME_CACHE_CAPACITY values to compare"
    )
    ap.add_argument("--rounds", type=int, default=12, help="soak rounds at the top level")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per round")
    ap.add_argument("--hit-pool", type=int, default=10)
    ap.add_argument("--leak-threshold", type=float, default=0.02, help="soak growth above this = a leak")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks" / "serving_memory")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving_memory.json")
    args = ap.parse_args()
    from hardneg.export import portable_name
    from hardneg.hw import cpu_info

    args.work_dir.mkdir(parents=True, exist_ok=True)
    queries, docs = bench.load_texts(args.data_dir, args.seed)
    meta = json.loads((args.export_dir / "metadata.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {
        "benchmark": "serving_memory (server RSS on the hit path: rising concurrency, then a soak at the top level)",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_info(),
        "export": {
            "model": portable_name(str(meta.get("base_model") or meta.get("model_name") or "?")),
            "kind": meta.get("kind"),
            "version": meta.get("version"),
        },
        "request": {
            "documents": bench.N_DOCS,
            "pool_requests": args.hit_pool,
            "seconds_per_round": args.seconds,
        },
        "rounds": args.rounds,
        "leak_threshold": args.leak_threshold,
        "runs": {},
    }
    for cache in args.ov_cache.split(","):
        for arenas in args.arenas.split(","):
            key = f"runtime_cache={cache.strip()},arenas={arenas.strip()}"
            result["runs"][key] = soak(args, arenas.strip(), cache.strip(), queries, docs, args.work_dir)
            args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["any_leak"] = any(r["leak"] for r in result["runs"].values())
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for k, r in result["runs"].items():
        print(
            f"{k}: warm {r['rss_warm_mb']} MB, after 1/8/32 clients "
            f"{[x['rss_mb'] for x in r['levels']]}, soak {[x['rss_mb'] for x in r['soak']]} "
            f"(growth {r['soak_growth']:+.1%}, leak: {r['leak']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
