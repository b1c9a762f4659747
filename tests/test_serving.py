"""KServe server: every endpoint and bad-input case in-process (FastAPI TestClient, docs/stack.md 2.3), property-based
request parsing (hypothesis), and one real `hardneg serve` process called with tritonclient (V2) and plain HTTP (V1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from _server_process import free_port, stop, wait_ready
from _tiny_reranker import FUSION_WEIGHT, REPO, tiny_export
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardneg.fusion import fuse
from hardneg.rerank import ExportIntegrityError, OnnxReranker
from serving.predictor import HardnegReranker, Limits
from serving.server import create_app

# KServe's V1 route returns ORJSONResponse, deprecated in FastAPI 0.165 (docs/stack.md 2.1): not ours to fix
pytestmark = [
    pytest.mark.adapter,
    pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning"),
]

NAME = "tiny-rr"
LIMITS = Limits(max_documents=8, max_text_chars=500, max_body_bytes=20_000)
QUERY = "does vitamin d improve bone density"
DOCS = [
    "Vitamin D had no effect on bone mineral density.",
    "Aspirin lowered infarction rates.",
    "bone density vitamin",
]
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"
LEAKS = re.compile(r"Traceback|File \"|Error\b|Exception|pydantic|InferenceRequest|ValidationError|\.py\b")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    return tiny_export(tmp_path_factory.getbasetemp(), tiny_model_dir, tiny_data_dir)


@pytest.fixture(scope="module")
def model(export_dir):
    m = HardnegReranker(NAME, str(export_dir), limits=LIMITS)
    m.load()
    return m


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def reference(export_dir):
    return OnnxReranker(export_dir)  # int8, as served


def v2_body(query=QUERY, docs=DOCS, scores=None, **extra):
    inputs = [
        {"name": "query", "shape": [1], "datatype": "BYTES", "data": [query]},
        {"name": "documents", "shape": [len(docs)], "datatype": "BYTES", "data": list(docs)},
    ]
    if scores is not None:
        inputs.append(
            {"name": "first_stage_scores", "shape": [len(scores)], "datatype": "FP32", "data": list(scores)}
        )
    return {"inputs": inputs, **extra}


def assert_still_serving(client):
    r = client.post(V1, json={"instances": [{"query": QUERY, "documents": DOCS}]})
    assert r.status_code == 200, r.text


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(lab)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# ------------------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", {"status": "alive"}),
        ("/v1/models", {"models": [NAME]}),
        (f"/v1/models/{NAME}", {"name": NAME, "ready": True}),
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        (f"/v2/models/{NAME}/ready", {"name": NAME, "ready": True}),
    ],
)
def test_health_and_readiness_endpoints(client, path, expected):
    r = client.get(path)
    assert r.status_code == 200 and r.json() == expected


def test_model_metadata_exposes_versions_and_lineage(client):
    r = client.get(f"/v2/models/{NAME}")
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == NAME and meta["versions"] == ["t1"] and meta["platform"] == "onnxruntime"
    assert [i["name"] for i in meta["inputs"]] == ["query", "documents", "first_stage_scores"]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "ranking"]
    p = meta["parameters"]
    assert p["lineage"]["data_version"] == "0123456789abcdef.dir" and p["lineage"]["git_commit"] == "feedface"
    assert p["fusion"]["weight"] == FUSION_WEIGHT and p["variant"] == "int8" and p["max_length"] == 128
    assert p["kind"] == "cross-encoder" and p["score"] == "sigmoid" and p["doc_cache"] is None
    assert p["limits"] == {"max_documents": 8, "max_text_chars": 500, "max_body_bytes": 20_000}
    assert client.get("/v2").json()["name"] == "kserve"


def test_v1_predict_scores_and_ranking(client, reference):
    r = client.post(
        V1,
        json={
            "instances": [{"query": QUERY, "documents": DOCS}, {"query": "aspirin", "documents": DOCS[:2]}]
        },
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    # the instances of one request are scored together (one graph pass, as concurrent requests are)
    ((scores, order), _), _ = reference.rerank_many([(QUERY, DOCS, None), ("aspirin", DOCS[:2], None)])
    np.testing.assert_allclose(preds[0]["scores"], scores, atol=1e-6)
    assert preds[0]["ranking"] == list(order)
    assert len(preds[1]["scores"]) == 2 and sorted(preds[1]["ranking"]) == [0, 1]


def test_v1_with_first_stage_scores_returns_fused_scores(client, reference):
    fs = [0.1, 0.9, 0.5]
    r = client.post(V1, json={"instances": [{"query": QUERY, "documents": DOCS, "first_stage_scores": fs}]})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    expected = fuse(reference.score(QUERY, DOCS), fs, FUSION_WEIGHT)
    np.testing.assert_allclose(pred["scores"], expected, atol=1e-5)
    assert pred["ranking"] == list(np.argsort(-expected, kind="stable"))


def test_v2_infer_scores_ranking_and_id(client, reference):
    r = client.post(V2, json=v2_body(id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == NAME and body["model_version"] == "t1"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["scores"]["datatype"] == "FP32" and out["scores"]["shape"] == [3]
    assert out["ranking"]["datatype"] == "INT64" and out["ranking"]["shape"] == [3]
    scores, order = reference.rerank(QUERY, DOCS)
    np.testing.assert_allclose(out["scores"]["data"], scores, atol=1e-6)
    assert out["ranking"]["data"] == list(order)
    r = client.post(V2, json=v2_body(scores=[0.1, 0.9, 0.5]))  # no "id": one is generated (KServe would 500)
    assert r.status_code == 200 and len(r.json()["id"]) == 36
    fused = {o["name"]: o for o in r.json()["outputs"]}["scores"]["data"]
    np.testing.assert_allclose(
        fused, fuse(reference.score(QUERY, DOCS), [0.1, 0.9, 0.5], FUSION_WEIGHT), atol=1e-5
    )


def test_v2_binary_tensors(client, reference):
    """The binary extension tritonclient uses by default: JSON header + length-prefixed BYTES."""
    raw_docs = b"".join(struct.pack("<I", len(d.encode())) + d.encode() for d in DOCS)
    raw_q = struct.pack("<I", len(QUERY.encode())) + QUERY.encode()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "query",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw_q)},
                },
                {
                    "name": "documents",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw_docs)},
                },
            ]
        }
    ).encode()
    r = client.post(
        V2, content=header + raw_q + raw_docs, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        {o["name"]: o for o in r.json()["outputs"]}["scores"]["data"], reference.score(QUERY, DOCS), atol=1e-6
    )


def test_metrics_count_requests_and_errors(client):
    ok_before = metric(client, "hardneg_requests_total", protocol="v1", status="200")
    bad_before = metric(client, "hardneg_requests_total", protocol="v2", status="400")
    err_before = metric(client, "hardneg_errors_total", reason="empty_query")
    assert_still_serving(client)
    assert client.post(V2, json=v2_body(query="  ")).status_code == 400
    assert metric(client, "hardneg_requests_total", protocol="v1", status="200") == ok_before + 1
    assert metric(client, "hardneg_requests_total", protocol="v2", status="400") == bad_before + 1
    assert metric(client, "hardneg_errors_total", reason="empty_query") == err_before + 1
    assert (
        f'hardneg_doc_cache_hits_total{{model="{NAME}"}}' not in client.get("/metrics").text
    )  # bi-encoders only
    text = client.get("/metrics").text
    assert "request_predict_seconds" in text  # KServe's latency histograms stay on the same endpoint


# ----------------------------------------------------------------------------------------------------- bad input

BIG = "x" * 501
NINE = ["d"] * 9
BAD_BINARY = json.dumps(
    {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 99}}]}
).encode()
NON_UTF8_TENSOR = json.dumps(
    {
        "inputs": [
            {"name": "query", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
            {"name": "documents", "shape": [1], "datatype": "BYTES", "data": ["a"]},
        ]
    }
).encode()

BAD_REQUESTS = [
    # (id, path, request kwargs, status, message fragment)
    ("v1-invalid-json", V1, {"content": b"not json"}, 400, "not valid JSON"),
    (
        "v1-non-utf8",
        V1,
        {"content": b'{"instances": [{"query": "\xff\xfe", "documents": ["a"]}]}'},
        400,
        "UTF-8",
    ),
    (
        "v1-lone-surrogate",
        V1,
        {"content": b'{"instances": [{"query": "\\ud800", "documents": ["a"]}]}'},
        400,
        "UTF-8",
    ),
    ("v1-body-is-array", V1, {"json": [1, 2]}, 400, "must be a JSON object"),
    ("v1-body-is-number", V1, {"content": b"5"}, 400, "must be a JSON object"),
    ("v1-no-instances", V1, {"json": {}}, 400, 'missing field "instances"'),
    ("v1-instances-not-list", V1, {"json": {"instances": {"query": "q"}}}, 400, '"instances" must be a list'),
    ("v1-instances-empty", V1, {"json": {"instances": []}}, 400, '"instances" must not be empty'),
    ("v1-instance-not-object", V1, {"json": {"instances": ["q"]}}, 400, "instances[0] must be an object"),
    ("v1-missing-query", V1, {"json": {"instances": [{"documents": ["a"]}]}}, 400, 'missing field "query"'),
    ("v1-missing-documents", V1, {"json": {"instances": [{"query": "q"}]}}, 400, 'missing field "documents"'),
    (
        "v1-query-number",
        V1,
        {"json": {"instances": [{"query": 3, "documents": ["a"]}]}},
        400,
        "query must be a string",
    ),
    (
        "v1-empty-query",
        V1,
        {"json": {"instances": [{"query": "  ", "documents": ["a"]}]}},
        400,
        "query must not be empty",
    ),
    (
        "v1-documents-string",
        V1,
        {"json": {"instances": [{"query": "q", "documents": "a"}]}},
        400,
        "must be an array of strings",
    ),
    (
        "v1-documents-empty",
        V1,
        {"json": {"instances": [{"query": "q", "documents": []}]}},
        400,
        "documents must not be empty",
    ),
    (
        "v1-document-not-string",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a", {"t": 1}]}]}},
        400,
        "documents[1] must be a string",
    ),
    (
        "v1-too-many-documents",
        V1,
        {"json": {"instances": [{"query": "q", "documents": NINE}]}},
        413,
        "too many documents",
    ),
    (
        "v1-too-many-documents-total",
        V1,
        {
            "json": {
                "instances": [{"query": "q", "documents": ["a"] * 5}, {"query": "q", "documents": ["a"] * 5}]
            }
        },
        413,
        "more than 8 documents",
    ),
    (
        "v1-query-too-long",
        V1,
        {"json": {"instances": [{"query": BIG, "documents": ["a"]}]}},
        413,
        "501 characters; the limit is 500",
    ),
    (
        "v1-document-too-long",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a", BIG]}]}},
        413,
        "documents[1] has 501 characters",
    ),
    (
        "v1-scores-length",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a", "b"], "first_stage_scores": [1]}]}},
        400,
        "1 values for 2 documents",
    ),
    (
        "v1-scores-string",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a"], "first_stage_scores": ["1"]}]}},
        400,
        "must be a number",
    ),
    (
        "v1-scores-bool",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a"], "first_stage_scores": [True]}]}},
        400,
        "must be a number",
    ),
    (
        "v1-scores-not-list",
        V1,
        {"json": {"instances": [{"query": "q", "documents": ["a"], "first_stage_scores": 1}]}},
        400,
        "array of numbers",
    ),
    ("v1-body-too-large", V1, {"content": b"{" + b" " * 20_001 + b"}"}, 413, "larger than 20000 bytes"),
    (
        "v1-text-plain",
        V1,
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        400,
        "must be JSON",
    ),
    ("v1-unknown-model", "/v1/models/nope:predict", {"json": {"instances": []}}, 404, "nope does not exist"),
    (
        "v2-invalid-json",
        V2,
        {"content": b"not json", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    (
        "v2-non-utf8",
        V2,
        {"content": b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["\xff"]}]}'},
        400,
        "not valid JSON",
    ),
    ("v2-no-inputs", V2, {"json": {"foo": 1}}, 400, "inputs: Field required"),
    (
        "v2-no-shape",
        V2,
        {"json": {"inputs": [{"name": "query", "datatype": "BYTES", "data": ["q"]}]}},
        400,
        "inputs.0.shape: Field required",
    ),
    (
        "v2-missing-documents",
        V2,
        {"json": {"inputs": v2_body()["inputs"][:1]}},
        400,
        "missing input 'documents'",
    ),
    (
        "v2-unknown-input",
        V2,
        {
            "json": {
                "inputs": [
                    *v2_body()["inputs"],
                    {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                ]
            }
        },
        400,
        "unknown input 'x'",
    ),
    (
        "v2-duplicate-input",
        V2,
        {"json": {"inputs": [*v2_body()["inputs"], v2_body()["inputs"][0]]}},
        400,
        "given twice",
    ),
    (
        "v2-query-fp32",
        V2,
        {
            "json": {
                "inputs": [
                    {"name": "query", "shape": [1], "datatype": "FP32", "data": [1.0]},
                    v2_body()["inputs"][1],
                ]
            }
        },
        400,
        "must have datatype BYTES",
    ),
    (
        "v2-query-shape",
        V2,
        {
            "json": {
                "inputs": [
                    {"name": "query", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                    v2_body()["inputs"][1],
                ]
            }
        },
        400,
        "shape [1]",
    ),
    (
        "v2-documents-2d",
        V2,
        {
            "json": {
                "inputs": [
                    v2_body()["inputs"][0],
                    {"name": "documents", "shape": [3, 1], "datatype": "BYTES", "data": DOCS},
                ]
            }
        },
        400,
        "one dimension",
    ),
    (
        "v2-shape-data-mismatch",
        V2,
        {
            "json": {
                "inputs": [
                    v2_body()["inputs"][0],
                    {"name": "documents", "shape": [4], "datatype": "BYTES", "data": DOCS},
                ]
            }
        },
        400,
        "does not match shape [4]",
    ),
    (
        "v2-documents-numbers",
        V2,
        {
            "json": {
                "inputs": [
                    v2_body()["inputs"][0],
                    {"name": "documents", "shape": [2], "datatype": "BYTES", "data": [5, 6]},
                ]
            }
        },
        400,
        "documents'[0] must be a string",
    ),
    ("v2-documents-empty", V2, {"json": v2_body(docs=[])}, 400, "must not be empty"),
    ("v2-too-many-documents", V2, {"json": v2_body(docs=NINE)}, 413, "too many documents"),
    ("v2-document-too-long", V2, {"json": v2_body(docs=["a", BIG])}, 413, "501 characters"),
    ("v2-empty-query", V2, {"json": v2_body(query="")}, 400, "must not be empty"),
    (
        "v2-scores-bytes",
        V2,
        {
            "json": {
                "inputs": [
                    *v2_body()["inputs"],
                    {
                        "name": "first_stage_scores",
                        "shape": [3],
                        "datatype": "BYTES",
                        "data": ["a", "b", "c"],
                    },
                ]
            }
        },
        400,
        "must have datatype FP32",
    ),
    ("v2-scores-shape", V2, {"json": v2_body(scores=[1.0, 2.0])}, 400, "must have shape [3]"),
    (
        "v2-unknown-output",
        V2,
        {"json": v2_body(outputs=[{"name": "logits"}])},
        400,
        "unknown output 'logits'",
    ),
    (
        "v2-bad-binary",
        V2,
        {"content": BAD_BINARY, "headers": {"Inference-Header-Content-Length": str(len(BAD_BINARY))}},
        400,
        "malformed",
    ),
    (
        "v2-bad-binary-header",
        V2,
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "77"}},
        400,
        "malformed",
    ),
    (
        "v2-non-utf8-tensor",
        V2,
        {
            "content": NON_UTF8_TENSOR + struct.pack("<I", 2) + b"\xff\xfe",
            "headers": {"Inference-Header-Content-Length": str(len(NON_UTF8_TENSOR))},
        },
        400,
        "not valid UTF-8",
    ),
    ("v2-unknown-model", "/v2/models/nope/infer", {"json": v2_body()}, 404, "nope does not exist"),
    ("v2-metadata-unknown-model", "/v2/models/nope", None, 404, "nope does not exist"),
    ("v2-ready-unknown-model", "/v2/models/nope/ready", None, 404, "nope does not exist"),
]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(
    client, path, kwargs, status, fragment
):
    r = client.get(path) if kwargs is None else client.post(path, **kwargs)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert fragment in message, message
    assert not LEAKS.search(message), message
    assert_still_serving(client)


def test_unexpected_errors_are_a_generic_500_without_internals(client, model, monkeypatch, caplog):
    def boom(*a, **kw):
        raise RuntimeError("secret internal detail in /srv/app.py")

    monkeypatch.setattr(model.reranker, "rerank_many", boom)
    before = metric(client, "hardneg_errors_total", reason="internal")
    r = client.post(V1, json={"instances": [{"query": QUERY, "documents": DOCS}]})
    assert r.status_code == 500
    assert r.json() == {"error": "internal server error (logged server-side)"}
    assert "secret" in caplog.text  # ... but logged for the operator
    assert metric(client, "hardneg_errors_total", reason="internal") == before + 1
    monkeypatch.undo()
    assert_still_serving(client)


def test_not_ready_model_answers_503(client, model):
    model.ready = False
    try:
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 503
        r = client.post(V1, json={"instances": [{"query": QUERY, "documents": DOCS}]})
        assert r.status_code == 503 and "not ready" in r.json()["error"]
    finally:
        model.ready = True
    assert_still_serving(client)


def test_load_verifies_the_export(export_dir, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    with open(d / "model.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    m = HardnegReranker(NAME, str(d))
    with pytest.raises(ExportIntegrityError, match="checksum mismatch for model.int8.onnx"):
        m.load()
    assert m.ready is False


# ---------------------------------------------------------------------------------------------- property-based

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=40) | json_values
v1_bodies = st.fixed_dictionaries(
    {
        "instances": st.lists(
            st.fixed_dictionaries(
                {"query": texts, "documents": st.lists(texts, max_size=10) | json_values},
                optional={
                    "first_stage_scores": st.lists(st.floats() | json_values, max_size=10) | json_values
                },
            ),
            max_size=3,
        )
        | json_values
    }
)
v2_inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["query", "documents", "first_stage_scores", "other"]),
        "shape": st.lists(st.integers(-2, 10), max_size=3),
        "datatype": st.sampled_from(["BYTES", "FP32", "FP64", "INT64", "FP16", "BOOL", "NOPE"]),
        "data": st.lists(texts, max_size=10),
    },
    optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2)
    },
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(v2_inputs, max_size=4)},
    optional={
        "id": json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=10)}), max_size=2),
    },
)
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _no_5xx(r):
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert not LEAKS.search(r.json()["error"]), r.text


@PROPERTY
@given(body=json_values | v1_bodies)
def test_any_json_to_v1_never_gives_a_5xx(client, body):
    _no_5xx(client.post(V1, content=json.dumps(body).encode()))


@PROPERTY
@given(body=json_values | v2_bodies)
def test_any_json_to_v2_never_gives_a_5xx(client, body):
    _no_5xx(client.post(V2, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@PROPERTY
@given(
    raw=st.binary(max_size=200),
    header=st.none()
    | st.integers(-5, 300).map(str)
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=5),
)
def test_any_bytes_never_give_a_5xx(client, raw, header):
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    _no_5xx(client.post(V2, content=raw, headers=headers))
    _no_5xx(client.post(V1, content=raw))


# ------------------------------------------------------------------------------------------------- torch-free / CLI


def test_serving_import_chain_has_no_torch():
    code = (
        "import sys; sys.argv = ['x', '--http_port', '1']\n"  # kserve parses argv on import: must not matter
        "import serving.server, serving.predictor, serving.__main__ as m\n"
        "assert m.build_parser().parse_args(['--model_dir', 'd', '--http_port', '9']).http_port == 9\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_cli_serve_refuses_a_missing_export(tmp_path):
    from typer.testing import CliRunner

    from hardneg.cli import app

    res = CliRunner().invoke(app, ["serve", "--model-dir", str(tmp_path / "nope"), "--http-port", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "export folder not found" in text and "Traceback" not in text


# ------------------------------------------------------------------------------------------------ real process


def test_real_server_process_with_tritonclient_and_plain_http(export_dir, reference, tmp_path):
    import psutil
    import tritonclient.http as tc

    port = free_port()
    exe = Path(sys.executable).with_name("hardneg")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [str(exe), "serve", "--model-dir", str(export_dir), "--http-port", str(port), "--model-name", NAME],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, tmp_path / "server.log")
        server = psutil.Process(proc.pid)
        # psutil < 6 names it connections()
        conns = (getattr(server, "net_connections", None) or server.connections)("tcp")
        bound = {c.laddr.ip for c in conns if c.laddr.port == port}
        assert bound == {"127.0.0.1"}  # --host default: loopback only

        client = tc.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_ready() and client.is_model_ready(NAME)
        assert client.get_model_metadata(NAME)["versions"] == ["t1"]
        q = tc.InferInput("query", [1], "BYTES")
        q.set_data_from_numpy(np.array([QUERY.encode()], dtype=object))
        d = tc.InferInput("documents", [len(DOCS)], "BYTES")
        d.set_data_from_numpy(np.array([x.encode() for x in DOCS], dtype=object))
        res = client.infer(
            NAME, [q, d], outputs=[tc.InferRequestedOutput("scores"), tc.InferRequestedOutput("ranking")]
        )
        scores, order = reference.rerank(QUERY, DOCS)
        np.testing.assert_allclose(res.as_numpy("scores"), scores, atol=1e-6)
        assert res.as_numpy("ranking").tolist() == list(order)
        with pytest.raises(tc.InferenceServerException, match="must not be empty"):
            q.set_data_from_numpy(np.array([b" "], dtype=object))
            client.infer(NAME, [q, d])
        client.close()

        r = httpx.post(f"{base}{V1}", json={"instances": [{"query": QUERY, "documents": DOCS}]}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["ranking"] == list(order)
        r = httpx.post(f"{base}{V1}", content=b"{", timeout=30)
        assert r.status_code == 400
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'hardneg_requests_total{protocol="v1",status="200"} 1.0' in metrics
        assert 'hardneg_requests_total{protocol="v2",status="400"} 1.0' in metrics
    finally:
        stop(proc)
        log.close()
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()
