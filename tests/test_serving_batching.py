"""Batching across requests (issue #18 item 3, serving/batcher.py): concurrent requests are scored in fewer graph calls
than requests, each gets what it would get alone, window 0 scores each request alone, and one request's failure
does not fail the others in its batch. In-process: concurrent HTTP requests through the real ASGI app (httpx
ASGITransport, one event loop), and the batcher alone with a fake scoring function."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest
from _tiny_biencoder import tiny_bi_export
from _tiny_reranker import tiny_export

from hardneg.config import default_params
from hardneg.errors import ConfigError, HardnegError
from hardneg.rerank import OnnxReranker
from hardneg.settings import settings
from serving.batcher import BatchStats, RequestBatcher
from serving.predictor import HardnegReranker, Limits
from serving.server import create_app

pytestmark = [
    pytest.mark.adapter,
    pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning"),
]

LIMITS = Limits(max_documents=16, max_text_chars=500, max_body_bytes=50_000)
WORDS = (
    "vitamin bone density aspirin infarction trial cells protein gene mice cancer risk dose blood "
    "therapy patients study effect increase reduced"
).split()


def texts(seed: int, n: int, lo: int = 2, hi: int = 14) -> list[str]:
    """``n`` distinct texts of varied length (varied token counts: the graph batches get padded)."""
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS, rng.integers(lo, hi))) for i in range(n)]


def requests_for(n: int, docs_each: int = 5, seed: int = 0) -> list[dict]:
    """``n`` V1 bodies, each a distinct query and ``docs_each`` documents never sent before."""
    qs = texts(seed, n, 2, 6)
    ds = texts(seed + 1000, n * docs_each)
    return [
        {"instances": [{"query": f"q{i} {qs[i]}", "documents": ds[i * docs_each : (i + 1) * docs_each]}]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def ce_export(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def bi_export(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_bi_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


def serve(export_dir, name: str, window_ms: float, **kw) -> HardnegReranker:
    m = HardnegReranker(
        name, str(export_dir), limits=LIMITS, batch_window_ms=window_ms, max_batch_texts=256, **kw
    )
    m.load()
    return m


def post_all(model: HardnegReranker, bodies: list[dict], v2: set[int] | None = None) -> list[httpx.Response]:
    """All ``bodies`` sent at once to the in-process app (V2 for the indices in ``v2``), on one event loop."""
    app = create_app(model)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            calls = [
                c.post(f"/v2/models/{model.name}/infer", json=v2_of(b))
                if i in (v2 or ())
                else c.post(f"/v1/models/{model.name}:predict", json=b)
                for i, b in enumerate(bodies)
            ]
            return list(await asyncio.gather(*calls))

    return asyncio.run(go())


def v2_of(body: dict) -> dict:
    inst = body["instances"][0]
    docs = inst["documents"]
    return {
        "id": "r",
        "inputs": [
            {"name": "query", "shape": [1], "datatype": "BYTES", "data": [inst["query"]]},
            {"name": "documents", "shape": [len(docs)], "datatype": "BYTES", "data": docs},
        ],
    }


def scores_of(r: httpx.Response) -> list[float]:
    assert r.status_code == 200, r.text
    body = r.json()
    if "predictions" in body:
        return body["predictions"][0]["scores"]
    return next(o["data"] for o in body["outputs"] if o["name"] == "scores")


class CountingBatches:
    """Wraps ``reranker.rerank_many`` (one call per batch): records the queries of each call. The first call can be
    held back (``hold_first`` s) so that the other requests queue up behind it. ``poison``: the last request of the
    first call holding several requests becomes poisoned (every call holding its query raises), so the poisoned
    request always shares a batch, whatever order the requests arrived in."""

    def __init__(self, model: HardnegReranker, hold_first: float = 0.0, poison: bool = False):
        self.inner = model.reranker.rerank_many
        self.calls: list[list[str]] = []
        self.hold_first, self.poison_on, self.poison = hold_first, poison, None
        self._lock = threading.Lock()
        model.reranker.rerank_many = self  # instance attribute: this model only

    def __call__(self, requests):
        queries = [q for q, _, _ in requests]
        with self._lock:
            first = not self.calls
            self.calls.append(queries)
            if self.poison_on and self.poison is None and len(queries) > 1:
                self.poison = queries[-1]
        if first and self.hold_first:
            time.sleep(self.hold_first)
        if self.poison is not None and self.poison in queries:
            raise RuntimeError("poisoned input")
        return self.inner(requests)


def count_embed_calls(model: HardnegReranker) -> list[int]:
    """Counts the bi-encoder's graph calls (query and document encoders: the same one for ``tune: both``)."""
    calls: list[int] = []
    enc = model.reranker.scorer.encoder
    inner = enc.embed

    def embed(batch):
        calls.append(len(batch))
        return inner(batch)

    enc.embed = embed
    return calls


