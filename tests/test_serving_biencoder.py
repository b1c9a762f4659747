"""The KServe server on a bi-encoder export: V1 + V2 answers equal OnnxReranker's cosines (fused with first-stage
scores when sent), the model metadata reports the kind, /metrics exposes the document-cache counters; in-process and
as a real `hardneg serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from _server_process import free_port, stop, wait_ready
from _tiny_biencoder import BI_FUSION_WEIGHT, BI_MAX_LENGTH, tiny_bi_export
from _tiny_reranker import REPO
from fastapi.testclient import TestClient

from hardneg.fusion import fuse
from hardneg.rerank import OnnxReranker
from serving.predictor import HardnegReranker, Limits
from serving.server import create_app

pytestmark = [
    pytest.mark.adapter,
    pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning"),
]

NAME = "tiny-bi-rr"
LIMITS = Limits(max_documents=8, max_text_chars=500, max_body_bytes=20_000)
QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D had no effect on bone mineral density.",
    "Aspirin lowered infarction rates.",
    "bone density vitamin",
]
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_bi_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def model(export_dir):
    m = HardnegReranker(NAME, str(export_dir), limits=LIMITS, doc_cache_size=4)
    m.load()
    return m


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def reference(export_dir):
    return OnnxReranker(export_dir, doc_cache_size=0)  # the served variant, uncached


def metric(text: str, name: str, model: str = NAME) -> float | None:
    m = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else None


def v2_body(query=QUERY, docs=DOCS, scores=None):
    inputs = [
        {"name": "query", "shape": [1], "datatype": "BYTES", "data": [query]},
        {"name": "documents", "shape": [len(docs)], "datatype": "BYTES", "data": list(docs)},
    ]
    if scores is not None:
        inputs.append(
            {"name": "first_stage_scores", "shape": [len(scores)], "datatype": "FP32", "data": scores}
        )
    return {"id": "b-1", "inputs": inputs}


def test_model_metadata_reports_the_kind_and_the_cache(client, model):
    p = client.get(f"/v2/models/{NAME}").json()["parameters"]
    assert p["kind"] == "bi-encoder" and p["score"] == "cosine" and p["max_length"] == BI_MAX_LENGTH
    assert p["fusion"]["weight"] == BI_FUSION_WEIGHT and p["variant"] == model.variant
    assert p["doc_cache"]["capacity"] == 4 and "each truncated" in p["truncation"]


def test_v1_and_v2_answer_the_cosines_and_the_fused_scores(client, reference):
    scores, order = reference.rerank(QUERY, DOCS)
    np.testing.assert_allclose(scores, reference.score(QUERY, DOCS), atol=1e-7)  # plain cosines
    r = client.post(V1, json={"instances": [{"query": QUERY, "documents": DOCS}]})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    np.testing.assert_allclose(pred["scores"], scores, atol=1e-6)
    assert pred["ranking"] == list(order)

    fs = [0.1, 0.9, 0.5]
    r = client.post(V2, json=v2_body(scores=fs))
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    expected = fuse(reference.score(QUERY, DOCS), fs, BI_FUSION_WEIGHT)
    np.testing.assert_allclose(out["scores"]["data"], expected, atol=1e-5)
    assert out["ranking"]["data"] == list(np.argsort(-expected, kind="stable"))
    assert r.json()["model_version"] == "b1"
    r = client.post(V2, json=v2_body(query=" "))
    assert r.status_code == 400 and "must not be empty" in r.json()["error"]


def test_metrics_expose_the_document_cache_counters(client, model):
    before = client.get("/metrics").text
    h0, m0 = metric(before, "hardneg_doc_cache_hits_total"), metric(before, "hardneg_doc_cache_misses_total")
    assert h0 is not None and m0 is not None
    assert metric(before, "hardneg_doc_cache_capacity") == 4
    new = ["a first new document", "a second new document"]
    assert client.post(V1, json={"instances": [{"query": QUERY, "documents": new}]}).status_code == 200
    assert client.post(V2, json=v2_body(query="aspirin", docs=new)).status_code == 200
    after = client.get("/metrics").text
    assert metric(after, "hardneg_doc_cache_misses_total") == m0 + 2  # embedded once...
    assert metric(after, "hardneg_doc_cache_hits_total") == h0 + 2  # ...then served from the cache
    assert metric(after, "hardneg_doc_cache_entries") == model.reranker.cache_size <= 4
    assert "# TYPE hardneg_doc_cache_hits_total counter" in after


def test_real_server_process_serves_a_bi_encoder(export_dir, tmp_path):
    port = free_port()
    exe = Path(sys.executable).with_name("hardneg")
    cmd = [str(exe), "serve", "--model-dir", str(export_dir), "--http-port", str(port), "--model-name", NAME]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        # fp32: its embeddings do not depend on the batch (dynamic int8 scales activations per batch, so an int8
        # document embedding computed with other documents differs by ~1e-3 from one computed alone)
        [*cmd, "--doc-cache-size", "2", "--variant", "fp32"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, tmp_path / "server.log")
        meta = httpx.get(f"{base}/v2/models/{NAME}", timeout=30).json()
        assert meta["parameters"]["kind"] == "bi-encoder" and meta["parameters"]["doc_cache"]["capacity"] == 2
        scores, order = OnnxReranker(export_dir, "fp32", doc_cache_size=0).rerank(QUERY, DOCS)
        r = httpx.post(f"{base}{V1}", json={"instances": [{"query": QUERY, "documents": DOCS}]}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["ranking"] == list(order)
        np.testing.assert_allclose(r.json()["predictions"][0]["scores"], scores, atol=1e-6)
        r = httpx.post(f"{base}{V2}", json=v2_body(docs=DOCS[:2]), timeout=30)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], scores[:2], atol=1e-6)
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        # V1: 3 misses (cache of 2 keeps DOCS[1:]); V2: DOCS[0] evicted -> miss, DOCS[1] -> hit
        assert metric(metrics, "hardneg_doc_cache_misses_total") == 4
        assert metric(metrics, "hardneg_doc_cache_hits_total") == 1
        assert metric(metrics, "hardneg_doc_cache_entries") == 2
    finally:
        stop(proc)
        log.close()
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()
