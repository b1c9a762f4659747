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

Allocator settings (``--arenas``): ``default`` (glibc's own) and ``2`` (``MALLOC_ARENA_MAX=2``, the usual
container setting). Writes ``benchmarks/results/serving_memory.json`` (with the CPU, the export's model and the
request shape).

    python benchmarks/serving_memory.py --export-dir DIR [--rounds 6] [--seconds 8] [--arenas default,2]
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
    args: argparse.Namespace, arenas: str, queries: list[str], docs: list[str], work: Path
) -> dict[str, Any]:
    import httpx
    import psutil

    env_before = os.environ.get("MALLOC_ARENA_MAX")
    if arenas == "default":
        os.environ.pop("MALLOC_ARENA_MAX", None)
    else:
        os.environ["MALLOC_ARENA_MAX"] = arenas
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{bench.SERVED_NAME}:predict"
    proc = bench.start_server(args.export_dir, port, args.runtime, work / f"server-arenas-{arenas}.log")
    if env_before is None:
        os.environ.pop("MALLOC_ARENA_MAX", None)
    else:
        os.environ["MALLOC_ARENA_MAX"] = env_before
    out: dict[str, Any] = {"malloc_arena_max": arenas, "levels": [], "soak": []}
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
            bench.log(f"arenas {arenas}: {clients} clients, {lv['ok']} requests -> RSS {row['rss_mb']} MB")
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
    ap.add_argument("--arenas", default="default,2", help="MALLOC_ARENA_MAX settings to compare")
    ap.add_argument("--rounds", type=int, default=6, help="soak rounds at the top level")
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
    for arenas in args.arenas.split(","):
        result["runs"][arenas] = soak(args, arenas.strip(), queries, docs, args.work_dir)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["any_leak"] = any(r["leak"] for r in result["runs"].values())
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for k, r in result["runs"].items():
        print(
            f"MALLOC_ARENA_MAX={k}: warm {r['rss_warm_mb']} MB, after 1/8/32 clients "
            f"{[x['rss_mb'] for x in r['levels']]}, soak {[x['rss_mb'] for x in r['soak']]} "
            f"(growth {r['soak_growth']:+.1%}, leak: {r['leak']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