def metric(text: str, name: str, **labels: str) -> float:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(lab)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# ---------------------------------------------------------------------------------------------- over HTTP (in-process)


def test_concurrent_requests_share_graph_calls_and_metrics_show_the_batches(bi_export):
    """(a) 8 concurrent requests: fewer scoring calls and graph calls than requests, each response as alone."""
    model = serve(bi_export, "bi-batch", 200.0, variant="fp32", doc_cache_size=0)
    bodies, v2 = requests_for(8, seed=1), {3, 6}  # V1 and V2 requests batch together
    alone = [scores_of(post_all(model, [b], {0} if i in v2 else set())[0]) for i, b in enumerate(bodies)]
    batches = CountingBatches(model, hold_first=0.5)
    embeds = count_embed_calls(model)
    together = post_all(model, bodies, v2)
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    # fewer batches than requests (the first batch is held back, so that late arrivals queue behind it)
    assert len(batches.calls) < len(bodies), batches.calls
    sent = sorted(b["instances"][0]["query"] for b in bodies)
    assert sorted(q for call in batches.calls for q in call) == sent
    # per batch: one query-graph call and one document-graph call
    assert len(embeds) == 2 * len(batches.calls) < 2 * len(bodies)
    assert max(embeds) > 5 + 1  # a document call embedded several requests' documents
    for r, single in zip(together, alone, strict=True):
        # a few float32 ulps at most: the bi-encoder graph's pooling sums over the padded batch width
        np.testing.assert_allclose(scores_of(r), single, rtol=0, atol=1e-6)

    app = create_app(model)
    text = asyncio.run(_get(app, "/metrics"))
    n_batches = len(bodies) + len(batches.calls)  # the single requests, then the concurrent ones
    assert metric(text, "hardneg_batch_requests_count", model="bi-batch") == n_batches
    assert metric(text, "hardneg_batch_requests_sum", model="bi-batch") == 2 * len(bodies)
    assert metric(text, "hardneg_batch_requests_bucket", model="bi-batch", le="1.0") < n_batches
    assert metric(text, "hardneg_batch_texts_sum", model="bi-batch") == 2 * len(bodies) * 6
    assert metric(text, "hardneg_batch_window_seconds", model="bi-batch") == 0.2
    assert metric(text, "hardneg_batch_max_texts", model="bi-batch") == 256
    params = asyncio.run(_get_json(app, "/v2/models/bi-batch"))["parameters"]["batching"]
    assert params["enabled"] and params["window_ms"] == 200.0 and params["requests"] == 2 * len(bodies)


async def _get(app, path: str) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.get(path)).text


async def _get_json(app, path: str) -> dict:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return (await c.get(path)).json()


def test_each_response_is_bit_identical_to_the_single_request_response(ce_export):
    """(b) A cross-encoder on onnxruntime fp32: every concurrent response equals, bit for bit, the response to the
    same request sent alone (with fusion, V1 and V2, repeated documents deduplicated across requests)."""
    model = serve(ce_export, "ce-batch", 200.0, variant="fp32")
    assert model.reranker.runtime == "onnxruntime"
    bodies, v2 = requests_for(6, docs_each=4, seed=2), {4}
    # request 4 shares two documents with request 0 (another query: other pairs); request 5 repeats request 0
    bodies[4]["instances"][0]["documents"][:2] = bodies[0]["instances"][0]["documents"][:2]
    bodies[5]["instances"][0] = {**bodies[0]["instances"][0]}
    for b in bodies[1:3]:
        b["instances"][0]["first_stage_scores"] = [0.5, 0.1, 0.9, 0.3]  # fused scores
    alone = [scores_of(post_all(model, [b], {0} if i in v2 else set())[0]) for i, b in enumerate(bodies)]
    encoded = model.batching_info()["texts_encoded"]
    batches = CountingBatches(model, hold_first=0.5)
    together = post_all(model, bodies, v2)
    assert len(batches.calls) < len(bodies), batches.calls
    for r, single in zip(together, alone, strict=True):
        assert scores_of(r) == single  # bit-identical
    # request 5 repeats request 0: its pairs are scored once when the two share a batch (arrival order decides that
    # on a busy machine), twice otherwise
    q0 = bodies[0]["instances"][0]["query"]
    shared = sum(1 for c in batches.calls if c.count(q0) >= 2)
    assert model.batching_info()["texts_encoded"] == encoded + 6 * 4 - 4 * shared


def test_rerank_many_alone_equals_rerank_and_together_matches(ce_export, bi_export):
    """The library call under the batcher: one request alone runs exactly what ``rerank`` runs (int8 included), and
    together with others a cross-encoder's fp32 scores do not move at all."""
    reqs = [(i["query"], i["documents"], None) for b in requests_for(5, seed=3) for i in b["instances"]]
    for export, variant in [(e, v) for e in (ce_export, bi_export) for v in ("int8", "fp32")]:
        r = OnnxReranker(export, variant=variant, doc_cache_size=0, quiet=True)
        for q, docs, fs in reqs:
            (got,), _ = r.rerank_many([(q, docs, fs)])
            want = r.rerank(q, docs, fs)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (export.name, variant)
        together, encoded = r.rerank_many(reqs + reqs[:1])  # a repeated request: scored once
        cross = r.kind == "cross-encoder"
        assert encoded == (sum(len(d) for _, d, _ in reqs) if cross else len(reqs) * 6)
        for (q, docs, fs), (scores, _) in zip(reqs + reqs[:1], together, strict=True):
            want = r.rerank(q, docs, fs)[0]
            if cross and variant == "fp32":
                assert np.array_equal(scores, want)
            else:  # int8: activations quantised per batch; bi-encoder fp32: pooling over the padded width
                np.testing.assert_allclose(scores, want, atol=0.1 if variant == "int8" else 1e-6)


def test_window_zero_scores_each_request_alone(ce_export):
    """(c) ``batch_window_ms: 0``: no batcher; every request is its own scoring call, one at a time."""
    model = serve(ce_export, "ce-nobatch", 0.0, variant="fp32")
    assert model.batcher is None and not model.batching_info()["enabled"]
    bodies = requests_for(6, docs_each=3, seed=4)
    alone = [scores_of(post_all(model, [b])[0]) for b in bodies]
    batches = CountingBatches(model, hold_first=0.3)
    together = post_all(model, bodies)
    assert [len(c) for c in batches.calls] == [1] * len(bodies)
    assert [scores_of(r) for r in together] == alone
    st = model.batch_stats.snapshot()
    assert st["batches"] == 2 * len(bodies) and st["requests"]["buckets"][0] == ("1.0", 2 * len(bodies))


def test_an_error_in_one_request_does_not_fail_the_others(ce_export, caplog):
    """(d) In one round of concurrent requests: malformed ones get their 4xx before batching, and a request whose
    scoring raises (poisoned here) gets a 500 while the rest of its batch is scored one by one and answered."""
    model = serve(ce_export, "ce-errors", 200.0, variant="fp32")
    bodies = requests_for(6, docs_each=3, seed=5)
    alone = [scores_of(post_all(model, [b])[0]) for b in bodies]
    bad = [
        {"instances": [{"query": " ", "documents": ["a"]}]},  # empty query: 400
        {"instances": [{"query": "q", "documents": ["d"] * 17}]},  # over max_documents: 413
        {"instances": [{"query": "q"}]},  # no documents: 400
    ]
    batches = CountingBatches(model, hold_first=0.5, poison=True)
    out = post_all(model, bodies + bad)
    poison = batches.poison
    assert poison is not None, batches.calls  # some batch held several requests, the poisoned one among them
    (hit,) = [i for i, b in enumerate(bodies) if b["instances"][0]["query"] == poison]
    for i in range(len(bodies)):
        if i != hit:
            assert scores_of(out[i]) == alone[i]
    assert out[hit].status_code == 500
    assert out[hit].json() == {"error": "internal server error (logged server-side)"}
    assert [r.status_code for r in out[len(bodies) :]] == [400, 413, 400]
    assert [poison] in batches.calls  # its batch failed, then was scored request by request
    assert "scoring them one by one" in caplog.text
    assert scores_of(post_all(model, [bodies[0]])[0]) == alone[0]  # still serving


# ------------------------------------------------------------------------------------------------- the batcher alone


def _fake_run(log: list[list[int]], seconds: float = 0.0):
    def run(jobs):
        log.append(list(jobs))
        time.sleep(seconds)
        return [x * 10 if x >= 0 else ValueError(f"bad {x}") for x in jobs], len(jobs)

    return run


def test_batcher_takes_whole_requests_up_to_max_texts_and_isolates_results():
    calls: list[list[int]] = []
    stats = BatchStats()
    b = RequestBatcher(_fake_run(calls), window_s=0.05, max_texts=7, stats=stats)

    async def go():
        return await asyncio.gather(*(b.submit(i, 3) for i in range(5)), return_exceptions=True)

    assert asyncio.run(go()) == [0, 10, 20, 30, 40]
    assert calls == [[0, 1], [2, 3], [4]]  # 3 texts each, at most 7 per batch, oldest first
    assert asyncio.run(_one_each(b, [5, -1, 6])) == [50, "bad -1", 60]  # a failing request fails alone
    st = stats.snapshot()
    assert st["batches"] == 4 and st["requests"]["sum"] == 8 and st["texts"]["sum"] == 5 * 3 + 3 * 2
    big_calls: list[list[int]] = []
    big = RequestBatcher(_fake_run(big_calls), window_s=0.05, max_texts=1)
    assert asyncio.run(_one_each(big, [1, 2])) == [10, 20]
    assert big_calls == [[1], [2]]  # each request is bigger than the bound: alone, never split
    b.close()
    big.close()


async def _one_each(b: RequestBatcher, items: list[int]) -> list:
    out = await asyncio.gather(*(b.submit(i, 2) for i in items), return_exceptions=True)
    return [str(x) if isinstance(x, Exception) else x for x in out]


def test_batcher_waits_for_company_only_after_a_batch_of_several():
    """A lone client pays no window; after a batch of several requests the next batch waits up to the window."""
    calls: list[list[int]] = []
    b = RequestBatcher(_fake_run(calls), window_s=0.4, max_texts=100)

    async def go():
        t0 = time.perf_counter()
        await b.submit(1, 1)  # after a lone batch (and at start): at once
        await b.submit(2, 1)
        lone = time.perf_counter() - t0
        await asyncio.gather(b.submit(3, 1), b.submit(4, 1))  # queued together: one batch of two
        t0 = time.perf_counter()
        late = asyncio.create_task(_after(0.1, b.submit(6, 1)))
        await b.submit(5, 1)  # waits for company: 6 arrives 0.1 s later, inside the window
        waited = time.perf_counter() - t0
        await late
        t0 = time.perf_counter()
        await b.submit(7, 1)  # the last batch held two: waits the whole window, alone
        alone_after_pair = time.perf_counter() - t0
        return lone, waited, alone_after_pair

    lone, waited, alone_after_pair = asyncio.run(go())
    assert calls == [[1], [2], [3, 4], [5, 6], [7]]
    assert lone < 0.3 and 0.35 <= waited < 1.5 and 0.35 <= alone_after_pair < 1.5
    b.close()


async def _after(delay: float, coro):
    await asyncio.sleep(delay)
    return await coro


def test_batcher_runs_batches_off_the_event_loop():
    """While a batch runs (in its worker thread) the loop keeps serving: requests arrive and queue meanwhile."""
    calls: list[list[int]] = []
    b = RequestBatcher(_fake_run(calls, seconds=0.8), window_s=0.01, max_texts=100)

    async def go():
        first = asyncio.create_task(b.submit(1, 1))
        ticks = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            await asyncio.sleep(0.01)
            ticks += 1
        rest = [asyncio.create_task(b.submit(i, 1)) for i in (2, 3, 4)]
        return ticks, await first, await asyncio.gather(*rest)

    ticks, first, rest = asyncio.run(go())
    assert ticks >= 10 and first == 10 and rest == [20, 30, 40]
    assert calls == [[1], [2, 3, 4]]  # the three that arrived during the first batch: together
    b.close()


# ------------------------------------------------------------------------------------------------------ settings


def test_batching_settings_are_typed_checked_and_reach_the_server():
    s = settings(default_params()).serve
    assert isinstance(s.batch_window_ms, float) and s.batch_window_ms > 0 and s.max_batch_texts >= 201
    for bad, msg in (
        ({"batch_window_ms": -1.0}, "serve.batch_window_ms must be >= 0"),
        ({"max_batch_texts": 0}, "serve.max_batch_texts must be >= 1"),
        ({"batch_window_ms": "5"}, "serve.batch_window_ms must be float"),
    ):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            settings({"serve": bad})
    with pytest.raises(HardnegError, match="batch_window_ms must be >= 0"):
        HardnegReranker("x", "unused", batch_window_ms=-1)
    m = HardnegReranker("x", "unused")  # None: the packaged params
    assert (m.batch_window_ms, m.max_batch_texts) == (s.batch_window_ms, s.max_batch_texts)

    from serving.__main__ import build_parser

    args = build_parser().parse_args(["--batch_window_ms", "0", "--max_batch_texts", "64"])
    assert (args.batch_window_ms, args.max_batch_texts) == (0.0, 64)
